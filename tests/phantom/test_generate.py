"""In-memory generation: determinism, tumour shrinkage, the real-T1 option."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from helpers import shared_path

from sarcart.cli import main
from sarcart.io.nifti import read_mask, read_nifti
from sarcart.phantom import tissues as T
from sarcart.phantom.anatomy import unpack
from sarcart.phantom.config import PhantomConfig, make_spec
from sarcart.phantom.generate import build_anatomy, generate_patient, make_fraction
from sarcart.phantom.motion import displacement_field, pull
from sarcart.phantom.patients import sample_patient

COARSE = PhantomConfig(spacing_mm=(8.0, 8.0, 8.0), workers=1)


def test_same_seed_gives_identical_arrays_different_seed_does_not() -> None:
    a = generate_patient(COARSE, site="retroperitoneum", seed=5, fractions=1)
    b = generate_patient(COARSE, site="retroperitoneum", seed=5, fractions=1)
    c = generate_patient(COARSE, site="retroperitoneum", seed=6, fractions=1)
    for fa, fb in zip(a, b):
        np.testing.assert_array_equal(fa.image.array, fb.image.array)
        np.testing.assert_array_equal(fa.labels.array, fb.labels.array)
        np.testing.assert_array_equal(fa.hypoxia.array, fb.hypoxia.array)
    np.testing.assert_array_equal(a[1].deformation.array, b[1].deformation.array)  # type: ignore[union-attr]
    assert not np.array_equal(a[0].labels.array, c[0].labels.array)


def _uids(folder: Path) -> list[tuple[str, ...]]:
    out = []
    for f in sorted(folder.rglob("*.dcm")):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        out.append((f.relative_to(folder).as_posix(), ds.SOPInstanceUID, ds.StudyInstanceUID,
                    ds.SeriesInstanceUID, ds.FrameOfReferenceUID))
    return out


def test_same_command_writes_identical_cohorts(tmp_path: Path) -> None:
    args = ["--patients", "2", "--fractions", "1", "--site", "mixed", "--seed", "3", "--spacing", "8",
            "--workers", "1", "--no-progress"]
    for name in ("a", "b"):
        assert main(["synth", "--out", str(tmp_path / name), *args]) == 0
    assert (tmp_path / "a" / "cohort.csv").read_text() == (tmp_path / "b" / "cohort.csv").read_text()
    assert _uids(tmp_path / "a") == _uids(tmp_path / "b") and len(_uids(tmp_path / "a")) > 0
    for f in sorted((tmp_path / "a").rglob("*.nii.gz")):
        other = tmp_path / "b" / f.relative_to(tmp_path / "a")
        np.testing.assert_array_equal(read_nifti(f).array, read_nifti(other).array)


@pytest.mark.parametrize("site", ["upper_extremity", "retroperitoneum"])
def test_tumour_shrinks_by_the_requested_volume_factor(site: str) -> None:
    """GTV voxel count of fraction f over fx00 against (1 - shrink)^f, 2 mm voxels.

    Nearest-neighbour sampling of a slightly scaled object aliases (a flat face gains or loses a
    voxel layer depending on the sub-voxel phase), so single fractions scatter by a few per cent;
    the mean over six fractions is checked tightly.
    """
    fov = (220.0, 220.0, 300.0) if site == "upper_extremity" else (400.0, 300.0, 240.0)
    spec = make_spec(site=site, seed=3, spacing_mm=(2.0, 2.0, 2.0), fov_mm=fov, shrink_per_fraction=0.1,
                     tumour_cc=(150.0, 150.0))
    cfg = spec.phantom()
    patient = sample_patient(spec, 0)
    anatomy = build_anatomy(cfg, patient)
    state = anatomy.packed()
    gtv0 = np.isin(anatomy.crop(anatomy.labels), T.STRUCTURES["GTV"]).sum()
    ratios = []
    for fx in range(1, 7):
        field, mp = displacement_field(anatomy, cfg, seed=patient.seed, index=fx)
        lab = unpack(pull(anatomy, state, field)).labels
        assert mp.volume_factor == pytest.approx(0.9 ** fx)
        ratios.append(np.isin(lab, T.STRUCTURES["GTV"]).sum() / gtv0 / mp.volume_factor)
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.025)
    assert np.all(np.abs(np.array(ratios) - 1.0) < 0.08)


@pytest.fixture(scope="module")
def real_case() -> Path:
    return shared_path("sts_mr_t1", "STS_010")


def test_real_t1_anatomy_keeps_the_real_gtv_and_gives_trufi_contrast(real_case: Path) -> None:
    spec = make_spec(site="lower_extremity", seed=2, from_real=real_case.parent, workers=1)
    patient = sample_patient(spec, 0, [real_case.name])
    anatomy = build_anatomy(spec.phantom(), patient, real_root=real_case.parent)
    gtv = read_mask(real_case / "gtv.nii.gz")
    t1 = read_nifti(real_case / "image.nii.gz").array
    assert anatomy.image_geometry.is_close(gtv.geometry)
    labels = anatomy.crop(anatomy.labels)
    np.testing.assert_array_equal(np.isin(labels, T.STRUCTURES["GTV"]), gtv.array)
    hyp = anatomy.crop(anatomy.hypoxia)
    viable = labels == T.TUMOUR
    assert np.all(viable[hyp]) and hyp.sum() / viable.sum() == pytest.approx(patient.hypoxic_fraction, abs=0.01)
    assert np.isin(labels, T.STRUCTURES["BONE"]).sum() > 500  # the femur of STS_010 is found
    fx0 = make_fraction(anatomy, spec.phantom(), patient, index=0)
    img = fx0.image.array.astype(float)
    # fat is bright on T1 and on TRUFI; muscle intermediate on T1 and dark on TRUFI
    t1_fat = t1 > 0.8 * np.percentile(t1[gtv.array == 0], 95)
    t1_muscle = (t1 > 200) & (t1 < 450) & (gtv.array == 0)
    assert img[t1_fat].mean() > 2.0 * img[t1_muscle].mean()
    fx1 = make_fraction(anatomy, spec.phantom(), patient, index=1)
    assert fx1.deformation is not None and fx1.image.geometry.is_close(gtv.geometry)
    assert np.isin(fx1.labels.array, T.STRUCTURES["GTV"]).sum() < gtv.array.sum()  # shrinkage
