"""ROI radiomics features with pyradiomics, as a tidy table (one row per image x ROI).

Columns: identifiers (``image_id``, ``roi``, ``label``), provenance (``settings_hash`` and the versions
of pyradiomics, sarcart, numpy and SimpleITK), then one column per feature named
``<filter>_<class>_<feature>`` exactly as pyradiomics names it (``original_glcm_Contrast``). Where
pyradiomics' definition deviates from IBSI (see ``docs/radiomics_ibsi.md``), an extra column carries the
IBSI value (``original_firstorder_ExcessKurtosis`` = IBSI ``stat_kurt``; see :mod:`sarcart.radiomics.ibsi`).

Extraction is callable per case (:func:`extract_features`) so cohort workflows can schedule cases as
they like; :func:`extract_table` runs a list of cases.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sarcart.errors import InvalidImageError
from sarcart.io.atomic import atomic_write
from sarcart.io.geometry import Volume
from sarcart.radiomics.params import RadiomicsParams, load_params

log = logging.getLogger(__name__)

ImageLike = Volume | str | os.PathLike
META_COLUMNS = ("image_id", "roi", "label", "settings_hash", "pyradiomics_version", "sarcart_version",
                "numpy_version", "simpleitk_version")


@dataclass(frozen=True)
class Case:
    """One image x ROI to extract.

    Attributes:
        image: image volume or NIfTI/NRRD path.
        mask: mask volume or path (voxels equal to ``label`` form the ROI).
        image_id: pseudonymous identifier written to the table (never a patient name or ID).
        roi: structure name written to the table.
        label: mask value of the ROI.
    """

    image: ImageLike
    mask: ImageLike
    image_id: str
    roi: str = "GTV"
    label: int = 1


def quiet_pyradiomics() -> None:
    """Only pyradiomics' errors reach the console (it logs every step at INFO and warns on every symmetric
    GLCM); with sarcart's ``-vv`` (root logger at DEBUG) its messages pass through."""
    import radiomics

    radiomics.setVerbosity(logging.ERROR)
    root_debug = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    logging.getLogger("radiomics").setLevel(logging.DEBUG if root_debug else logging.ERROR)


def versions() -> dict[str, str]:
    """Versions of the packages that determine feature values."""
    import radiomics
    import SimpleITK as sitk

    import sarcart

    return {"pyradiomics_version": str(radiomics.__version__), "sarcart_version": sarcart.__version__,
            "numpy_version": np.__version__, "simpleitk_version": sitk.Version.VersionString()}


def to_sitk(item: ImageLike, *, what: str, mask: bool = False) -> Any:
    """A SimpleITK image from a :class:`Volume` or a file path (masks become UInt32 label maps)."""
    import SimpleITK as sitk

    if isinstance(item, Volume):
        vol = item
        if mask:
            vol = item.with_array(np.asarray(item.array).astype(np.uint32))
        elif vol.array.dtype == bool:
            vol = vol.with_array(vol.array.astype(np.uint8))
        return vol.to_sitk()
    path = Path(item)
    if not path.is_file():
        raise InvalidImageError(f"{what} file not found: {path}; pass an existing NIfTI/NRRD file or a Volume")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InvalidImageError(f"cannot read {what} {path}: {str(exc).strip().splitlines()[-1]}") from exc
    if image.GetDimension() != 3:
        raise InvalidImageError(f"{what} {path} is {image.GetDimension()}D; radiomics needs 3D volumes")
    return sitk.Cast(image, sitk.sitkUInt32) if mask else image


def _check_roi(mask_img: Any, label: int, what: str) -> None:
    import SimpleITK as sitk

    count = int((sitk.GetArrayViewFromImage(mask_img) == label).sum())
    if count == 0:
        raise InvalidImageError(f"{what} holds no voxel with label {label}; pass the ROI's label value (--label)")


def ibsi_columns(row: Mapping[str, Any]) -> dict[str, float]:
    """Extra IBSI-definition columns for features where pyradiomics deviates from IBSI."""
    from sarcart.radiomics.ibsi import ibsi_variants

    return ibsi_variants(row)


def extract_features(
    image: ImageLike,
    mask: ImageLike,
    params: RadiomicsParams | str | os.PathLike[str] | Mapping[str, Any] | None = None,
    *,
    image_id: str = "image",
    roi: str = "GTV",
    label: int | None = None,
) -> dict[str, Any]:
    """Features of one image x ROI as one table row (an ordered dict).

    Args:
        image: image :class:`Volume` or path (NIfTI, NRRD, anything SimpleITK reads).
        mask: mask volume or path on the image grid (pyradiomics checks geometry within
            ``geometryTolerance``).
        params: parameter set (see :func:`sarcart.radiomics.params.load_params`); default ``mr_default``.
        image_id: pseudonymous identifier for the row.
        roi: structure name for the row.
        label: ROI label value; default the set's ``setting.label`` (1).

    Returns:
        ``{"image_id", "roi", "label", "settings_hash", *versions, "<filter>_<class>_<feature>": float, ...}``.

    Raises:
        InvalidImageError: unreadable inputs, empty ROI, ROI rejected by pyradiomics' mask checks.
    """
    p = load_params(params)
    quiet_pyradiomics()
    lab = int(label if label is not None else p.settings.get("label", 1))
    img = to_sitk(image, what="image")
    msk = to_sitk(mask, what="mask", mask=True)
    _check_roi(msk, lab, "mask")
    extractor = p.extractor()
    extractor.addProvenance(True)  # the IBSI axis lengths need the ROI voxel count from the diagnostics
    try:
        result = extractor.execute(img, msk, label=lab)
    except (ValueError, RuntimeError) as exc:
        raise InvalidImageError(f"pyradiomics rejected image {image_id!r} / ROI {roi!r}: {exc}") from exc
    row: dict[str, Any] = {"image_id": image_id, "roi": roi, "label": lab, "settings_hash": p.settings_hash}
    row.update(versions())
    features = {k: float(np.asarray(v)) for k, v in result.items() if not k.startswith("diagnostics_")}
    row.update(features)
    row.update(ibsi_columns(result))
    log.info("extracted %d features for %s / %s", len(features), image_id, roi)
    return row


def extract_table(cases: Iterable[Case], params: Any = None, *, show_progress: bool = False) -> Any:
    """Extract every case; returns a pandas DataFrame with one row per case (columns as documented above)."""
    import pandas as pd

    from sarcart.progress import progress

    p = load_params(params)
    case_list = list(cases)
    rows = [extract_features(c.image, c.mask, p, image_id=c.image_id, roi=c.roi, label=c.label)
            for c in progress(case_list, "radiomics", enabled=show_progress)]
    return pd.DataFrame(rows)


def write_table(table: Any, path: str | os.PathLike[str], params: RadiomicsParams | None = None) -> Path:
    """Write a feature table as ``.csv`` or ``.parquet`` (atomically), with ``<name>.params.yaml`` beside it.

    Raises:
        InvalidImageError: unsupported suffix.
    """
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise InvalidImageError(f"output must end in .csv or .parquet, got {out.name!r}")
    if suffix == ".csv":
        atomic_write(out, lambda tmp: table.to_csv(tmp, index=False, float_format="%.10g"))
    else:
        atomic_write(out, lambda tmp: table.to_parquet(tmp, index=False))
    if params is not None:
        out.with_name(out.stem + ".params.yaml").write_text(params.to_yaml())
    return out
