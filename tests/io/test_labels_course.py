"""Label maps with sidecars and the course data model."""

from __future__ import annotations

import numpy as np
import pytest

from sarcart.errors import CourseLayoutError, InvalidImageError
from sarcart.io.course import CourseConfig, Prescription, load_course, write_course
from sarcart.io.geometry import Geometry, Volume
from sarcart.io.labels import LabelSpec, labels_to_masks, read_labels, write_labels

SPEC = LabelSpec(
    values={1: "MUSCLE", 5: "BOWEL_WALL", 6: "BOWEL_CONTENT", 7: "GAS", 13: "TUMOUR", 14: "NECROSIS"},
    structures={"BODY": (1, 5, 6, 7, 13, 14), "BOWEL": (5, 6, 7), "GAS": (7,), "GTV": (13, 14)},
)


def test_label_round_trip_and_structure_unions(tmp_path) -> None:
    g = Geometry((5, 4, 3), (2.0, 2.0, 3.0))
    rng = np.random.default_rng(0)
    arr = rng.choice([0, 1, 5, 6, 7, 13, 14], size=g.shape).astype(np.uint8)
    path = write_labels(Volume(arr, g), SPEC, tmp_path / "labels.nii.gz")
    assert (tmp_path / "labels.json").is_file()
    vol, spec = read_labels(path)
    assert spec == SPEC
    masks = labels_to_masks(vol, spec)
    # unions computed independently with plain comparisons
    assert (masks["BOWEL"].array == ((arr == 5) | (arr == 6) | (arr == 7))).all()
    assert (masks["GTV"].array == ((arr == 13) | (arr == 14))).all()
    assert (masks["BODY"].array == (arr > 0)).all()


def test_label_errors(tmp_path) -> None:
    g = Geometry((2, 2, 2), (1.0, 1.0, 1.0))
    with pytest.raises(InvalidImageError, match=r"label values \[9\]"):
        write_labels(Volume(np.full(g.shape, 9, np.uint8), g), SPEC, tmp_path / "l.nii.gz")
    with pytest.raises(InvalidImageError, match="not named"):
        LabelSpec(values={1: "A"}, structures={"X": (1, 2)})
    write_labels(Volume(np.ones(g.shape, np.uint8), g), SPEC, tmp_path / "l.nii.gz")
    (tmp_path / "l.json").unlink()
    with pytest.raises(InvalidImageError, match="sidecar"):
        read_labels(tmp_path / "l.nii.gz")


def _config(**kw) -> CourseConfig:
    base = dict(patient="SYN-RP-001", site="retroperitoneum",
                prescription=Prescription(dose_gy=48.0, fractions=6), synthetic=True)
    return CourseConfig(**{**base, **kw})


def test_course_round_trip_and_fraction_paths(tmp_path) -> None:
    course = write_course(tmp_path / "p", _config())
    for k in (0, 1, 2):
        (course.root / f"fx{k:02d}").mkdir()
    (course.root / "notes").mkdir()
    loaded = load_course(tmp_path / "p")
    assert loaded.config == course.config
    assert loaded.config.prescription.dose_per_fraction_gy == pytest.approx(8.0)
    assert [f.name for f in loaded.fractions] == ["fx00", "fx01", "fx02"]
    fx1 = loaded.fraction(1)
    assert fx1.mr_dir == tmp_path / "p" / "fx01" / "mr"
    assert fx1.approved_rtstruct() is None
    (loaded.reference.root / "rtstruct.dcm").write_bytes(b"")
    assert loaded.reference.approved_rtstruct() == loaded.reference.rtstruct
    with pytest.raises(CourseLayoutError, match="fraction must be 0..6"):
        loaded.fraction(7)
    assert "fx00 has neither mr/ nor image.nii.gz" in loaded.problems()
    with pytest.raises(CourseLayoutError, match="neither mr/"):
        load_course(tmp_path / "p", strict=True)


@pytest.mark.parametrize(
    "text, message",
    [
        ("patient: a\nsite: retroperitoneum\nprescription: {dose_gy: 48, fractions: 6}\nsurprise: 1\n", "surprise"),
        ("patient: a\nsite: knee\nprescription: {dose_gy: 48, fractions: 6}\n", "site"),
        ("patient: a\nsite: retroperitoneum\nprescription: {dose_gy: -1, fractions: 6}\n", "dose_gy"),
        ("patient: a\nsite: [\n", "not valid YAML"),
    ],
)
def test_bad_course_yaml(tmp_path, text: str, message: str) -> None:
    (tmp_path / "course.yaml").write_text(text)
    with pytest.raises(CourseLayoutError, match=message):
        load_course(tmp_path)


def test_missing_course_yaml(tmp_path) -> None:
    with pytest.raises(CourseLayoutError, match="course.yaml"):
        load_course(tmp_path)
