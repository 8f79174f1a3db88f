"""Review support: slice rendering with contour overlays, review state, approved RTSTRUCT uploads.

A job's result folder holds ``image.nii.gz``, ``masks/<NAME>.nii.gz``, ``rtstruct.dcm`` and
``qa.json``; an approved structure set (uploaded on the page or sent by the planning system) is
kept in ``approved/`` with its masks and recorded in the audit log.
"""

from __future__ import annotations

import io
import json
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import binary_erosion

from sarcart.errors import InvalidDicomError, SarcartError
from sarcart.io.geometry import Volume
from sarcart.io.nifti import read_mask, read_nifti, write_mask
from sarcart.io.structures import STYLE
from sarcart.service.db import ServiceDB


def _result_dir(job: dict[str, Any]) -> Path:
    if not job.get("result_dir") or job.get("state") != "done":
        raise SarcartError(f"job {job['id']} has no results to review (state {job.get('state')})")
    return Path(job["result_dir"])


def review_state(job: dict[str, Any]) -> dict[str, Any]:
    """Structures of a job with their QA flags and the image shape, for the review page."""
    folder = _result_dir(job)
    qa_path = folder / "qa.json"
    qa = json.loads(qa_path.read_text()) if qa_path.is_file() else {}
    names = sorted(p.name.split(".nii")[0] for p in (folder / "masks").glob("*.nii.gz"))
    image, _ = _load(str(folder))
    return {
        "structures": {n: {"qa": qa.get("structures", {}).get(n, {}),
                           "color": list(STYLE.get(n, ((255, 255, 0), ""))[0])} for n in names},
        "shape": list(image.geometry.shape),
        "spacing_mm": list(image.geometry.spacing_mm),
        "input_check": qa.get("input", {}),
    }


@lru_cache(maxsize=4)
def _load(folder: str) -> tuple[Volume, dict[str, np.ndarray]]:
    root = Path(folder)
    image = read_nifti(root / "image.nii.gz")
    masks = {p.name.split(".nii")[0]: read_mask(p).array for p in sorted((root / "masks").glob("*.nii.gz"))}
    return image, masks


def _plane(arr: np.ndarray, plane: str, index: int) -> np.ndarray:
    """2D display slice (rows top->bottom, columns left->right in the viewer)."""
    nx, ny, nz = arr.shape[:3]
    if plane == "axial":
        k = nz // 2 if index < 0 else min(index, nz - 1)
        return arr[:, :, k].T
    if plane == "coronal":
        j = ny // 2 if index < 0 else min(index, ny - 1)
        return arr[:, j, :].T[::-1]
    i = nx // 2 if index < 0 else min(index, nx - 1)
    return arr[i, :, :].T[::-1]


def render_slice(job: dict[str, Any], plane: str, index: int) -> bytes:
    """PNG of one slice with every structure's outline in its colour (aspect ratio from the spacing)."""
    from PIL import Image

    image, masks = _load(str(_result_dir(job)))
    img = _plane(image.array, plane, index).astype(np.float32)
    lo, hi = np.percentile(img, [1, 99.5]) if img.size else (0.0, 1.0)
    grey = np.clip((img - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    for name, m in masks.items():
        m2 = _plane(m, plane, index)
        edge = m2 & ~binary_erosion(m2)
        rgb[edge] = STYLE.get(name, ((255, 255, 0), ""))[0]
    sx, sy, sz = image.geometry.spacing_mm
    col_mm, row_mm = {"axial": (sx, sy), "coronal": (sx, sz), "sagittal": (sy, sz)}[plane]
    h, w = rgb.shape[:2]
    scale = 2.0
    size = (max(1, int(round(w * scale * col_mm / min(col_mm, row_mm)))),
            max(1, int(round(h * scale * row_mm / min(col_mm, row_mm)))))
    buf = io.BytesIO()
    Image.fromarray(rgb).resize(size, Image.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


def approve_rtstruct_upload(job: dict[str, Any], db: ServiceDB, data: bytes, *, actor: str) -> list[str]:
    """Make an edited RTSTRUCT the approved set of ``job``; returns the approved structure names.

    The structure set must refer to the job's image series (same frame of reference).
    """
    from sarcart.io.dicom_series import read_dicom_series
    from sarcart.io.rtstruct import read_rtstruct

    folder = _result_dir(job)
    series_row = db.series(job["series_uid"])
    if series_row is None:
        raise SarcartError(f"series of job {job['id']} not found")
    series = read_dicom_series(series_row["folder"])
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "upload.dcm"
        p.write_bytes(data)
        try:
            ss = read_rtstruct(p, series)
        except InvalidDicomError as exc:
            raise SarcartError(f"uploaded file is not a usable RTSTRUCT: {exc}") from exc
        approved = folder / "approved"
        approved.mkdir(exist_ok=True)
        (approved / "rtstruct.dcm").write_bytes(data)
    for name, mask in ss.masks.items():
        write_mask(mask, approved / "masks" / f"{name}.nii.gz")
    names = sorted(ss.masks)
    db.audit(actor, "approved-structure-set", job_id=job["id"], model=job.get("model"),
             details={"structures": names})
    return names
