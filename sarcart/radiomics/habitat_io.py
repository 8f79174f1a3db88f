"""Output folders of ``sarcart radiomics habitats`` and ``sarcart radiomics risk``.

* habitats: ``habitats.nii.gz`` (uint8, 0 outside the ROI), ``habitats.json`` (the model: features,
  scaler, centroids, scores of each k; pass it as ``--reference`` for later fractions) and, with a DICOM
  series, ``habitats_seg.dcm`` (DICOM SEG on the series' grid).
* risk: ``risk.nii.gz`` (P(hypoxic), float32) and ``prescription.nii.gz`` (course dose in Gy, float32),
  both on the grid of the given mask (the image grid, as ``sarcart plan --painting`` expects), plus
  ``painting.yaml`` with the settings used.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import yaml

from sarcart.io.geometry import Volume
from sarcart.io.nifti import read_mask, write_nifti
from sarcart.radiomics.habitats import HabitatModel
from sarcart.radiomics.prescription import PaintingConfig, prescription_map

log = logging.getLogger(__name__)


def resample_to(volume: Volume, geometry: object, *, nearest: bool) -> Volume:
    """``volume`` on another grid (same world frame): nearest neighbour for labels, linear otherwise; 0 outside."""
    import SimpleITK as sitk

    if volume.geometry.is_close(geometry):  # type: ignore[arg-type]
        return volume
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    src = volume.with_array(volume.array.astype(np.float32 if not nearest else volume.array.dtype)).to_sitk()
    ref = geometry.reference_image()  # type: ignore[attr-defined]
    out = sitk.Resample(src, ref, sitk.Transform(), interp, 0.0, src.GetPixelID())
    return Volume.from_sitk(out)


def write_habitats(labels: Volume, model: HabitatModel, out_dir: str | os.PathLike[str], *,
                   series: str | os.PathLike[str] | None = None) -> list[Path]:
    """Write the habitat folder (see the module docstring); returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [write_nifti(labels.with_array(labels.array.astype(np.uint8)), out / "habitats.nii.gz")]
    (out / "habitats.json").write_text(model.to_json())
    paths.append(out / "habitats.json")
    if series is not None:
        from sarcart.io.dicom_series import read_dicom_series
        from sarcart.radiomics.seg import write_habitat_seg

        s = read_dicom_series(series)
        on_series = resample_to(labels, s.volume.geometry, nearest=True)
        paths.append(write_habitat_seg(on_series, s, out / "habitats_seg.dcm", n_habitats=model.k))
    return paths


def write_risk_outputs(risk: Volume, mask: str | os.PathLike[str] | Volume, painting: PaintingConfig, *,
                       out_dir: str | os.PathLike[str], necrosis: str | os.PathLike[str] | None = None
                       ) -> list[Path]:
    """Risk and prescription maps on the mask's grid (risk resampled linearly when the grids differ)."""
    roi = mask if isinstance(mask, Volume) else read_mask(mask)
    roi = roi.with_array(roi.array != 0)
    risk_on_mask = resample_to(risk, roi.geometry, nearest=False)
    risk_on_mask = risk_on_mask.with_array(np.where(roi.array, risk_on_mask.array, 0.0).astype(np.float32))
    nec = None
    if necrosis is not None:
        nec = resample_to(read_mask(necrosis), roi.geometry, nearest=True)
    presc = prescription_map(risk_on_mask, roi, painting, necrosis=nec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [write_nifti(risk_on_mask, out / "risk.nii.gz"), write_nifti(presc, out / "prescription.nii.gz")]
    (out / "painting.yaml").write_text(yaml.safe_dump(painting.model_dump(), sort_keys=False))
    return paths
