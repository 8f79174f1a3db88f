"""Pencil-beam dose engine in PyTorch: matrix-free and sparse-influence modes, differentiable in the weights.

For one beam, a point at isocentre-plane position ``(u, v)`` and radiological depth ``d`` receives::

    D = pref(d, z, t) * [(1 - ws(d) - wt) * P(u, v; sigma_p(d)) + ws(d) * P(u, v; sigma_s(d)) + wt * P(u, v; sigma_t)]
    P(u, v; s) = sum_rc W[r, c] * Ev_r(v; s) * Eu_c(u; s)

with ``Eu_c`` / ``Ev_r`` the beamlet's opening convolved with a 1D Gaussian (an erf difference) and
``pref`` the depth, inverse-square, off-axis and calibration factors (:mod:`sarcart.dose.machine`).
Because the kernel is separable, ``P`` for a whole fluence map is ``Ev @ W @ Eu^T`` on a fine
isocentre-plane grid, computed at a few depth nodes and interpolated (linearly in depth, bilinearly
in-plane) at the points: that is the *matrix-free* mode (memory ~ points, exact up to the <= 1 mm
in-plane sampling). The *sparse* mode stores the narrow primary term exactly as a CSR matrix
(points x beamlets); the broad scatter term, which would make the matrix dense, and the optional
intermediate "tail" term (``wt = tail_share > 0``, one depth-independent width ``sigma_t``, maps on the
primary's grid) go through the same separable maps in both modes. Everything is linear in ``W`` and
differentiable with autograd, including with respect to leaf positions in :meth:`DoseEngine.aperture_dose`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F

from sarcart.dose.beams import Beam, beam_coordinates, radiological_depth
from sarcart.dose.machine import BeamModel, MachineConfig
from sarcart.errors import InvalidImageError
from sarcart.io.geometry import Volume

if TYPE_CHECKING:
    from sarcart.dose.influence import SparseInfluence

log = logging.getLogger(__name__)

_SQRT2 = math.sqrt(2.0)
DEPTH_NODES_MM = (0.0, 50.0, 100.0, 150.0, 200.0, 300.0, 450.0)  # primary kernel width nodes
SCATTER_NODES_MM = (0.0, 100.0, 250.0, 450.0)  # the broad kernel changes slowly with depth
#: primary map step / surface primary width: the bilinear error at an erf edge is ~ h^2 * 0.242 / (8 sigma^2)
PRIMARY_STEP_PER_SIGMA = 0.65
_KERNEL_FLOOR = 1e-5  # primary edge factors below this are zero in the sparse matrix
Profiles = Callable[..., torch.Tensor]  # (ug, sigma, cache key) -> (B, R, Gu) row profiles
Term = Literal["primary", "scatter", "tail"]  # the lateral kernel terms (see sarcart.dose.machine)


@dataclass(frozen=True)
class BixelGrid:
    """Beamlets of one beam: columns along leaf travel (u), effective MLC rows (v), isocentre plane (mm)."""

    u_edges: tuple[float, ...]
    v_edges: tuple[float, ...]
    row_offset: int = 0  # index of the first row among the machine's rows

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_rows, n_cols)``."""
        return len(self.v_edges) - 1, len(self.u_edges) - 1

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]


def bixel_grid_for_target(target: Volume, beam: Beam, machine: MachineConfig, *, margin_mm: float = 5.0) -> BixelGrid:
    """Beamlets covering the projection of ``target`` (boolean volume) plus ``margin_mm``, on the MLC rows."""
    idx = np.argwhere(target.array)
    if idx.size == 0:
        raise InvalidImageError("the target mask is empty; cannot place beamlets")
    pts = torch.as_tensor(target.geometry.index_to_world(idx), dtype=torch.float64)
    u, v, _ = beam_coordinates(pts, beam)
    half = np.asarray(target.geometry.spacing_mm).max() / 2.0
    bx = machine.bixel_x_mm
    lo = math.floor((float(u.min()) - margin_mm - half) / bx) * bx
    hi = math.ceil((float(u.max()) + margin_mm + half) / bx) * bx
    lo, hi = max(lo, -machine.max_field_x_mm / 2), min(hi, machine.max_field_x_mm / 2)
    rows = machine.row_edges_mm().numpy()
    first = max(int(np.searchsorted(rows, float(v.min()) - margin_mm - half, side="right")) - 1, 0)
    last = min(int(np.searchsorted(rows, float(v.max()) + margin_mm + half, side="left")), len(rows) - 1)
    if float(u.max()) - float(u.min()) > machine.max_field_x_mm or float(v.max()) - float(v.min()) > machine.max_field_y_mm:
        log.warning("target projection exceeds the maximum field at gantry %.0f; beamlets are clipped", beam.gantry_deg)
    u_edges = tuple(float(x) for x in np.arange(lo, hi + bx / 2, bx))
    return BixelGrid(u_edges=u_edges, v_edges=tuple(float(x) for x in rows[first:last + 1]), row_offset=first)


def edge_factors(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``(..., n)`` fraction of a unit Gaussian (width ``sigma``) centred at ``x`` lying in ``[lo_n, hi_n]``.

    ``x`` and ``sigma`` broadcast against a trailing axis of ``lo``/``hi`` (the beamlet or row index).
    """
    s = (sigma * _SQRT2)[..., None]
    xx = x[..., None]
    return 0.5 * (torch.erf((hi - xx) / s) - torch.erf((lo - xx) / s))


@dataclass
class _BeamPoints:
    """Per-beam quantities of the points inside the beam's reach."""

    sel: torch.Tensor  # (M,) long, positions into the engine's points
    u: torch.Tensor
    v: torch.Tensor
    depth: torch.Tensor
    pref: torch.Tensor
    ws: torch.Tensor
    nw: torch.Tensor  # (M, K) depth-node interpolation weights (primary)
    nws: torch.Tensor  # (M, Ks) depth-node interpolation weights (scatter)


def _node_weights(depth: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
    """``(M, K)`` linear interpolation weights of each depth between the depth nodes."""
    d = depth.clamp(float(nodes[0]), float(nodes[-1]))
    k = torch.searchsorted(nodes, d, right=True).clamp(1, len(nodes) - 1)
    lo, hi = nodes[k - 1], nodes[k]
    a = (d - lo) / (hi - lo)
    w = torch.zeros((len(d), len(nodes)), dtype=depth.dtype, device=depth.device)
    w.scatter_(1, (k - 1)[:, None], (1 - a)[:, None])
    w.scatter_add_(1, k[:, None], a[:, None])
    return w


class DoseEngine:
    """Dose at a fixed set of voxels of a density grid from beamlet weights (MU) of several beams.

    Args:
        density: relative electron density volume (0 outside the body).
        points: ``(N,)`` flat (C-order) indices of the voxels where dose is computed.
        beams: the beams.
        grids: one :class:`BixelGrid` per beam.
        model: the beam model (its ``sad_mm`` must match the beams').
        device / dtype: where and in which precision to compute (CPU float32 by default).
        primary_step_mm / scatter_step_mm: in-plane sampling of the matrix-free maps (the primary's also
            serves the tail term); default primary step ``min(1 mm, 0.65 sigma_p0)``, which keeps the
            bilinear-interpolation error at a beamlet or leaf edge below about 1.3 % of the edge's step.
    """

    def __init__(self, density: Volume, points: torch.Tensor | np.ndarray, beams: list[Beam], grids: list[BixelGrid],
                 model: BeamModel, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 primary_step_mm: float | None = None, scatter_step_mm: float = 5.0,
                 raytrace_step_mm: float | None = None) -> None:
        if len(beams) != len(grids) or not beams:
            raise InvalidImageError(f"need one bixel grid per beam, got {len(beams)} beams and {len(grids)} grids")
        for b in beams:
            if abs(b.sad_mm - model.sad_mm) > 1e-6:
                raise InvalidImageError(f"beam SAD {b.sad_mm} mm differs from the beam model's {model.sad_mm} mm")
        self.density, self.beams, self.grids, self.model = density, beams, grids, model
        self.device, self.dtype = torch.device(device), dtype
        self.points = torch.as_tensor(np.asarray(points), dtype=torch.long, device=self.device).reshape(-1)
        self.offsets = np.concatenate([[0], np.cumsum([g.size for g in grids])]).astype(int)
        self.primary_step_mm = primary_step_mm or min(1.0, PRIMARY_STEP_PER_SIGMA * model.sigma_p0_mm)
        self.scatter_step_mm = scatter_step_mm
        self.raytrace_step_mm = raytrace_step_mm or min(density.geometry.spacing_mm)
        self.nodes = torch.as_tensor(DEPTH_NODES_MM, dtype=dtype, device=self.device)
        self.scatter_nodes = torch.as_tensor(SCATTER_NODES_MM, dtype=dtype, device=self.device)
        ijk = np.stack(np.unravel_index(self.points.cpu().numpy(), density.geometry.shape), axis=1)
        self.points_mm = torch.as_tensor(density.geometry.index_to_world(ijk), dtype=torch.float64, device=self.device)
        self._cache: dict[int, _BeamPoints] = {}
        self._edges: dict[tuple[int, str], tuple[torch.Tensor, ...]] = {}
        self._eu: dict[tuple, torch.Tensor] = {}

    def subset(self, positions: torch.Tensor) -> DoseEngine:
        """An engine over ``points[positions]`` that reuses this engine's ray tracing (computed if needed)."""
        pos = torch.as_tensor(positions, dtype=torch.long, device=self.device).reshape(-1)
        new = object.__new__(DoseEngine)
        new.__dict__.update(self.__dict__)
        new.points, new.points_mm = self.points[pos], self.points_mm[pos]
        inverse = torch.full((self.n_points,), -1, dtype=torch.long, device=self.device)
        inverse[pos] = torch.arange(len(pos), device=self.device)
        new._cache = {}
        for b in range(len(self.beams)):
            bp = self.beam_points(b)
            where = inverse[bp.sel]
            keep = where >= 0
            new._cache[b] = _BeamPoints(sel=where[keep], u=bp.u[keep], v=bp.v[keep], depth=bp.depth[keep],
                                        pref=bp.pref[keep], ws=bp.ws[keep], nw=bp.nw[keep], nws=bp.nws[keep])
        new._edges, new._eu = {}, {}
        return new

    @property
    def n_points(self) -> int:
        return int(self.points.numel())

    @property
    def n_bixels(self) -> int:
        return int(self.offsets[-1])

    def beam_weights(self, weights: torch.Tensor, b: int) -> torch.Tensor:
        """``(n_rows, n_cols)`` view of beam ``b``'s part of the flat weight vector."""
        return weights[self.offsets[b]:self.offsets[b + 1]].reshape(self.grids[b].shape)

    # ------------------------------------------------------------------ per-beam geometry
    def _reach_mm(self) -> float:
        return 3.0 * float(self.model.sigma_scatter(torch.tensor(200.0))) + 10.0

    def beam_points(self, b: int) -> _BeamPoints:
        """Points within reach of beam ``b`` with their coordinates, depth and prefactors (cached)."""
        if b in self._cache:
            return self._cache[b]
        beam, grid, m = self.beams[b], self.grids[b], self.model
        u, v, z = beam_coordinates(self.points_mm, beam)
        reach = self._reach_mm()
        inside = (u > grid.u_edges[0] - reach) & (u < grid.u_edges[-1] + reach) & \
                 (v > grid.v_edges[0] - reach) & (v < grid.v_edges[-1] + reach)
        sel = torch.nonzero(inside).reshape(-1)
        d = radiological_depth(self.density.array, self.density.geometry, beam, self.points_mm[sel],
                               step_mm=self.raytrace_step_mm, lateral_mm=self.raytrace_step_mm)
        zz, uu, vv = z[sel], u[sel], v[sel]
        tan = torch.sqrt(uu ** 2 + vv ** 2) / beam.sad_mm
        pref = m.norm * (beam.sad_mm / zz) ** 2 * m.depth_term(d) * m.off_axis(tan)
        dd = d.to(self.dtype)
        bp = _BeamPoints(sel=sel, u=uu.to(self.dtype), v=vv.to(self.dtype), depth=dd, pref=pref.to(self.dtype),
                         ws=m.scatter_share(d).to(self.dtype), nw=_node_weights(dd, self.nodes),
                         nws=_node_weights(dd, self.scatter_nodes))
        self._cache[b] = bp
        return bp

    # ------------------------------------------------------------------ separable maps (matrix-free)
    def _map_grid(self, b: int, step: float, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.grids[b]
        ug = torch.arange(g.u_edges[0] - margin, g.u_edges[-1] + margin + step, step, dtype=self.dtype, device=self.device)
        vg = torch.arange(g.v_edges[0] - margin, g.v_edges[-1] + margin + step, step, dtype=self.dtype, device=self.device)
        return ug, vg

    def _sample_maps(self, maps: torch.Tensor, ug: torch.Tensor, vg: torch.Tensor, nw: torch.Tensor,
                     bp: _BeamPoints) -> torch.Tensor:
        """Bilinear samples of ``(B, K, Gv, Gu)`` node maps at the points, combined over depth nodes -> ``(B, M)``."""
        b, k = maps.shape[:2]
        gx = 2.0 * (bp.u - ug[0]) / (ug[-1] - ug[0]) - 1.0
        gy = 2.0 * (bp.v - vg[0]) / (vg[-1] - vg[0]) - 1.0
        grid = torch.stack([gx, gy], dim=-1).reshape(1, 1, -1, 2)
        vals = F.grid_sample(maps.reshape(1, b * k, *maps.shape[2:]), grid, mode="bilinear", padding_mode="zeros",
                             align_corners=True)[0, :, 0].reshape(b, k, -1)
        return torch.einsum("bkm,mk->bm", vals, nw)

    def node_weights(self, b: int, kind: Term) -> torch.Tensor:
        """``(M, K)`` depth-node weights of beam ``b``'s points for one term (tail: a column of ones)."""
        bp = self.beam_points(b)
        if kind == "tail":
            return torch.ones((len(bp.sel), 1), dtype=self.dtype, device=self.device)
        return bp.nws if kind == "scatter" else bp.nw

    def term_shares(self, b: int) -> dict[Term, torch.Tensor | float]:
        """Share of each lateral term at beam ``b``'s points: primary ``1 - ws - wt``, scatter ``ws``, tail ``wt``."""
        bp, wt = self.beam_points(b), self.model.tail_share
        shares: dict[Term, torch.Tensor | float] = {"primary": 1.0 - bp.ws - wt, "scatter": bp.ws}
        if wt > 0.0:
            shares["tail"] = wt
        return shares

    def _edges_for(self, b: int, kind: Term) -> tuple[torch.Tensor, ...]:
        """Cached ``(sigmas (K,), ug, vg, Ev (K, Gv, R))`` of the map grid of beam ``b`` for one term."""
        key = (b, kind)
        if key not in self._edges:
            g = self.grids[b]
            sig = {"primary": lambda: self.model.sigma_primary(self.nodes),  # (K,) widths at the depth nodes
                   "scatter": lambda: self.model.sigma_scatter(self.scatter_nodes),  # the tail: 1 node
                   "tail": lambda: torch.full((1,), self.model.sigma_tail_mm, dtype=self.dtype, device=self.device)}[kind]()
            step = self.scatter_step_mm if kind == "scatter" else self.primary_step_mm
            ug, vg = self._map_grid(b, step, 4.0 * float(sig.max()) + step)
            v_lo = torch.as_tensor(g.v_edges[:-1], dtype=self.dtype, device=self.device)
            v_hi = torch.as_tensor(g.v_edges[1:], dtype=self.dtype, device=self.device)
            ev = torch.stack([edge_factors(vg, v_lo, v_hi, s.expand_as(vg)) for s in sig])
            self._edges[key] = (sig, ug, vg, ev)
        return self._edges[key]

    def _component(self, row_profiles: Profiles, b: int, kind: Term) -> torch.Tensor:
        """One lateral term at beam ``b``'s points, ``(B, M)``; ``row_profiles(ug, sigma, k) -> (B, R, Gu)``."""
        sig, ug, vg, ev = self._edges_for(b, kind)
        maps = torch.stack([torch.einsum("vr,brg->bvg", ev[k], row_profiles(ug, s, (b, kind, k)))
                            for k, s in enumerate(sig)], dim=1)
        return self._sample_maps(maps, ug, vg, self.node_weights(b, kind), self.beam_points(b))

    def _lateral(self, row_profiles: Profiles, b: int, *, primary: bool = True) -> torch.Tensor:
        """Share-weighted sum of the lateral terms, ``(B, M)`` (``primary=False``: the broad terms only)."""
        terms = [share * self._component(row_profiles, b, kind) for kind, share in self.term_shares(b).items()
                 if kind != "primary" or primary]
        return torch.stack(terms).sum(0)

    def _bixel_profiles(self, w: torch.Tensor, b: int) -> Profiles:
        """Row profiles of fluence maps ``w`` ``(R, C)`` or ``(B, R, C)`` -> ``(B, R, Gu)``."""
        g = self.grids[b]
        lo = torch.as_tensor(g.u_edges[:-1], dtype=self.dtype, device=self.device)
        hi = torch.as_tensor(g.u_edges[1:], dtype=self.dtype, device=self.device)

        def prof(ug: torch.Tensor, s: torch.Tensor, key: tuple) -> torch.Tensor:
            if key not in self._eu:
                self._eu[key] = edge_factors(ug, lo, hi, s.expand_as(ug)).T.contiguous()  # (C, Gu)
            out = w @ self._eu[key]
            return out[None] if out.dim() == 2 else out
        return prof

    def beam_dose(self, weights: torch.Tensor, b: int, *, primary: bool = True) -> torch.Tensor:
        """Dose (Gy) of beam ``b`` at its reachable points (``beam_points(b).sel``), matrix-free."""
        bp = self.beam_points(b)
        w = self.beam_weights(weights.to(self.dtype), b)
        prof = self._bixel_profiles(w, b)
        return bp.pref * self._lateral(prof, b, primary=primary)[0]

    def bixel_columns(self, b: int, maps: torch.Tensor, *, primary: bool = True) -> torch.Tensor:
        """``(N, B)`` doses of ``B`` fluence maps ``(B, R, C)`` of beam ``b`` (e.g. segments as open beamlets)."""
        bp = self.beam_points(b)
        prof = self._bixel_profiles(maps.to(self.dtype), b)
        per = self._lateral(prof, b, primary=primary)
        out = torch.zeros((self.n_points, maps.shape[0]), dtype=self.dtype, device=self.device)
        return out.index_add(0, bp.sel, (bp.pref * per).T)

    def dose(self, weights: torch.Tensor, *, primary: bool = True) -> torch.Tensor:
        """``(N,)`` dose (Gy) at the engine's points for flat beamlet weights ``(n_bixels,)`` in MU."""
        if weights.shape != (self.n_bixels,):
            raise InvalidImageError(f"weights must have shape ({self.n_bixels},), got {tuple(weights.shape)}")
        total = torch.zeros(self.n_points, dtype=self.dtype, device=self.device)
        for b in range(len(self.beams)):
            total = total.index_add(0, self.beam_points(b).sel, self.beam_dose(weights, b, primary=primary))
        return total

    def _aperture_profiles(self, left_mm: torch.Tensor, right_mm: torch.Tensor) -> Profiles:
        def prof(ug: torch.Tensor, s: torch.Tensor, key: tuple = ()) -> torch.Tensor:
            sg = s * _SQRT2
            e = 0.5 * (torch.erf((right_mm[..., None] - ug) / sg) - torch.erf((left_mm[..., None] - ug) / sg))
            return e.clamp_min(0.0)
        return prof

    def aperture_dose(self, b: int, left_mm: torch.Tensor, right_mm: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        """Dose of MLC apertures of beam ``b`` at the engine's points, differentiable in leaf positions and MU.

        Args:
            b: beam index.
            left_mm / right_mm: ``(S, R)`` effective leaf positions (isocentre plane, IEC X) of ``S``
                segments over the beam's ``R`` bixel rows; ``left >= right`` closes a row.
            mu: ``(S,)`` segment weights (MU).
        """
        bp = self.beam_points(b)
        base = self._aperture_profiles(left_mm.to(self.dtype), right_mm.to(self.dtype))
        prof = lambda ug, s, key: torch.einsum("s,srg->rg", mu.to(self.dtype), base(ug, s))[None]
        out = self._lateral(prof, b)[0]
        total = torch.zeros(self.n_points, dtype=self.dtype, device=self.device)
        return total.index_add(0, bp.sel, bp.pref * out)

    # ------------------------------------------------------------------ sparse primary
    def primary_matrix(self, *, cutoff: float = 1e-4) -> torch.Tensor:
        """The primary term as a sparse CSR matrix ``(N, n_bixels)`` (exact erf, entries < cutoff x max dropped)."""
        from sarcart.dose.influence import csr_pair

        r, c, v = self.primary_entries(cutoff=cutoff)
        return csr_pair(r, c, v, (self.n_points, self.n_bixels), transpose=False)[0]

    def primary_entries(self, *, cutoff: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """COO ``(rows, cols, values)`` of the primary term, entries below ``cutoff`` x the maximum dropped."""
        parts = [self._primary_entries(b) for b in range(len(self.beams))]
        r, c, v = (torch.cat([p[i] for p in parts]) for i in range(3))
        keep = v > cutoff * float(v.max()) if v.numel() else v > 0
        return r[keep], c[keep], v[keep]

    def _primary_entries(self, b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Non-zero primary entries of beam ``b``: a window of columns x rows around each point."""
        g, bp = self.grids[b], self.beam_points(b)
        sig = self.model.sigma_primary(bp.depth)
        reach = 4.0 * float(sig.max()) + 1.0
        near = (bp.u > g.u_edges[0] - reach) & (bp.u < g.u_edges[-1] + reach) & \
               (bp.v > g.v_edges[0] - reach) & (bp.v < g.v_edges[-1] + reach)
        k = torch.nonzero(near).reshape(-1)
        ue = torch.as_tensor(g.u_edges, dtype=self.dtype, device=self.device)
        ve = torch.as_tensor(g.v_edges, dtype=self.dtype, device=self.device)
        n_r, n_c = g.shape
        wc = min(math.ceil(2 * reach / float(ue[1] - ue[0])) + 2, n_c)
        wr = min(math.ceil(2 * reach / float((ve[-1] - ve[0]) / n_r)) + 2, n_r)
        c0 = (torch.searchsorted(ue, bp.u[k] - reach) - 1).clamp(0, n_c - wc)
        r0 = (torch.searchsorted(ve, bp.v[k] - reach) - 1).clamp(0, n_r - wr)
        cols = c0[:, None] + torch.arange(wc, device=self.device)  # (m, wc)
        rows = r0[:, None] + torch.arange(wr, device=self.device)
        s = sig[k][:, None] * _SQRT2
        u, v = bp.u[k][:, None], bp.v[k][:, None]
        eu = 0.5 * (torch.erf((ue[cols + 1] - u) / s) - torch.erf((ue[cols] - u) / s))
        ev = 0.5 * (torch.erf((ve[rows + 1] - v) / s) - torch.erf((ve[rows] - v) / s))
        eu, ev = eu * (eu > _KERNEL_FLOOR), ev * (ev > _KERNEL_FLOOR)
        val = (bp.pref * (1.0 - bp.ws - self.model.tail_share))[k, None, None] * ev[:, :, None] * eu[:, None, :]  # (m, wr, wc)
        col_idx = rows[:, :, None] * n_c + cols[:, None, :] + int(self.offsets[b])
        nz = val > 0
        pts = bp.sel[k][:, None, None].expand_as(val)
        return pts[nz], col_idx[nz], val[nz]

    def influence(self, *, cutoff: float = 1e-4) -> SparseInfluence:
        """Build the sparse-influence operator (CSR primary + separable scatter)."""
        from sarcart.dose.influence import SparseInfluence

        return SparseInfluence(self, *self.primary_entries(cutoff=cutoff))

    def dense_matrix(self) -> torch.Tensor:
        """The full ``(N, n_bixels)`` influence matrix by unit-weight columns (small problems and tests only)."""
        eye = torch.eye(self.n_bixels, dtype=self.dtype, device=self.device)
        return torch.stack([self.dose(eye[i]) for i in range(self.n_bixels)], dim=1)
