"""Cohort manifests: which image and mask make each patient x fraction, plus outcomes and covariates.

A manifest is a CSV file with at least the columns ``patient, fraction, image, mask``:

* ``patient``: a pseudonymous patient identifier (kept in the feature table to join outcomes; never a name);
* ``fraction``: the integer fraction number; a patient's course is ordered by it and its *first* fraction
  (the smallest number) is the baseline of delta-radiomics;
* ``image``, ``mask``: file paths, absolute or relative to the manifest's folder. ``mask`` may be empty
  for a fraction without a contour: the outline of the patient's previous contoured fraction is then
  carried onto it by registration (:mod:`sarcart.radiomics.fractions`);
* optional ``label`` (mask value of the ROI, default 1) and ``roi`` (ROI name, default ``GTV``). When the
  mask is a label map with a ``.json`` sidecar (:mod:`sarcart.io.labels`, e.g. the phantom's
  ``labels.nii.gz``) and ``roi`` names one of its structures, the ROI is that structure (GTV = {13, 14}).

Every other column (outcomes, covariates, scanner...) is carried unchanged into the feature table.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sarcart.errors import ConfigError

REQUIRED = ("patient", "fraction", "image", "mask")
OPTIONAL = ("label", "roi")
RESERVED = REQUIRED + OPTIONAL


@dataclass(frozen=True)
class ManifestCase:
    """One manifest row, resolved.

    Attributes:
        row: 0-based row of the manifest (the output keeps manifest order).
        patient: pseudonymous patient identifier.
        fraction: fraction number.
        order: position of the fraction in the patient's course (0 = baseline).
        image: absolute image path.
        mask: absolute mask path, or ``None`` when the fraction has no contour.
        label: mask value of the ROI (ignored when ``roi`` names a structure of a label-map sidecar).
        roi: ROI name.
        carry_from: ``row`` of the contoured fraction whose outline is carried here (``None`` when the
            case has its own mask, or when no earlier contoured fraction exists).
        extra: carried columns (outcomes, covariates), in manifest column order.
    """

    row: int
    patient: str
    fraction: int
    order: int
    image: Path
    mask: Path | None
    label: int = 1
    roi: str = "GTV"
    carry_from: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _path(value: str, base: Path) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _int(value: str, column: str, row: int, default: int | None = None) -> int:
    if value == "" and default is not None:
        return default
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number != int(number):
        raise ConfigError(f"manifest row {row + 2}: {column} must be an integer, got {value!r}")
    return int(number)


def read_manifest(path: str | os.PathLike[str]) -> list[ManifestCase]:
    """Read and validate a manifest; resolve paths, course order and carried contours.

    Raises:
        ConfigError: missing file or required columns, a non-integer fraction or label, an empty
            patient or image cell, or a patient x fraction listed twice.
    """
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"manifest {p} not found; pass a CSV with columns {', '.join(REQUIRED)}")
    try:
        frame = pd.read_csv(p, dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as exc:
        raise ConfigError(f"manifest {p} is not a readable CSV: {exc}") from exc
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise ConfigError(f"manifest {p} lacks the columns {missing}; required: {', '.join(REQUIRED)}")
    extra_cols = [c for c in frame.columns if c not in RESERVED]
    base = p.resolve().parent
    raw: list[dict[str, Any]] = []
    seen: set[tuple[str, int]] = set()
    for i, rec in enumerate(frame.to_dict("records")):
        patient, image = _cell(rec["patient"]), _cell(rec["image"])
        if not patient or not image:
            raise ConfigError(f"manifest row {i + 2}: patient and image must not be empty")
        fraction = _int(_cell(rec["fraction"]), "fraction", i)
        if (patient, fraction) in seen:
            raise ConfigError(f"manifest row {i + 2}: patient {patient!r} fraction {fraction} is listed twice")
        seen.add((patient, fraction))
        mask = _cell(rec["mask"])
        raw.append({"row": i, "patient": patient, "fraction": fraction, "image": _path(image, base),
                    "mask": _path(mask, base) if mask else None,
                    "label": _int(_cell(rec.get("label", "")), "label", i, default=1),
                    "roi": _cell(rec.get("roi", "")) or "GTV",
                    "extra": {c: _typed(rec[c]) for c in extra_cols}})
    return _resolve_courses(raw)


def _typed(value: str) -> Any:
    """Manifest cells are read as text; numbers become numbers again (empty cells become None)."""
    text = value.strip()
    if text == "":
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number


def _resolve_courses(raw: list[dict[str, Any]]) -> list[ManifestCase]:
    by_patient: dict[str, list[dict[str, Any]]] = {}
    for rec in raw:
        by_patient.setdefault(rec["patient"], []).append(rec)
    for recs in by_patient.values():
        last_contoured: int | None = None
        for order, rec in enumerate(sorted(recs, key=lambda r: r["fraction"])):
            rec["order"] = order
            rec["carry_from"] = None if rec["mask"] is not None else last_contoured
            if rec["mask"] is not None:
                last_contoured = rec["row"]
    return [ManifestCase(**rec) for rec in raw]


def file_sha256(path: str | os.PathLike[str] | None) -> str | None:
    """SHA-256 of a file's bytes plus, for a label map, its ``.json`` sidecar (``None`` if missing)."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        return None
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    sidecar = sidecar_path(p)
    if sidecar.is_file():
        h.update(sidecar.read_bytes())
    return h.hexdigest()


def sidecar_path(mask: Path) -> Path:
    """The ``labels.json``-style sidecar of a label map (``x.nii.gz`` -> ``x.json``)."""
    return mask.with_name(mask.name.split(".nii")[0] + ".json")


def case_key(parts: Mapping[str, Any]) -> str:
    """Cache key of a case: SHA-256 (24 hex digits) of its inputs' hashes and the settings, as JSON."""
    text = json.dumps(dict(parts), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]
