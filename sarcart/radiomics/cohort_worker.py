"""The per-case task that Dask workers run for :func:`sarcart.radiomics.cohort.extract_cohort`.

A task is a plain dict (picklable, no open files): image and mask paths, the ROI, the resolved
parameter mapping, the normalisation, the carry settings and, for a fraction without a contour, the
source fraction's image and mask. :func:`run_case` never raises: it returns
``{"status": "ok", "features": {...}}`` or ``{"status": "failed", "reason": ..., "message": ...}`` where
``reason`` is one of ``missing_file``, ``unreadable``, ``empty_mask``, ``geometry_mismatch``,
``carry_failed``, ``extraction_error``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from sarcart.errors import GeometryMismatchError, InvalidImageError, SarcartError
from sarcart.io.geometry import Volume

log = logging.getLogger(__name__)


class CaseFailure(Exception):
    """A case cannot be extracted; ``reason`` is a short code, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def read_volume(path: str | Path, what: str) -> Volume:
    """Any 3D image SimpleITK reads, as a :class:`Volume`; :class:`CaseFailure` when missing or unreadable."""
    import SimpleITK as sitk

    p = Path(path)
    if not p.is_file():
        raise CaseFailure("missing_file", f"{what} file not found: {p}")
    try:
        image = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        raise CaseFailure("unreadable", f"cannot read {what} {p}: {str(exc).strip().splitlines()[-1]}") from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise CaseFailure("unreadable", f"{what} {p} is not a scalar 3D volume")
    return Volume.from_sitk(image)


def read_roi(path: str | Path, label: int, roi: str) -> Volume:
    """Boolean ROI: structure ``roi`` of a label map with a ``.json`` sidecar, else voxels equal to ``label``."""
    from sarcart.io.labels import LabelSpec
    from sarcart.radiomics.manifest import sidecar_path

    vol = read_volume(path, "mask")
    sidecar = sidecar_path(Path(path))
    if sidecar.is_file():
        try:
            spec = LabelSpec.from_json(sidecar.read_text())
        except (InvalidImageError, ValueError) as exc:
            raise CaseFailure("unreadable", f"label sidecar {sidecar} is invalid: {exc}") from exc
        if roi in spec.structures:
            return vol.with_array(np.isin(vol.array, spec.structures[roi]))
    return vol.with_array(np.asarray(vol.array) == label)


def _mask(task: dict[str, Any], image: Volume) -> tuple[Volume, str]:
    src = task["source"]
    if src is None:
        return read_roi(task["mask"], task["label"], task["roi"]), "manifest"
    from sarcart.radiomics.fractions import CarryConfig, carry_outline

    src_image = read_volume(src["image"], "source image")
    src_mask = read_roi(src["mask"], src["label"], src["roi"])
    try:
        carried = carry_outline(image, src_image, src_mask, CarryConfig(**task["carry"]))
    except (SarcartError, RuntimeError) as exc:
        raise CaseFailure("carry_failed", f"cannot carry the outline of fraction {src['fraction']}: {exc}") from exc
    if task.get("carried_mask_path"):
        from sarcart.io.nifti import write_mask

        try:
            write_mask(carried, task["carried_mask_path"])
        except OSError as exc:  # the carried outline is kept for review when the cache is writable
            log.warning("could not save the carried outline: %s", exc)
    return carried, f"carried:{src['fraction']}"


def _extract(task: dict[str, Any]) -> dict[str, Any]:
    from sarcart.radiomics.extract import extract_features
    from sarcart.radiomics.fractions import zscore_normalise
    from sarcart.radiomics.params import RadiomicsParams

    image = read_volume(task["image"], "image")
    mask, source = _mask(task, image)
    try:
        mask.geometry.require_same(image.geometry, what="mask", tol_mm=task["tol_mm"])
    except GeometryMismatchError as exc:
        raise CaseFailure("geometry_mismatch", str(exc)) from exc
    if not mask.array.any():
        raise CaseFailure("empty_mask", f"ROI {task['roi']!r} (label {task['label']}) holds no voxel")
    mask = image.with_array(np.asarray(mask.array, dtype=np.uint8))  # same grid within tolerance: snap to it
    params = RadiomicsParams(task["params"], "cohort")  # validated by the caller
    if task["normalisation"] == "zscore":
        image = zscore_normalise(image, scale=float(params.settings.get("normalizeScale", 1.0)))
    try:
        row = extract_features(image, mask, params, image_id=task["image_sha256"][:12], roi=task["roi"], label=1)
    except InvalidImageError as exc:
        raise CaseFailure("extraction_error", str(exc)) from exc
    row["label"] = task["label"]
    row.update({"mask_source": source, "image_sha256": task["image_sha256"], "mask_sha256": task["mask_sha256"],
                "case_key": task["key"], "normalisation": task["normalisation"]})
    return row


def run_case(task: dict[str, Any]) -> dict[str, Any]:
    """Extract one case (see the module docstring); never raises."""
    t0 = time.perf_counter()
    base = {"key": task["key"], "row": task["row"]}
    try:
        row = _extract(task)
    except CaseFailure as exc:
        return {**base, "status": "failed", "reason": exc.reason, "message": str(exc)}
    except Exception as exc:  # noqa: BLE001 - one bad case must not stop a cohort; the reason is reported
        return {**base, "status": "failed", "reason": "extraction_error", "message": f"{type(exc).__name__}: {exc}"}
    return {**base, "status": "ok", "features": row, "seconds": time.perf_counter() - t0}
