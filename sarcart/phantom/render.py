"""Render a TRUFI magnitude image from tissue labels: bSSFP contrast, texture, PSF, bias, banding, noise.

Image model, per fraction (all in units of M0 until the final scaling):

1. Tissue signal ``S(label)`` from the Freeman-Hill form (on resonance) or, with ``banding``, the
   Xiang-Hoff profile at ``theta = pi + 2 pi df(x) TR`` for a smooth off-resonance map ``df`` with
   peak ``b0_max_hz`` (doi 10.1002/mrm.24704); see :mod:`sarcart.phantom.signal`.
2. Times the PD texture (smooth within-tissue variation and tumour heterogeneity).
3. Partial volume: Gaussian point-spread function, sd ``psf_sigma_vox`` voxels on every axis.
4. Times a smooth coil bias field ``B(x) = 1 + a n(x) / max|n|`` (``a = bias_amplitude``, so B lies
   in [1 - a, 1 + a] over the field of view).
5. Rician noise: ``|I + n1 + i n2|`` with ``n1, n2 ~ N(0, sigma^2)``; ``sigma`` = mean noise-free
   muscle signal / ``snr`` (the SNR definition used throughout).
6. Integer counts: the nominal muscle signal maps to ``counts_per_muscle``; clipped to 0..4095.

Hypoxia signature: hypoxic viable tumour has a shortened T2 (no established bSSFP signature exists;
this one is an assumption). Its signal ``S_h`` is solved so that, in the noise-free image after
PSF and bias, mean(normoxic viable) - mean(hypoxic) = ``hypoxia_cnr * sigma``; the matching T2 is
reported. With ``hypoxia_cnr = 0`` hypoxic tumour is identical to normoxic tumour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from sarcart.io.geometry import Geometry
from sarcart.phantom import tissues as T
from sarcart.phantom.config import PhantomConfig
from sarcart.phantom.fields import SmoothField
from sarcart.phantom.signal import bssfp_profile, freeman_hill, t2_for_signal, theta_from_offresonance

MAX_COUNT = 4095


def tissue_parameters(config: PhantomConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T1, T2 (ms) and PD indexed by label value (0 = air), with the configured tumour T1/T2."""
    t1 = np.full(T.N_LABELS, 1000.0)
    t2 = np.full(T.N_LABELS, 1.0)
    pd = np.zeros(T.N_LABELS)
    for t in T.TISSUES:
        t1[t.value], t2[t.value], pd[t.value] = t.t1_ms, t.t2_ms, t.pd
    t1[T.TUMOUR], t2[T.TUMOUR] = config.tumour_t1_ms, config.tumour_t2_ms
    return t1, t2, pd


def signal_lut(config: PhantomConfig) -> np.ndarray:
    """On-resonance signal (units of M0) per label value, float64 of length ``N_LABELS``."""
    t1, t2, pd = tissue_parameters(config)
    return np.asarray(freeman_hill(t1, t2, pd, flip_deg=config.flip_deg, tr_ms=config.tr_ms))


@dataclass
class Rendered:
    """A rendered fraction: integer image and what it was made with."""

    counts: np.ndarray                    # uint16 (nx, ny, nz)
    sigma: float                          # noise sd in counts
    truth: dict[str, Any] = field(default_factory=dict)


def _psf(a: np.ndarray, sigma_vox: float) -> np.ndarray:
    if sigma_vox <= 0.0:
        return a
    return ndimage.gaussian_filter(a, sigma_vox, truncate=3.0, mode="nearest")


def bias_field(geometry: Geometry, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative field in [1 - amplitude, 1 + amplitude] (float32, image shape)."""
    if amplitude <= 0.0:
        return np.ones(geometry.shape, dtype=np.float32)
    lo = geometry.origin_mm
    hi = tuple(o + (n - 1) * s for o, n, s in zip(geometry.origin_mm, geometry.shape, geometry.spacing_mm))
    axes = [np.asarray(lo[a] + geometry.spacing_mm[a] * np.arange(geometry.shape[a])) for a in range(3)]
    n = SmoothField.random(rng, lo, hi, corr_mm=120.0).on_axes(*axes)  # type: ignore[arg-type]
    n /= max(float(np.abs(n).max()), 1e-6)
    return (1.0 + np.float32(amplitude) * n).astype(np.float32)


def _banded_signal(labels: np.ndarray, config: PhantomConfig, geometry: Geometry, *, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel signal with off-resonance banding and the banding factor of tumour tissue."""
    t1, t2, pd = tissue_parameters(config)
    lo = geometry.origin_mm
    hi = tuple(o + (n - 1) * s for o, n, s in zip(geometry.origin_mm, geometry.shape, geometry.spacing_mm))
    axes = [np.asarray(lo[a] + geometry.spacing_mm[a] * np.arange(geometry.shape[a])) for a in range(3)]
    df = SmoothField.random(rng, lo, hi, corr_mm=80.0).on_axes(*axes)  # type: ignore[arg-type]
    df *= np.float32(config.b0_max_hz / max(float(np.abs(df).max()), 1e-6))
    theta = theta_from_offresonance(df, config.tr_ms)
    fa, tr = config.flip_deg, config.tr_ms
    sig = bssfp_profile(t1[labels], t2[labels], theta, pd=pd[labels], flip_deg=fa, tr_ms=tr).astype(np.float32)
    on_res = float(freeman_hill(config.tumour_t1_ms, config.tumour_t2_ms, 1.0, flip_deg=fa, tr_ms=tr))
    tum = bssfp_profile(config.tumour_t1_ms, config.tumour_t2_ms, theta, flip_deg=fa, tr_ms=tr) / on_res
    return sig, np.asarray(tum, dtype=np.float32)


def render(labels: np.ndarray, hypoxia: np.ndarray, texture: np.ndarray, *, geometry: Geometry,
           config: PhantomConfig, rng: np.random.Generator) -> Rendered:
    """Render one fraction (see the module docstring for the model).

    Args:
        labels: (nx, ny, nz) uint8 label values. hypoxia: bool, inside viable tumour.
        texture: float32 PD multiplier. geometry: the image grid. rng: this fraction's stream.
    """
    lut = signal_lut(config)
    hyp = hypoxia & (labels == T.TUMOUR)
    if config.banding:
        sig, band = _banded_signal(labels, config, geometry, rng=rng)
    else:
        sig, band = lut.astype(np.float32)[labels], np.ones(labels.shape, dtype=np.float32)
    sig *= texture
    bias = bias_field(geometry, config.bias_amplitude, rng)
    box = _bbox(labels == T.TUMOUR, margin=4)
    unit = None
    if hyp.any():
        sig[hyp] = 0.0
        unit = np.where(hyp[box], texture[box] * band[box], np.float32(0.0)).astype(np.float32)
        unit = _psf(unit, config.psf_sigma_vox) * bias[box]
    clean = _psf(sig, config.psf_sigma_vox)
    clean *= bias
    del sig
    s_t = float(lut[T.TUMOUR])
    muscle = labels == T.MUSCLE
    if unit is not None:
        clean[box] += np.float32(s_t) * unit
    sigma = float(clean[muscle].mean()) / config.snr if muscle.any() else float(lut[T.MUSCLE]) / config.snr
    s_h, t2_h, cnr = s_t, None, None
    if unit is not None:
        clean[box] -= np.float32(s_t) * unit
        s_h, t2_h, cnr = _hypoxic_signal(clean[box], unit, labels[box], hyp=hyp[box], sigma=sigma, config=config,
                                         s_t=s_t)
        clean[box] += np.float32(s_h) * unit
    noisy = add_rician_noise(clean, sigma, rng)
    del clean
    scale = config.counts_per_muscle / float(lut[T.MUSCLE])
    snr_measured = float(noisy[muscle].mean()) / sigma if muscle.any() else None
    noisy *= np.float32(scale)
    clipped = int(np.count_nonzero(noisy > MAX_COUNT))
    np.clip(noisy, 0, MAX_COUNT, out=noisy)
    counts = np.rint(noisy).astype(np.uint16)
    truth = {
        "snr_requested": config.snr,
        "snr_measured": snr_measured,
        "sigma_counts": sigma * scale,
        "counts_per_m0": scale,
        "hypoxia_cnr_requested": config.hypoxia_cnr,
        "hypoxia_cnr_noise_free": cnr,
        "hypoxia_t2_ms": t2_h,
        "tumour_t2_ms": config.tumour_t2_ms,
        "bias_amplitude": config.bias_amplitude,
        "banding": config.banding,
        "clipped_voxels": clipped,
    }
    return Rendered(counts=counts, sigma=sigma * scale, truth=truth)


def add_rician_noise(clean: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``|clean + n1 + i n2|`` with independent ``n1, n2 ~ N(0, sigma^2)`` (float32, new array)."""
    noisy = rng.standard_normal(clean.shape, dtype=np.float32)
    noisy *= np.float32(sigma)
    noisy += clean
    np.square(noisy, out=noisy)
    imag = rng.standard_normal(noisy.shape, dtype=np.float32)
    imag *= np.float32(sigma)
    np.square(imag, out=imag)
    noisy += imag
    np.sqrt(noisy, out=noisy)
    return noisy


def _bbox(mask: np.ndarray, margin: int) -> tuple[slice, slice, slice]:
    """Bounding box of ``mask`` grown by ``margin`` voxels (the whole array when empty)."""
    if not mask.any():
        return (slice(None),) * 3  # type: ignore[return-value]
    out = []
    for a in range(3):
        idx = np.flatnonzero(mask.any(axis=tuple(b for b in range(3) if b != a)))
        out.append(slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + margin + 1, mask.shape[a])))
    return tuple(out)  # type: ignore[return-value]


def _hypoxic_signal(i0: np.ndarray, ih: np.ndarray, labels: np.ndarray, *, hyp: np.ndarray, sigma: float,
                    config: PhantomConfig, s_t: float) -> tuple[float, float | None, float | None]:
    """Signal and T2 of hypoxic tumour giving the requested noise-free CNR; achieved CNR.

    The noise-free image is ``i0 + S_h * ih`` (``ih``: the blurred, biased hypoxic indicator), so the
    mean difference is linear in ``S_h`` and solved exactly.
    """
    normoxic = (labels == T.TUMOUR) & ~hyp
    if not normoxic.any():
        return s_t, None, None
    a, b = float(i0[hyp].mean()), float(ih[hyp].mean())
    c, d = float(i0[normoxic].mean()), float(ih[normoxic].mean())
    if config.hypoxia_cnr > 0.0 and b - d > 1e-9:
        s_h = max((c - a - config.hypoxia_cnr * sigma) / (b - d), 0.0)
        t2_h = t2_for_signal(s_h, config.tumour_t1_ms, T.BY_VALUE[T.TUMOUR].pd, flip_deg=config.flip_deg,
                             tr_ms=config.tr_ms)
    else:
        s_h, t2_h = s_t, config.tumour_t2_ms
    cnr = ((c + s_h * d) - (a + s_h * b)) / sigma
    return s_h, t2_h, cnr
