"""Label maps with a JSON sidecar: exclusive integer labels plus structures defined as unions.

``labels.nii.gz`` holds one integer per voxel (mutually exclusive tissue classes); ``labels.json``
names the values and defines each structure as the set of values it contains, so overlapping
structures (GTV contains NECROSIS, BOWEL contains its GAS, BODY contains everything) come out of
one file::

    {"values": {"1": "MUSCLE", "8": "GAS", ...},
     "structures": {"BODY": [1, 2, ...], "BOWEL": [6, 7, 8], "GAS": [8], ...}}
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sarcart.errors import InvalidImageError
from sarcart.io.geometry import Volume
from sarcart.io.nifti import read_nifti, write_nifti


@dataclass(frozen=True)
class LabelSpec:
    """Names of the label values and the structures built from them."""

    values: dict[int, str]
    structures: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        known = set(self.values)
        for name, vals in self.structures.items():
            unknown = set(vals) - known
            if unknown:
                raise InvalidImageError(f"structure {name!r} uses label values {sorted(unknown)} that are not named")

    def to_json(self) -> str:
        return json.dumps(
            {"values": {str(k): v for k, v in sorted(self.values.items())},
             "structures": {k: list(v) for k, v in self.structures.items()}},
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> "LabelSpec":
        raw = json.loads(text)
        if not isinstance(raw, dict) or "values" not in raw:
            raise InvalidImageError("labels.json must hold an object with 'values' (and optionally 'structures')")
        return cls(
            values={int(k): str(v) for k, v in raw["values"].items()},
            structures={str(k): tuple(int(x) for x in v) for k, v in raw.get("structures", {}).items()},
        )


def structure_mask(labels: Volume, spec: LabelSpec, name: str) -> Volume:
    """Boolean mask of one structure (the union of its label values)."""
    if name not in spec.structures:
        raise InvalidImageError(f"structure {name!r} not defined; defined: {', '.join(spec.structures)}")
    return labels.with_array(np.isin(labels.array, spec.structures[name]))


def labels_to_masks(labels: Volume, spec: LabelSpec, names: list[str] | None = None) -> dict[str, Volume]:
    """Masks of the named structures (all defined structures by default)."""
    return {n: structure_mask(labels, spec, n) for n in (names or list(spec.structures))}


def write_labels(labels: Volume, spec: LabelSpec, path: str | os.PathLike[str]) -> Path:
    """Write ``labels.nii.gz`` (uint8/uint16) and its ``labels.json`` sidecar next to it."""
    arr = labels.array
    if arr.ndim != 3 or not np.issubdtype(arr.dtype, np.integer):
        raise InvalidImageError(f"a label map must be a 3D integer array, got {arr.dtype} {arr.shape}")
    unnamed = set(np.unique(arr).tolist()) - set(spec.values) - {0}
    if unnamed:
        raise InvalidImageError(f"label values {sorted(unnamed)} occur in the map but are not named in the spec")
    dtype = np.uint8 if arr.max() < 256 else np.uint16
    p = write_nifti(labels.with_array(arr.astype(dtype)), path)
    sidecar = p.with_name(p.name.split(".nii")[0] + ".json")
    sidecar.write_text(spec.to_json())
    return p


def read_labels(path: str | os.PathLike[str]) -> tuple[Volume, LabelSpec]:
    """Read ``labels.nii.gz`` and its ``labels.json`` sidecar."""
    p = Path(path)
    sidecar = p.with_name(p.name.split(".nii")[0] + ".json")
    if not sidecar.is_file():
        raise InvalidImageError(f"{sidecar} not found: a label map needs its JSON sidecar naming the values")
    vol = read_nifti(p)
    return vol.with_array(vol.array.astype(np.int32)), LabelSpec.from_json(sidecar.read_text())
