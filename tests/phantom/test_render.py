"""Image model: Rician background statistics, SNR definition, hypoxia contrast-to-noise, bias range."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sarcart.io.geometry import Geometry
from sarcart.phantom import tissues as T
from sarcart.phantom.config import PhantomConfig
from sarcart.phantom.fields import rng_for
from sarcart.phantom.render import bias_field, render, signal_lut

GEOM = Geometry((96, 96, 40), (2.0, 2.0, 3.0), (-96.0, -96.0, -60.0))


def _phantom() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Air border, a muscle block, a tumour block whose left half is hypoxic."""
    lab = np.zeros(GEOM.shape, dtype=np.uint8)
    lab[16:80, 16:80, 4:36] = T.MUSCLE
    lab[30:66, 30:66, 10:30] = T.TUMOUR
    hyp = np.zeros(GEOM.shape, dtype=bool)
    hyp[30:48, 30:66, 10:30] = True
    return lab, hyp, np.ones(GEOM.shape, dtype=np.float32)


def test_background_is_rician_with_the_stated_sigma() -> None:
    lab, hyp, tex = _phantom()
    cfg = PhantomConfig(snr=15.0, bias_amplitude=0.0, psf_sigma_vox=0.0, hypoxia_cnr=0.0)
    out = render(lab, hyp, tex, geometry=GEOM, config=cfg, rng=rng_for(1, "t"))
    air = np.ones(GEOM.shape, dtype=bool)
    air[12:84, 12:84, 1:39] = False  # well away from the body (no PSF here anyway)
    bg = out.counts[air].astype(float)
    sigma = out.sigma
    # magnitude of complex Gaussian noise: Rayleigh, mean sigma sqrt(pi/2), sd sigma sqrt(2 - pi/2)
    assert bg.mean() == pytest.approx(sigma * math.sqrt(math.pi / 2.0), rel=0.01)
    assert bg.std() == pytest.approx(sigma * math.sqrt(2.0 - math.pi / 2.0), rel=0.02)


@pytest.mark.parametrize("snr", [8.0, 20.0, 40.0])
def test_measured_snr_equals_requested(snr: float) -> None:
    lab, hyp, tex = _phantom()
    cfg = PhantomConfig(snr=snr, bias_amplitude=0.2, hypoxia_cnr=0.0)
    out = render(lab, hyp, tex, geometry=GEOM, config=cfg, rng=rng_for(2, "t"))
    # sigma measured from the air background (Rayleigh mean), signal from the muscle voxels
    air = np.ones(GEOM.shape, dtype=bool)
    air[10:86, 10:86, 1:39] = False
    sigma_bg = out.counts[air].mean() / math.sqrt(math.pi / 2.0)
    muscle = out.counts[lab == T.MUSCLE].mean()
    assert muscle / sigma_bg == pytest.approx(snr, rel=0.03)
    assert out.truth["snr_measured"] == pytest.approx(snr, rel=0.01)


@pytest.mark.parametrize("cnr", [0.0, 0.5, 2.0])
def test_hypoxia_contrast_to_noise_is_as_requested(cnr: float) -> None:
    lab, hyp, tex = _phantom()
    cfg = PhantomConfig(snr=20.0, bias_amplitude=0.2, hypoxia_cnr=cnr)
    out = render(lab, hyp, tex, geometry=GEOM, config=cfg, rng=rng_for(3, "t"))
    img = out.counts.astype(float)
    normoxic = (lab == T.TUMOUR) & ~hyp
    measured = (img[normoxic].mean() - img[hyp].mean()) / out.sigma
    # noise on a difference of two means of ~13000 voxels: sd ~ 0.013 sigma; bias/PSF are calibrated
    if cnr > 0:
        assert measured == pytest.approx(cnr, abs=0.06)
        assert out.truth["hypoxia_cnr_noise_free"] == pytest.approx(cnr, abs=1e-6)
        assert out.truth["hypoxia_t2_ms"] < cfg.tumour_t2_ms
    else:
        assert out.truth["hypoxia_t2_ms"] == cfg.tumour_t2_ms  # no signature at all
        # the only difference left is the smooth bias field over the two halves
        assert abs(measured) < 0.2 * 20.0 * signal_lut(cfg)[T.TUMOUR] / signal_lut(cfg)[T.MUSCLE]


def test_bias_field_spans_the_requested_amplitude() -> None:
    b = bias_field(GEOM, 0.2, rng=rng_for(4, "b"))
    assert b.min() >= 0.8 - 1e-6 and b.max() <= 1.2 + 1e-6
    assert max(1.0 - b.min(), b.max() - 1.0) == pytest.approx(0.2, abs=0.01)


def test_banding_darkens_where_offresonance_reaches_the_stop_band() -> None:
    lab, hyp, tex = _phantom()
    lab[16:80, 16:80, 4:36] = T.FAT
    plain = PhantomConfig(bias_amplitude=0.0, snr=1000.0)
    banded = PhantomConfig(bias_amplitude=0.0, snr=1000.0, banding=True, b0_max_hz=330.0)
    on = render(lab, hyp, tex, geometry=GEOM, config=plain, rng=rng_for(5, "t"))
    band = render(lab, hyp, tex, geometry=GEOM, config=banded, rng=rng_for(5, "t"))
    fat = lab == T.FAT
    ratio = band.counts[fat].astype(float) / np.maximum(on.counts[fat].astype(float), 1.0)
    assert ratio.min() < 0.3 and np.median(ratio) > 0.5
