"""Sparse-influence operator: ``dose(w) = A_primary @ w + S @ maps(w) [+ T @ tail_maps(w)]`` (:mod:`sarcart.dose.engine`).

The narrow primary term is an exact CSR matrix (voxels x beamlets). The broad scatter term, which
would make the matrix dense, goes through the engine's separable maps: for each beam and scatter
depth node ``k`` the map ``Ev_k @ W_b @ Eu_k^T`` (isocentre plane, 5 mm pixels) is built from the
beam's fluence ``W_b`` with two small dense products, and a second CSR matrix ``S`` (voxels x map
pixels) holds what the matrix-free engine does at each voxel: the bilinear interpolation weights of
its four neighbouring pixels, the linear weights of its two depth nodes and its prefactor
``pref * ws`` - at most 8 entries per voxel and beam. ``S @ maps`` is then numerically the matrix-free
scatter term (same maps, same interpolation), but a sparse product forward and backward instead of
``grid_sample`` and its slow CPU backward. Both transposed CSRs are precomputed for the backward pass.
Gradients are exact: autograd through the map products, the CSR products' adjoints are the transposes.

A three-term beam model (``tail_share > 0``) adds its intermediate Gaussian the same way, as a second
separable operator ``T`` (one depth-independent width, so one map per beam on the primary's grid and
at most 4 entries per voxel and beam), rather than by widening the exact primary matrix to the tail's
reach (about 4 x 4.2 mm instead of 4 x 0.8-1.3 mm: many times the entries).
"""

from __future__ import annotations

import warnings

import torch

from sarcart.dose.engine import DoseEngine, Term, edge_factors
from sarcart.errors import ConfigError


class _SparseMv(torch.autograd.Function):
    """``A @ w`` with a precomputed CSR transpose for the backward pass (autograd's default is slow)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, a_t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.a_t = a_t
        return torch.mv(a, w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return None, None, torch.mv(ctx.a_t, grad)


def csr_pair(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape: tuple[int, int], *,
             transpose: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """CSR matrix (int32 indices: about twice as fast a product as int64 on CPU) and its CSR transpose.

    Built from COO entries with duplicates summed (scipy on the host, then moved to the entries' device).
    """
    import numpy as np
    import scipy.sparse as sp

    dev, dt = vals.device, vals.dtype
    a = sp.csr_matrix((vals.detach().cpu().numpy(), (rows.cpu().numpy(), cols.cpu().numpy())), shape=shape)
    index = np.int32 if max(shape[0], shape[1], a.nnz) < 2 ** 31 - 1 else np.int64

    def to_torch(m: sp.csr_matrix) -> torch.Tensor:
        m.sort_indices()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            return torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(index)), torch.from_numpy(m.indices.astype(index)),
                                           torch.from_numpy(m.data), m.shape, dtype=dt).to(dev)
    return to_torch(a), (to_torch(a.T.tocsr()) if transpose else None)


class ScatterOperator:
    """A broad lateral term of a :class:`DoseEngine` as separable maps plus one sparse sampling matrix.

    Args:
        engine: the engine (its points, beams, beamlet grids and beam model).
        kind: ``"scatter"`` (the broad, depth-dependent component) or ``"tail"`` (the intermediate one).
    """

    def __init__(self, engine: DoseEngine, kind: Term = "scatter") -> None:
        if kind not in ("scatter", "tail"):
            raise ConfigError(f"kind must be 'scatter' or 'tail', got {kind!r}; the primary term is the CSR matrix")
        self.engine, self.kind = engine, kind
        self._blocks: list[tuple[torch.Tensor, torch.Tensor]] = []  # per beam: Ev (K, Gv, R), Eu (K, C, Gu)
        rows, cols, vals, offset = [], [], [], 0
        for b in range(len(engine.beams)):
            sig, ug, vg, ev = engine._edges_for(b, kind)
            g = engine.grids[b]
            lo = torch.as_tensor(g.u_edges[:-1], dtype=engine.dtype, device=engine.device)
            hi = torch.as_tensor(g.u_edges[1:], dtype=engine.dtype, device=engine.device)
            eu = torch.stack([edge_factors(ug, lo, hi, s.expand_as(ug)).T for s in sig])  # (K, C, Gu)
            r, c, v = self._sampling_entries(b, ug, vg, offset)
            rows.append(r)
            cols.append(c)
            vals.append(v)
            self._blocks.append((ev, eu.contiguous()))
            offset += len(sig) * len(vg) * len(ug)
        self.n_pixels = offset
        self.matrix, self.matrix_t = csr_pair(torch.cat(rows), torch.cat(cols), torch.cat(vals),
                                              (engine.n_points, offset))

    def _sampling_entries(self, b: int, ug: torch.Tensor, vg: torch.Tensor, offset: int
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """COO entries of beam ``b``: bilinear pixel weights x depth-node weights x ``pref * share``."""
        e = self.engine
        bp = e.beam_points(b)
        gu, gv = len(ug), len(vg)
        px = (bp.u - ug[0]) / (ug[-1] - ug[0]) * (gu - 1)
        py = (bp.v - vg[0]) / (vg[-1] - vg[0]) * (gv - 1)
        i0, j0 = torch.floor(px).long(), torch.floor(py).long()
        fx, fy = px - i0, py - j0
        scale = bp.pref * e.term_shares(b)[self.kind]
        nodes = e.node_weights(b, self.kind)
        rows, cols, vals = [], [], []
        for k in range(nodes.shape[1]):
            wk = nodes[:, k] * scale
            for di, dj, wb in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy),
                               (1, 1, fx * fy)):
                ii, jj = i0 + di, j0 + dj
                val = wk * wb
                ok = (val != 0) & (ii >= 0) & (ii < gu) & (jj >= 0) & (jj < gv)
                rows.append(bp.sel[ok])
                cols.append(offset + (k * gv + jj[ok]) * gu + ii[ok])
                vals.append(val[ok])
        return torch.cat(rows), torch.cat(cols), torch.cat(vals)

    @property
    def nnz(self) -> int:
        return int(self.matrix.values().numel())

    def maps(self, weights: torch.Tensor) -> torch.Tensor:
        """``(n_pixels,)`` flattened node maps of all beams for flat beamlet weights (differentiable)."""
        e = self.engine
        out = []
        for b, (ev, eu) in enumerate(self._blocks):
            w = e.beam_weights(weights, b)
            out.append(torch.matmul(torch.matmul(ev, w), eu).reshape(-1))  # (K, Gv, R)(R, C)(K, C, Gu)
        return torch.cat(out)

    def dose(self, weights: torch.Tensor) -> torch.Tensor:
        """``(N,)`` dose (Gy) of this term at the engine's points."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return _SparseMv.apply(self.matrix, self.matrix_t, self.maps(weights.to(self.engine.dtype)))


class SparseInfluence:
    """``dose(w) = A_primary @ w + scatter(w) [+ tail(w)]``: sparse CSR primary plus separable broad terms.

    Args:
        engine: the engine whose points and beamlets the operator maps.
        rows / cols / values: COO entries of the primary term (:meth:`DoseEngine.primary_entries`).
    """

    def __init__(self, engine: DoseEngine, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor) -> None:
        self.engine = engine
        self.primary, self.primary_t = csr_pair(rows, cols, values, (engine.n_points, engine.n_bixels))
        self.scatter = ScatterOperator(engine)
        self.tail = ScatterOperator(engine, "tail") if engine.model.tail_share > 0.0 else None
        self._broad = [op for op in (self.scatter, self.tail) if op is not None]

    @property
    def nnz(self) -> int:
        """Stored entries of the primary matrix (the sampling matrices: ``scatter.nnz``, ``tail.nnz``)."""
        return int(self.primary.values().numel())

    def columns(self, open_maps: torch.Tensor) -> torch.Tensor:
        """``(N, S)`` doses of ``S`` unit-MU beamlet patterns ``(n_bixels, S)`` (sparse primary + scatter maps)."""
        e = self.engine
        m = open_maps.to(e.dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            out = torch.sparse.mm(self.primary, m)
            for c0 in range(0, m.shape[1], 16):  # 16 columns of maps at a time bounds the memory
                cols = range(c0, min(c0 + 16, m.shape[1]))
                for op in self._broad:
                    maps = torch.stack([op.maps(m[:, i]) for i in cols], dim=1)
                    out[:, c0:cols.stop] += torch.sparse.mm(op.matrix, maps)
            return out

    def dose(self, weights: torch.Tensor) -> torch.Tensor:
        """``(N,)`` dose (Gy) at the engine's points for flat beamlet weights (MU), differentiable."""
        w = weights.to(self.engine.dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            prim = _SparseMv.apply(self.primary, self.primary_t, w)
        for op in self._broad:
            prim = prim + op.dose(w)
        return prim
