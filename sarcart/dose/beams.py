"""Beam geometry (IEC 61217 gantry angles in DICOM LPS) and radiological depth by ray tracing.

Coordinates of a beam (HFS patient, couch 0, collimator 0):

* source at ``iso + SAD * (sin g, -cos g, 0)`` (gantry 0: anterior, gantry 90: patient's left);
* ``w = (-sin g, cos g, 0)``: central-axis direction, source -> isocentre;
* ``u = (cos g, sin g, 0)``: IEC beam X (leaf travel); ``v = (0, 0, 1)``: IEC beam Y (across leaves,
  towards the patient's head).

A point ``p`` has ``z = (p - source) . w`` (distance from the source along the axis) and
isocentre-plane coordinates ``u_iso = (p - iso) . u * SAD / z`` and ``v_iso`` likewise.

Radiological depth (water-equivalent path length from the source) is integrated along divergent
rays on a beam's-eye-view grid (``sum rho * ds``, Siddon-like sampling at ``step_mm``) and read
back at the points by trilinear interpolation (the BEV ray-casting used by GPU superposition
engines, e.g. Jacques et al., Comput Methods Programs Biomed 2011; DOI not verified).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sarcart.io.geometry import Geometry


@dataclass(frozen=True)
class Beam:
    """One static beam: gantry angle (degrees, IEC 61217), isocentre (LPS mm), source-axis distance."""

    gantry_deg: float
    isocenter_mm: tuple[float, float, float]
    sad_mm: float = 900.0

    def frame(self) -> np.ndarray:
        """``(3, 3)`` float64 rows ``u, v, w`` (LPS unit vectors)."""
        g = math.radians(self.gantry_deg)
        return np.array([[math.cos(g), math.sin(g), 0.0], [0.0, 0.0, 1.0], [-math.sin(g), math.cos(g), 0.0]])

    @property
    def source_mm(self) -> np.ndarray:
        return np.asarray(self.isocenter_mm, dtype=float) - self.sad_mm * self.frame()[2]


def beam_coordinates(points_mm: torch.Tensor, beam: Beam) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(u_iso, v_iso, z)`` of LPS points ``(N, 3)`` (mm; tensors on the points' device/dtype)."""
    frame = torch.as_tensor(beam.frame(), dtype=points_mm.dtype, device=points_mm.device)
    iso = torch.as_tensor(beam.isocenter_mm, dtype=points_mm.dtype, device=points_mm.device)
    rel = points_mm - iso
    z = rel @ frame[2] + beam.sad_mm
    scale = beam.sad_mm / z.clamp_min(1.0)
    return (rel @ frame[0]) * scale, (rel @ frame[1]) * scale, z


def _volume_tensor(density: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(nx, ny, nz)`` -> ``(1, 1, nz, ny, nx)`` for ``grid_sample`` (x = i, y = j, z = k)."""
    return torch.as_tensor(np.ascontiguousarray(density.transpose(2, 1, 0)), dtype=dtype, device=device)[None, None]


def _normalise_index(idx: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Continuous (i, j, k) -> grid_sample coordinates in [-1, 1] (align_corners=True)."""
    size = torch.as_tensor([max(s - 1, 1) for s in shape], dtype=idx.dtype, device=idx.device)
    return 2.0 * idx / size - 1.0


def sample_volume(volume: torch.Tensor, geometry: Geometry, points_mm: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of a ``(1, 1, nz, ny, nx)`` tensor at LPS points ``(..., 3)`` (zero outside)."""
    inv = torch.as_tensor(np.linalg.inv(geometry.affine[:3, :3]), dtype=points_mm.dtype, device=points_mm.device)
    origin = torch.as_tensor(geometry.origin_mm, dtype=points_mm.dtype, device=points_mm.device)
    idx = (points_mm - origin) @ inv.T
    grid = _normalise_index(idx, geometry.shape).reshape(1, 1, 1, -1, 3).to(volume.dtype)
    out = F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.reshape(points_mm.shape[:-1]).to(points_mm.dtype)


def radiological_depth(density: np.ndarray, geometry: Geometry, beam: Beam, points_mm: torch.Tensor, *,
                       step_mm: float = 2.0, lateral_mm: float = 2.0) -> torch.Tensor:
    """Water-equivalent depth (mm) from the source to each point along its divergent ray.

    Args:
        density: ``(nx, ny, nz)`` relative electron density on ``geometry`` (0 outside the body).
        geometry: the voxel grid.
        beam: the beam.
        points_mm: ``(N, 3)`` LPS points (float tensor; its device is used).
        step_mm: sampling step along the rays (on the central axis).
        lateral_mm: spacing of the rays at the isocentre plane.

    Returns:
        ``(N,)`` tensor, same dtype/device as ``points_mm``.
    """
    dev, dt = points_mm.device, points_mm.dtype
    u, v, z = beam_coordinates(points_mm, beam)
    corners = torch.as_tensor(geometry.index_to_world(np.array(np.meshgrid(*[[0, s - 1] for s in geometry.shape],
                                                                          indexing="ij")).reshape(3, -1).T),
                              dtype=dt, device=dev)
    z0 = max(float(beam_coordinates(corners, beam)[2].min()) - step_mm, 1.0)
    z1 = float(z.max()) + step_mm
    ug = torch.arange(float(u.min()) - lateral_mm, float(u.max()) + 2 * lateral_mm, lateral_mm, dtype=dt, device=dev)
    vg = torch.arange(float(v.min()) - lateral_mm, float(v.max()) + 2 * lateral_mm, lateral_mm, dtype=dt, device=dev)
    zg = torch.arange(z0, z1 + step_mm, step_mm, dtype=dt, device=dev)
    frame = torch.as_tensor(beam.frame(), dtype=dt, device=dev)
    src = torch.as_tensor(beam.source_mm, dtype=dt, device=dev)
    vol = _volume_tensor(density, dev, torch.float32)
    cum = torch.empty((len(zg), len(vg), len(ug)), dtype=dt, device=dev)
    vv, uu = torch.meshgrid(vg, ug, indexing="ij")
    direction = beam.sad_mm * frame[2] + uu[..., None] * frame[0] + vv[..., None] * frame[1]  # (V, U, 3)
    path = torch.linalg.norm(direction, dim=-1) / beam.sad_mm  # ds/dz
    running = torch.zeros_like(path)
    prev = torch.zeros_like(path)
    for k, zk in enumerate(zg):  # chunked by plane to bound memory
        rho = sample_volume(vol, geometry, src + (zk / beam.sad_mm) * direction)
        if k:
            running = running + 0.5 * (rho + prev) * step_mm * path
        prev = rho
        cum[k] = running
    # trilinear lookup of (u, v, z) in the BEV grid
    grid = torch.stack([(u - ug[0]) / (ug[-1] - ug[0]), (v - vg[0]) / (vg[-1] - vg[0]),
                        (z - zg[0]) / (zg[-1] - zg[0])], dim=-1) * 2.0 - 1.0
    out = F.grid_sample(cum[None, None].float(), grid.reshape(1, 1, 1, -1, 3).float(), mode="bilinear",
                        padding_mode="border", align_corners=True)
    return out.reshape(-1).to(dt)
