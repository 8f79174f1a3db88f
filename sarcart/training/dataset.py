"""Training sets from clinical folders: ``sarcart dataset build``.

Input: a root folder with one sub-folder per patient, each holding either

* DICOM: an MR (or CT) image series and an RTSTRUCT drawn on it (any sub-folder layout);
* NIfTI: ``image.nii.gz`` plus masks - ``<name>.nii.gz`` files whose stem maps to a canonical
  name (``gtv.nii.gz`` -> GTV), ``masks/<NAME>.nii.gz``, or ``labels.nii.gz`` with its
  ``labels.json`` sidecar (as in ``../shared/data/sts_mr_t1`` and the phantom's cohorts);
* a course (``fx00/``, ``fx01/``, ... each as in the NIfTI case): every fraction is a case of the
  same patient.

Output (MONAI/Decathlon style): ``imagesTr/<case>.nii.gz``, ``labelsTr/<case>.nii.gz`` (+ .json
sidecar; exclusive labels, the first structure listed wins where masks overlap) and
``datalist.json`` with a ``fold`` per case, assigned by patient so that no patient is split across
folds, and ``skipped`` cases with the reason.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from sarcart.errors import ConfigError, SarcartError
from sarcart.io.geometry import Volume
from sarcart.io.labels import LabelSpec, labels_to_masks, read_labels, write_labels
from sarcart.io.nifti import read_mask, read_nifti, write_nifti
from sarcart.io.structures import CANONICAL, canonical_name
from sarcart.tracking import hash_id

log = logging.getLogger(__name__)

_FX = re.compile(r"fx\d{2}")
_IMAGE_NAMES = ("image.nii.gz", "image.nii")


class SkipCase(Exception):
    """A case cannot be used; the message is the reason written to the report."""


@dataclass
class BuildReport:
    """What ``build_dataset`` did: the datalist written, the cases kept and those skipped (with why)."""

    datalist: Path
    cases: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class _Source:
    case: str
    patient: str
    folder: Path
    kind: str  # "nifti" | "dicom"


def _is_nifti_case(folder: Path) -> bool:
    return any((folder / n).is_file() for n in _IMAGE_NAMES)


def _discover(root: Path, prefix: str = "") -> list[_Source]:
    out: list[_Source] = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        name = f"{prefix}{d.name}"
        fractions = sorted(f for f in d.iterdir() if f.is_dir() and _FX.fullmatch(f.name))
        if fractions:
            out += [_Source(f"{name}_{f.name}", name, f, "nifti") for f in fractions if _is_nifti_case(f)]
        elif _is_nifti_case(d):
            out.append(_Source(name, name, d, "nifti"))
        else:
            out.append(_Source(name, name, d, "dicom"))
    return out


def _nifti_masks(folder: Path, image: Volume) -> dict[str, Volume]:
    masks: dict[str, Volume] = {}
    labels = folder / "labels.nii.gz"
    if labels.is_file():
        vol, spec = read_labels(labels)
        masks.update(labels_to_masks(vol, spec))
    for f in sorted((folder / "masks").glob("*.nii*")) + sorted(folder.glob("*.nii*")):
        stem = f.name.split(".nii")[0]
        if f.name in _IMAGE_NAMES or stem in ("labels", "hypoxia", "deformation_to_ref"):
            continue
        name = stem if stem in CANONICAL else canonical_name(stem)
        if name and name not in masks:
            masks[name] = read_mask(f)
    for name, m in masks.items():
        image.geometry.require_same(m.geometry, what=f"mask {name}", tol_mm=1e-2)
    return masks


def _dicom_case(folder: Path) -> tuple[Volume, dict[str, Volume], str]:
    from sarcart.io.dicom_series import RTSTRUCT_STORAGE, read_dicom_series
    from sarcart.io.rtstruct import read_rtstruct

    structs, series_uids, patient = [], set(), ""
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError):
            continue
        patient = patient or str(ds.get("PatientID", ""))
        if str(ds.get("SOPClassUID", "")) == RTSTRUCT_STORAGE:
            structs.append(f)
        elif "ImagePositionPatient" in ds:
            series_uids.add(str(ds.SeriesInstanceUID))
    if not series_uids:
        raise SkipCase("no DICOM image series found")
    if not structs:
        raise SkipCase("no RTSTRUCT found")
    for uid in sorted(series_uids):
        series = read_dicom_series(folder, series_uid=uid)
        for s in structs:
            try:
                ss = read_rtstruct(s, series)
            except SarcartError as exc:
                log.info("%s: RTSTRUCT %s does not fit series %s: %s", folder.name, s.name, uid, exc)
                continue
            return series.volume, dict(ss.masks), patient
    raise SkipCase("no RTSTRUCT refers to an image series in the folder")


def _load_case(src: _Source) -> tuple[Volume, dict[str, Volume], str]:
    if src.kind == "dicom":
        image, masks, patient = _dicom_case(src.folder)
        return image, masks, patient or src.patient
    image = read_nifti(next(src.folder / n for n in _IMAGE_NAMES if (src.folder / n).is_file()))
    return image, _nifti_masks(src.folder, image), src.patient


def _label_map(image: Volume, masks: dict[str, Volume], structures: list[str]) -> np.ndarray:
    missing = [s for s in structures if s not in masks]
    if missing:
        found = ", ".join(sorted(masks)) or "none"
        raise SkipCase(f"missing structure(s) {', '.join(missing)} (found: {found})")
    labels = np.zeros(image.geometry.shape, dtype=np.uint8)
    for value, name in reversed(list(enumerate(structures, start=1))):
        arr = masks[name].array
        if not arr.any():
            raise SkipCase(f"structure {name} is empty")
        labels[arr] = value  # reversed order: the first structure listed is written last and wins
    return labels


def _write_case(src: _Source, dst: Path, spec: LabelSpec) -> dict:
    """Read one case, write its image and label map, return its datalist entry (without fold)."""
    structures = [spec.values[k] for k in sorted(spec.values)]
    image, masks, patient = _load_case(src)
    labels = _label_map(image, masks, structures)
    write_nifti(image, dst / "imagesTr" / f"{src.case}.nii.gz")
    write_labels(image.with_array(labels), spec, dst / "labelsTr" / f"{src.case}.nii.gz")
    vols = {s: float((labels == i).sum() * image.geometry.voxel_volume_cc) for i, s in enumerate(structures, 1)}
    return {"image": f"imagesTr/{src.case}.nii.gz", "label": f"labelsTr/{src.case}.nii.gz",
            "case": src.case, "patient": hash_id(patient), "volumes_cc": vols}


def assign_folds(patients: list[str], n_folds: int, seed: int) -> dict[str, int]:
    """Patient -> fold, balanced (sizes differ by at most one), in a seeded pseudo-random order."""
    if n_folds < 2:
        raise ConfigError(f"n_folds must be >= 2, got {n_folds}")
    order = sorted(set(patients), key=lambda p: hash_id(f"{seed}:{p}"))
    return {p: i % n_folds for i, p in enumerate(order)}


def build_dataset(
    source: str | os.PathLike[str] | list[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    structures: list[str],
    n_folds: int = 5,
    seed: int = 0,
    name: str = "",
) -> BuildReport:
    """Convert a folder of patients into a training set with patient-level folds.

    Args:
        source: root folder, one sub-folder per patient (DICOM, NIfTI or course layout); or a list
            of roots, whose case and patient names are then prefixed with ``<root name>_``.
        out: output folder (``imagesTr/``, ``labelsTr/``, ``datalist.json``).
        structures: canonical structure names, in label order (label k+1 = structures[k]).
        n_folds: number of cross-validation folds.
        seed: seed of the fold assignment.

    Returns:
        A :class:`BuildReport`; skipped cases carry their reason.

    Raises:
        ConfigError: unknown structure names, a missing source, or no usable case at all.
    """
    roots = [Path(p) for p in source] if isinstance(source, (list, tuple)) else [Path(source)]
    dst = Path(out)
    unknown = [s for s in structures if s not in CANONICAL]
    if unknown or not structures:
        raise ConfigError(f"structures must be canonical names ({', '.join(CANONICAL)}), got {structures}")
    for root in roots:
        if not root.is_dir():
            raise ConfigError(f"source folder {root} not found; pass the folder holding one sub-folder per patient")
    sources = [src for r in roots for src in _discover(r, f"{r.name}_" if len(roots) > 1 else "")]
    spec = LabelSpec(values={i: s for i, s in enumerate(structures, 1)},
                     structures={s: (i,) for i, s in enumerate(structures, 1)})
    report = BuildReport(datalist=dst / "datalist.json")
    kept: list[dict] = []
    for src in sources:
        try:
            kept.append(_write_case(src, dst, spec))
        except (SkipCase, SarcartError) as exc:
            report.skipped.append({"case": src.case, "reason": str(exc)})
            log.warning("skipped %s: %s", src.case, exc)
    if not kept:
        where = ", ".join(map(str, roots))
        if not sources:
            raise ConfigError(f"no patient folder in {where}: it must hold one sub-folder per patient (a DICOM MR "
                              f"series with its RTSTRUCT, or image.nii.gz with masks; see docs/training.md §1)")
        reasons = "; ".join(f"{s['case']}: {s['reason']}" for s in report.skipped[:5])
        raise ConfigError(f"no usable case in {where}: {reasons}")
    folds = assign_folds([c["patient"] for c in kept], n_folds, seed)
    for c in kept:
        c["fold"] = folds[c["patient"]]
    report.cases = kept
    datalist = {
        "name": name or "+".join(r.name for r in roots), "structures": structures,
        "labels": {"0": "background", **{str(k): v for k, v in spec.values.items()}},
        "n_folds": n_folds, "seed": seed, "numTraining": len(kept), "training": kept, "skipped": report.skipped,
    }
    dst.mkdir(parents=True, exist_ok=True)
    report.datalist.write_text(json.dumps(datalist, indent=1))
    return report


def load_datalist(path: str | os.PathLike[str]) -> dict:
    """Read a datalist and make its image/label paths absolute.

    Raises:
        ConfigError: missing file, or entries without image/label/fold.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"datalist {p} not found; build one with `sarcart dataset build`")
    data = json.loads(p.read_text())
    entries = data.get("training")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{p} has no 'training' entries")
    for e in entries:
        if not {"image", "label", "case"} <= set(e):
            raise ConfigError(f"{p}: entry {e} lacks image, label or case")
        for key in ("image", "label"):
            q = Path(e[key])
            e[key] = str(q if q.is_absolute() else (p.parent / q).resolve())
    data.setdefault("structures", [v for k, v in sorted(data.get("labels", {}).items(), key=lambda kv: int(kv[0])) if k != "0"])
    return data


def fold_entries(data: dict, fold: int | str) -> list[dict]:
    """The entries of one fold (a fold number, or its text as the CLI passes it).

    Raises:
        ConfigError: no entry has that fold; the message lists the folds there are.
    """
    folds: dict[int, list[dict]] = defaultdict(list)
    for e in data["training"]:
        folds[int(e.get("fold", 0))].append(e)
    try:
        key = int(fold)
    except ValueError:
        key = None
    if key not in folds:
        raise ConfigError(f"fold {fold} does not exist in the datalist; its folds are "
                          f"{', '.join(map(str, sorted(folds)))}")
    return folds[key]


def split(data: dict, fold: int | str) -> tuple[list[dict], list[dict]]:
    """``(train, validation)`` entries for ``fold`` (``"all"``: every case trains, none validates)."""
    entries = data["training"]
    if fold == "all":
        return list(entries), []
    val = fold_entries(data, fold)
    train = [e for e in entries if int(e.get("fold", 0)) != int(fold)]
    if not train:
        raise ConfigError(f"fold {fold} leaves no training cases")
    return train, val
