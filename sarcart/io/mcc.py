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
from dataclasses import dataclass, field, replace
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

    def field_centre_mm(self, *, level: float = 0.5) -> float:
        """Field centre of a profile from its ``level`` (default 50 %) points; see :func:`field_centre_mm`."""
        if not self.is_profile:
            raise InvalidImageError(f"field_centre_mm needs a profile scan, got {self.curve_type}; use an inplane, "
                                    "crossplane or diagonal profile")
        return field_centre_mm(self.position_mm, self.value, level=level)

    def centred(self, *, level: float = 0.5) -> MccScan:
        """A copy shifted so that its ``level``-point centre is at 0 mm (readings unchanged).

        Water-tank data processing (centring on the central axis, AAPM TG-106: Das et al. 2008,
        doi 10.1118/1.2969070) using the measurement only. The shift is recorded in
        ``header["SARCART_CENTRE_SHIFT_MM"]`` (the centre found, in the original positions).
        """
        c = self.field_centre_mm(level=level)
        return replace(self, position_mm=self.position_mm - c,
                       header={**self.header, "SARCART_CENTRE_SHIFT_MM": f"{c:.6f}"})


def _crossings(x: np.ndarray, y: np.ndarray, lvl: float, centre: float) -> tuple[float, float]:
    """First positions left and right of ``centre`` where ``y`` falls below ``lvl`` (linear interpolation)."""
    i0 = int(np.searchsorted(x, centre))
    left = next((i for i in range(i0 - 1, 0, -1) if y[i - 1] < lvl <= y[i]), None)
    right = next((i for i in range(max(i0, 0), len(x) - 1) if y[i] >= lvl > y[i + 1]), None)
    if left is None or right is None:
        raise InvalidImageError(f"the profile does not fall below {lvl:.4g} on both sides of {centre:.2f} mm; "
                                "scan beyond both field edges to find the field centre")
    xl = x[left - 1] + (lvl - y[left - 1]) * (x[left] - x[left - 1]) / (y[left] - y[left - 1])
    xr = x[right] + (lvl - y[right]) * (x[right + 1] - x[right]) / (y[right + 1] - y[right])
    return float(xl), float(xr)


def field_centre_mm(position_mm: np.ndarray, value: np.ndarray, *, level: float = 0.5,
                    tol_mm: float = 1e-4, max_iter: int = 50) -> float:
    """Field centre of a measured profile: the midpoint of its two ``level`` points (AAPM TG-106).

    The level is relative to the reading at the centre (central-axis normalisation), so the centre is
    found by fixed-point iteration: start at 0 mm, take ``level`` x the reading interpolated at the
    current centre, find the first crossing on each side (linear interpolation between samples), move
    to their midpoint; stop when the move is below ``tol_mm``. Centring of profiles on the central axis
    is part of water-tank data processing (Das et al. 2008, doi 10.1118/1.2969070).

    Args:
        position_mm: ``(n,)`` increasing off-axis positions (mm).
        value: ``(n,)`` readings (any positive unit).
        level: fraction of the central reading that defines the field edge (0 < level < 1).

    Returns:
        The centre (mm) in the frame of ``position_mm``.

    Raises:
        InvalidImageError: fewer than 3 samples, positions not increasing, level outside (0, 1), the
            profile not crossing the level on both sides, or no convergence.
    """
    x, y = np.asarray(position_mm, dtype=float), np.asarray(value, dtype=float)
    if x.ndim != 1 or x.shape != y.shape or x.size < 3 or np.any(np.diff(x) <= 0):
        raise InvalidImageError(f"position_mm must be 1-D, strictly increasing and as long as value (>= 3 samples), "
                                f"got shapes {x.shape} / {y.shape}; sort the scan first")
    if not 0.0 < level < 1.0:
        raise InvalidImageError(f"level must be in (0, 1), got {level}; use 0.5 for the 50 % points")
    centre = 0.0
    for _ in range(max_iter):
        xl, xr = _crossings(x, y, level * float(np.interp(centre, x, y)), centre)
        new = 0.5 * (xl + xr)
        if abs(new - centre) < tol_mm:
            return new
        centre = new
    raise InvalidImageError(f"the field centre did not converge in {max_iter} iterations (last {centre:.3f} mm); "
                            "check that the profile has one field")


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
