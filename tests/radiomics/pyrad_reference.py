"""pyradiomics' own voxel-based maps, run by the tests on the same settings, and the agreement check."""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk

CLASSES = ("firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")


def roi_box(roi: np.ndarray, n_voxels: int) -> np.ndarray:
    """The ROI cut to the smallest box around its centroid that holds at least ``n_voxels`` ROI voxels."""
    c = np.round(np.argwhere(roi).mean(0)).astype(int)
    for h in range(1, max(roi.shape)):
        box = np.zeros_like(roi)
        hz = max(h // 3, 1)
        box[max(c[0] - h, 0):c[0] + h + 1, max(c[1] - h, 0):c[1] + h + 1, max(c[2] - hz, 0):c[2] + hz + 1] = True
        if (roi & box).sum() >= n_voxels:
            return roi & box
    return roi


def pyradiomics_maps(image: sitk.Image, roi: np.ndarray, setting: dict[str, Any], voxel: dict[str, Any],
                     classes: tuple[str, ...] = CLASSES) -> dict[str, np.ndarray]:
    """``{"<class>_<Feature>": (nx, ny, nz) array}`` from pyradiomics' voxel-based extraction (NaN outside)."""
    import radiomics
    from radiomics import featureextractor

    radiomics.setVerbosity(50)
    mask = sitk.GetImageFromArray(roi.transpose(2, 1, 0).astype(np.uint8))
    mask.CopyInformation(image)
    params = {"setting": {**setting, "label": 1}, "voxelSetting": voxel, "imageType": {"Original": {}},
              "featureClass": {c: None for c in classes}}
    result = featureextractor.RadiomicsFeatureExtractor(params).execute(image, mask, voxelBased=True)
    out = {}
    for key, value in result.items():
        if not isinstance(value, sitk.Image):
            continue
        full = np.full(roi.shape, np.nan)
        off = image.TransformPhysicalPointToIndex(value.GetOrigin())
        arr = sitk.GetArrayFromImage(value).transpose(2, 1, 0)
        sl = tuple(slice(o, o + n) for o, n in zip(off, arr.shape))
        full[sl] = arr
        out[key.split("_", 1)[1]] = np.where(roi, full, np.nan)
    return out


def disagreements(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray], roi: np.ndarray,
                  rel: float = 1e-5) -> dict[str, str]:
    """Features where some ROI voxel violates |ours - ref| <= rel * max(|ref|, range of ref over the ROI).

    NaN in both counts as agreement.
    """
    bad = {}
    for name, r in ref.items():
        a, b = ours[name][roi], r[roi]
        finite = np.isfinite(b)
        rng = float(np.ptp(b[finite])) if finite.any() else 0.0
        tol = rel * np.maximum(np.abs(b), rng)
        ok = (np.abs(a - b) <= tol) | (np.isnan(a) & np.isnan(b))
        if not ok.all():
            i = int(np.argmax(~ok))
            bad[name] = f"{int((~ok).sum())}/{ok.size} voxels, e.g. sarcart {a[i]!r} vs pyradiomics {b[i]!r}"
    return bad
