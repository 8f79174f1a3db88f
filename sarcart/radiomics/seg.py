"""Habitat label maps as DICOM Segmentation objects (highdicom), referencing the source MR series.

One segment per habitat (BINARY segmentation written from a label map); the segmented property is
"Tissue" / "Neoplasm" (SNOMED CT, via pydicom's code dictionary) with the habitat number in the segment
label, algorithm type AUTOMATIC and sarcart as the algorithm. Identifiers (patient, study, frame of
reference) come from the source images, as highdicom requires. Research software, not for clinical use.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from sarcart.errors import InvalidImageError
from sarcart.io.atomic import atomic_write
from sarcart.io.dicom_series import DicomSeries
from sarcart.io.dicom_write import make_uid
from sarcart.io.geometry import Volume

log = logging.getLogger(__name__)


def write_habitat_seg(labels: Volume, series: DicomSeries, path: str | os.PathLike[str], *,
                      n_habitats: int | None = None, uid_seed: str | None = None) -> Path:
    """Write habitats (uint labels, 0 = background) on ``series``' grid as a DICOM SEG file.

    Args:
        labels: (nx, ny, nz) integer label map on the series' voxel grid.
        series: the source MR series (its files are read for the references, without pixel data).
        path: output file.
        n_habitats: number of segments to describe (default: the largest label).
        uid_seed: makes the SEG's UIDs deterministic (tests); random UIDs otherwise.

    Raises:
        GeometryMismatchError: the labels are not on the series' grid.
        InvalidImageError: no labelled voxel.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    import sarcart

    series.volume.geometry.require_same(labels.geometry, what="habitat label map")
    arr = np.asarray(labels.array).astype(np.uint8)
    n = int(n_habitats or arr.max())
    if n < 1 or not arr.any():
        raise InvalidImageError("the habitat label map is empty; nothing to write")
    sources = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in series.files]
    frames = np.ascontiguousarray(arr.transpose(2, 1, 0))  # [k, row=j, col=i], one frame per source slice
    algorithm = hd.AlgorithmIdentificationSequence(name="sarcart habitats", version=sarcart.__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=h, segment_label=f"habitat {h}", segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Neoplasm, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, tracking_uid=hd.UID(), tracking_id=f"habitat-{h}")
        for h in range(1, n + 1)
    ]
    uid = (lambda *p: make_uid(uid_seed, *p)) if uid_seed else (lambda *p: hd.UID())
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=uid("seg-series"), series_number=901,
        sop_instance_uid=uid("seg-instance"), instance_number=1, manufacturer="sarcart",
        manufacturer_model_name="sarcart radiomics habitats", software_versions=sarcart.__version__,
        device_serial_number="0", content_description="tumour habitats (research, not for clinical use)",
        content_label="HABITATS", omit_empty_frames=True)
    out = atomic_write(path, seg.save_as)
    log.info("wrote DICOM SEG with %d habitats to %s", n, out)
    return out


def read_habitat_seg(path: str | os.PathLike[str], series: DicomSeries) -> Volume:
    """Read a habitat SEG back into a label map on ``series``' grid (for checks)."""
    import highdicom as hd

    seg = hd.seg.segread(str(path))
    geo = series.volume.geometry
    out = np.zeros(geo.shape, dtype=np.uint8)
    uids = list(series.sop_instance_uids)
    for number in seg.segment_numbers:
        arr = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[number],
                                                assert_missing_frames_are_empty=True)
        mask = arr[..., 0].transpose(2, 1, 0) > 0  # (frames, rows, cols) -> [i, j, k]
        out[mask] = number
    return Volume(out, geo)
