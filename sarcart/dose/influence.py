"""Sparse-influence operator: ``dose(w) = A_primary @ w + scatter(w)`` (see :mod:`sarcart.dose.engine`).

The narrow primary term is an exact CSR matrix (voxels x beamlets); the broad scatter term, which would
make the matrix dense, goes through the engine's separable maps. The transposed CSR is precomputed
for the backward pass (autograd's default transpose of a CSR product is slow).
"""

from __future__ import annotations

import warnings

import torch

from sarcart.dose.engine import DoseEngine


class _SparseMv(torch.autograd.Function):
    """``A @ w`` with a precomputed CSR transpose for the backward pass (autograd's default is slow)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, a_t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.a_t = a_t
        return torch.mv(a, w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return None, None, torch.mv(ctx.a_t, grad)


class SparseInfluence:
    """``dose(w) = A_primary @ w + scatter(w)``: sparse CSR primary plus the separable scatter maps."""

    def __init__(self, engine: DoseEngine, primary: torch.Tensor) -> None:
        self.engine, self.primary = engine, primary
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self.primary_t = primary.to_sparse_coo().t().coalesce().to_sparse_csr()

    @property
    def nnz(self) -> int:
        return int(self.primary.values().numel())

    def columns(self, open_maps: torch.Tensor) -> torch.Tensor:
        """``(N, S)`` doses of ``S`` unit-MU beamlet patterns ``(n_bixels, S)`` (sparse primary + batched scatter)."""
        e = self.engine
        m = open_maps.to(e.dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            out = torch.sparse.mm(self.primary, m)
        for b in range(len(e.beams)):
            part = m[e.offsets[b]:e.offsets[b + 1]]
            used = torch.nonzero(part.abs().sum(0) > 0).reshape(-1)
            if len(used):
                maps = part[:, used].T.reshape(len(used), *e.grids[b].shape)
                out[:, used] += e.bixel_columns(b, maps, primary=False)
        return out

    def dose(self, weights: torch.Tensor) -> torch.Tensor:
        w = weights.to(self.engine.dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            prim = _SparseMv.apply(self.primary, self.primary_t, w)
        return prim + self.engine.dose(w, primary=False)
