"""Relative electron density (RED) for dose calculation on MR: bulk values per structure, or from CT.

MR has no Hounsfield units. Following bulk-density MR-only planning, each structure gets one
relative electron density from a configurable table (later entries of the table override earlier
ones where structures overlap: BODY < LUNG < BONE < GAS by default). Gas inside the body that was
not contoured is found as low signal (TRUFI shows gas black), excluding bone, which is also dark.
A CT or synthetic CT on the same grid replaces all of this through a HU -> RED curve.

Default values are typical bulk assignments (soft tissue 1.0, cortical/mixed bone 1.5, lung
0.25, gas 0.001); they are **not** sourced measurements (see docs/dose.md) - override them per site.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage

from sarcart.errors import InvalidImageError
from sarcart.io.geometry import Volume

log = logging.getLogger(__name__)


class DensityTable(BaseModel):
    """Bulk relative electron density per structure (order = override order) and gas detection settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    values: dict[str, float] = Field(
        default_factory=lambda: {"BODY": 1.0, "LUNG": 0.25, "BONE": 1.5, "GAS": 0.001},
        description="structure -> RED; BODY must be present",
    )
    outside_body: float = Field(0.0, ge=0, description="RED outside the BODY contour (air)")
    gas_threshold_fraction: float = Field(0.2, gt=0, lt=1, description="gas = intensity < fraction x median in BODY")
    gas_min_cc: float = Field(0.05, ge=0, description="drop detected gas pockets smaller than this")
    ct_curve: tuple[tuple[float, float], ...] = Field(
        default=((-1000.0, 0.0), (0.0, 1.0), (1000.0, 1.55), (3000.0, 2.6)),
        description="(HU, RED) points of a piecewise-linear calibration curve",
    )


def gas_mask_from_intensity(image: Volume, body: Volume, *, exclude: Volume | None = None,
                            table: DensityTable | None = None) -> Volume:
    """Gas pockets inside the body as low-intensity voxels.

    Args:
        image: the MR image (any scalar dtype).
        body: BODY mask on the same grid; it is eroded by one voxel so that the dark air outside and the
            skin's partial-volume voxels are not taken for gas.
        exclude: voxels never called gas (bone: cortical bone is dark on MR too).
        table: threshold settings.

    Returns:
        Boolean volume.
    """
    t = table or DensityTable()
    image.geometry.require_same(body.geometry, what="BODY mask")
    inner = ndimage.binary_erosion(body.array.astype(bool), iterations=1)
    if not inner.any():
        raise InvalidImageError("BODY mask is empty after a one-voxel erosion; check the BODY structure")
    med = float(np.median(image.array[inner]))
    gas = inner & (image.array < t.gas_threshold_fraction * med)
    if exclude is not None:
        image.geometry.require_same(exclude.geometry, what="exclusion mask")
        gas &= ~exclude.array.astype(bool)
    labels, n = ndimage.label(gas)
    if n:
        sizes = ndimage.sum(gas, labels, index=np.arange(1, n + 1)) * image.geometry.voxel_volume_cc
        keep = np.concatenate([[False], sizes >= t.gas_min_cc])
        gas = keep[labels]
    log.info("gas from intensity: %.1f cc below %.2f x median", gas.sum() * image.geometry.voxel_volume_cc,
             t.gas_threshold_fraction)
    return image.with_array(gas)


def density_from_structures(masks: Mapping[str, Volume], *, table: DensityTable | None = None,
                            image: Volume | None = None) -> Volume:
    """Bulk relative electron density from structure masks.

    Args:
        masks: boolean volumes keyed by canonical name; ``BODY`` is required.
        table: the RED per structure; structures absent from ``masks`` are skipped.
        image: the MR image; when given and no ``GAS`` mask is supplied, gas is detected from low
            intensity inside the body (bone excluded).

    Returns:
        float32 volume of RED on the masks' grid.
    """
    t = table or DensityTable()
    if "BODY" not in masks:
        raise InvalidImageError(f"density needs a BODY mask; got {sorted(masks)}. Contour the external outline")
    geom = masks["BODY"].geometry
    red = np.full(geom.shape, t.outside_body, dtype=np.float32)
    structures = dict(masks)
    if "GAS" not in structures and image is not None:
        structures["GAS"] = gas_mask_from_intensity(image, masks["BODY"], exclude=masks.get("BONE"), table=t)
    body = masks["BODY"].array.astype(bool)
    for name, value in t.values.items():
        if name not in structures:
            continue
        geom.require_same(structures[name].geometry, what=f"mask {name!r}")
        sel = structures[name].array.astype(bool) & (body if name != "BODY" else True)
        red[sel] = value
    return Volume(red, geom)


def density_from_ct(ct: Volume, *, table: DensityTable | None = None) -> Volume:
    """Relative electron density from a CT (or synthetic CT) in HU via the table's piecewise-linear curve."""
    t = table or DensityTable()
    hu, rho = np.asarray(t.ct_curve, dtype=float).T
    if np.any(np.diff(hu) <= 0):
        raise InvalidImageError(f"ct_curve HU values must increase, got {hu.tolist()}")
    return ct.with_array(np.interp(ct.array.astype(float), hu, rho).astype(np.float32))
