"""Read PTW ``.mcc`` water-tank scan files (the MEPHYSTO / BeamScan "CC-Export" text format).

An ``.mcc`` file holds one or more scans between ``BEGIN_SCAN n`` and ``END_SCAN n``; each scan has
``KEY=VALUE`` header lines and a ``BEGIN_DATA`` ... ``END_DATA`` block whose rows are
``position_mm  reading  [reference reading]``. Only the keys that beam commissioning needs are
interpreted (:class:`MccScan` fields); every header key stays available in ``MccScan.header``.

Units as written by the format: positions, SSD, depths and field sizes in millimetres, energy in MV
(photons) or MeV (electrons); readings in arbitrary units (relative dose).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sarcart.errors import InvalidImageError

_BEGIN = re.compile(r"^BEGIN_SCAN\s+(\d+)$")
_END = re.compile(r"^END_SCAN\s+(\d+)$")

#: curve types of the format; profiles scan off-axis at a fixed depth, PDDs along the depth axis
CURVE_TYPES = ("PDD", "INPLANE_PROFILE", "CROSSPLANE_PROFILE", "DIAGONAL_PROFILE", "STAR_PROFILE")


@dataclass(frozen=True)
class MccScan:
    """One measured curve.

    Attributes:
        curve_type: ``PDD``, ``INPLANE_PROFILE``, ``CROSSPLANE_PROFILE``...
        position_mm: ``(n,)`` float64 scan positions (depth for a PDD, off-axis distance for a profile).
        value: ``(n,)`` float64 detector readings (relative dose, arbitrary units).
        energy: nominal energy (MV for photons).
        ssd_mm: source-surface distance.
        depth_mm: measurement depth of a profile (``nan`` for a PDD).
        field_inplane_mm / field_crossplane_mm: nominal field size at ``isocenter_mm`` from the source.
        isocenter_mm: source-isocentre distance stated by the file.
        filter: ``FF`` (flattened) or ``FFF`` (flattening-filter free).
        header: every ``KEY=VALUE`` of the scan, as strings.
    """

    curve_type: str
    position_mm: np.ndarray
    value: np.ndarray
    energy: float
    ssd_mm: float
    depth_mm: float
    field_inplane_mm: float
    field_crossplane_mm: float
    isocenter_mm: float
    filter: str
    modality: str
    header: dict[str, str] = field(default_factory=dict)

    @property
    def is_profile(self) -> bool:
        return self.curve_type.endswith("PROFILE")

    def normalised(self, *, at_mm: float | None = None) -> np.ndarray:
        """Readings in percent of the maximum (``at_mm=None``) or of the value interpolated at ``at_mm``."""
        ref = float(np.max(self.value)) if at_mm is None else float(np.interp(at_mm, self.position_mm, self.value))
        if ref <= 0:
            raise InvalidImageError(f"cannot normalise a scan whose reference reading is {ref}")
        return 100.0 * self.value / ref


def _float(header: dict[str, str], key: str, default: float = float("nan")) -> float:
    raw = header.get(key, "").strip()
    try:
        return float(raw) if raw else default
    except ValueError:
        return default


def _make_scan(header: dict[str, str], rows: list[list[float]], where: str) -> MccScan:
    if not rows:
        raise InvalidImageError(f"{where}: a scan has no data between BEGIN_DATA and END_DATA")
    data = np.asarray([r[:2] for r in rows], dtype=float)
    order = np.argsort(data[:, 0], kind="stable")
    curve = header.get("SCAN_CURVETYPE", "").strip()
    if curve not in CURVE_TYPES:
        raise InvalidImageError(f"{where}: unknown SCAN_CURVETYPE {curve!r}; expected one of {', '.join(CURVE_TYPES)}")
    return MccScan(
        curve_type=curve,
        position_mm=data[order, 0],
        value=data[order, 1],
        energy=_float(header, "ENERGY"),
        ssd_mm=_float(header, "SSD"),
        depth_mm=_float(header, "SCAN_DEPTH"),
        field_inplane_mm=_float(header, "FIELD_INPLANE"),
        field_crossplane_mm=_float(header, "FIELD_CROSSPLANE"),
        isocenter_mm=_float(header, "ISOCENTER", 1000.0),
        filter=header.get("FILTER", "").strip(),
        modality=header.get("MODALITY", "").strip(),
        header=dict(header),
    )


def read_mcc(path: str | os.PathLike[str]) -> list[MccScan]:
    """Read every scan of a PTW ``.mcc`` file.

    Args:
        path: the ``.mcc`` file.

    Returns:
        The scans in file order.

    Raises:
        InvalidImageError: missing file, no ``BEGIN_SCAN_DATA``, unbalanced scan blocks, rows that are
            not numbers, unknown curve types.
    """
    p = Path(path)
    if not p.is_file():
        raise InvalidImageError(f"mcc file not found: {p}; check the path")
    lines = [ln.strip() for ln in p.read_text(errors="replace").splitlines()]
    if not lines or lines[0] != "BEGIN_SCAN_DATA":
        raise InvalidImageError(f"{p} is not a PTW mcc file (first line must be BEGIN_SCAN_DATA)")
    scans: list[MccScan] = []
    header: dict[str, str] | None = None
    rows: list[list[float]] = []
    in_data = False
    for n, line in enumerate(lines, start=1):
        if _BEGIN.match(line):
            header, rows, in_data = {}, [], False
        elif _END.match(line):
            if header is None:
                raise InvalidImageError(f"{p}:{n}: END_SCAN without BEGIN_SCAN")
            scans.append(_make_scan(header, rows, f"{p}:{n}"))
            header = None
        elif line == "BEGIN_DATA":
            in_data = True
        elif line == "END_DATA":
            in_data = False
        elif in_data and header is not None:
            try:
                rows.append([float(v) for v in line.split()])
            except ValueError as exc:
                raise InvalidImageError(f"{p}:{n}: data row is not numbers: {line!r}") from exc
        elif header is not None and "=" in line:
            key, _, value = line.partition("=")
            header[key.strip()] = value.strip()
    if header is not None:
        raise InvalidImageError(f"{p}: the last scan has no END_SCAN; the file is truncated")
    if not scans:
        raise InvalidImageError(f"{p} holds no scans")
    return scans
