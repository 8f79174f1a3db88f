"""Local grey-level run-length matrix (GLRLM) features of each kernel.

Runs are maximal sequences of ROI voxels with one grey level along a direction, inside the kernel cube
(13 directions). As in pyradiomics 3.0.1, a direction in which no line of the kernel holds more than one
ROI voxel is dropped, and features are averaged over the remaining directions. Definitions: Galloway,
Comput Graph Image Process 1975, doi:10.1016/S0146-664X(75)80008-6; Chu et al. 1990
(doi:10.1016/0167-8655(90)90112-F); Dasarathy & Holder 1991 (doi:10.1016/0167-8655(91)80014-2);
pyradiomics documentation (doi:10.1158/0008-5472.CAN-17-0339).
"""

from __future__ import annotations

import torch

from sarcart.radiomics.maps.kernel import Chunk, KernelGeometry

EPS = 2.220446049250313e-16


def glrlm_matrices(chunk: Chunk, geometry: KernelGeometry, device: torch.device) -> torch.Tensor:
    """(B, A, m, R) float64 run counts (R = 2r+1 possible run lengths) per direction.

    A run starts at every ROI position whose predecessor along the direction is not a same-level ROI
    voxel; its length follows the chain of same-level successors (at most 2r steps).
    """
    b, k = chunk.levels.shape
    m = chunk.m
    n_angles = geometry.angles.shape[0]
    r_len = 2 * geometry.radius + 1
    nxt = torch.as_tensor(geometry.next_pos, device=device)  # (A, K)
    prv = torch.as_tensor(geometry.prev_pos, device=device)
    lev = torch.cat([chunk.levels, torch.full((b, 1), -1, dtype=torch.long, device=device)], 1).to(torch.int16)
    own = lev[:, None, :k]  # (B, 1, K)
    valid = own >= 0
    cont_next = valid & (lev[:, nxt] == own)  # same-level ROI successor, (B, A, K)
    start = valid & ~(valid & (lev[:, prv] == own))
    cont_ext = torch.cat([cont_next, torch.zeros((b, n_angles, 1), dtype=torch.bool, device=device)], 2)
    length = start.to(torch.int16)
    alive, pos = start, torch.arange(k, device=device).expand(n_angles, k)
    for _ in range(r_len - 1):
        alive = alive & cont_ext.gather(2, pos.expand(b, -1, -1))
        length = length + alive
        pos = torch.cat([nxt, torch.full((n_angles, 1), k, device=device, dtype=nxt.dtype)], 1).gather(1, pos)
    angle = torch.arange(n_angles, device=device)[None, :, None]
    idx = (angle * m + lev[:, None, :k].clamp(min=0).long()) * r_len + (length.long() - 1).clamp(min=0)
    runs = torch.zeros((b, n_angles * m * r_len), dtype=torch.float64, device=device)
    runs.scatter_add_(1, idx.reshape(b, -1), start.reshape(b, -1).double())
    return runs.view(b, n_angles, m, r_len) * _multi_element(chunk, geometry, device)[..., None, None]


def _multi_element(chunk: Chunk, geometry: KernelGeometry, device: torch.device) -> torch.Tensor:
    """(B, A) 1.0 where some line of the direction holds more than one ROI voxel (pyradiomics' rule)."""
    k = geometry.size
    n_lines = geometry.lines.shape[0]
    member = torch.zeros((k + 1, n_lines), dtype=torch.float64, device=device)
    member[torch.as_tensor(geometry.lines.T, device=device),
           torch.arange(n_lines, device=device).expand(geometry.lines.shape[1], -1)] = 1.0
    per_line = (chunk.levels >= 0).double() @ member[:k]  # ROI voxels on each line, (B, L)
    of_angle = torch.zeros((n_lines, geometry.angles.shape[0]), dtype=torch.float64, device=device)
    of_angle[torch.arange(n_lines, device=device), torch.as_tensor(geometry.line_angle, device=device)] = 1.0
    return ((per_line > 1).double() @ of_angle > 0).double()


def glrlm_features(runs: torch.Tensor, gray: torch.Tensor, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """GLRLM features per voxel (mean over directions holding runs; NaN when none does).

    Every feature is a separable weighting of the run matrix, so it reduces to sums over the grey-level
    and run-length margins plus two grey-weighted run-length margins (and one entropy pass).

    Args:
        runs: (B, A, m, R) run counts; gray: (B, m) global grey values of the local levels.
    """
    pr = runs.sum(2)  # (B, A, R)
    pg = runs.sum(3)  # (B, A, m)
    nr = pr.sum(-1)
    present = nr > 0
    nr1 = torch.where(present, nr, torch.ones_like(nr))
    j = torch.arange(1, runs.shape[3] + 1, dtype=torch.float64, device=runs.device)
    i2 = gray[:, None, :] ** 2
    j2 = j ** 2
    low = (runs / i2[..., None]).sum(2)  # (B, A, R): sum_i P(i, j) / i^2
    high = (runs * i2[..., None]).sum(2)  # sum_i P(i, j) i^2
    pn = runs / nr1[..., None, None]
    f: dict[str, torch.Tensor] = {
        "ShortRunEmphasis": (pr / j2).sum(-1) / nr1,
        "LongRunEmphasis": (pr * j2).sum(-1) / nr1,
        "GrayLevelNonUniformity": (pg ** 2).sum(-1) / nr1,
        "GrayLevelNonUniformityNormalized": (pg ** 2).sum(-1) / nr1 ** 2,
        "RunLengthNonUniformity": (pr ** 2).sum(-1) / nr1,
        "RunLengthNonUniformityNormalized": (pr ** 2).sum(-1) / nr1 ** 2,
        "LowGrayLevelRunEmphasis": low.sum(-1) / nr1,
        "HighGrayLevelRunEmphasis": high.sum(-1) / nr1,
        "ShortRunLowGrayLevelEmphasis": (low / j2).sum(-1) / nr1,
        "ShortRunHighGrayLevelEmphasis": (high / j2).sum(-1) / nr1,
        "LongRunLowGrayLevelEmphasis": (low * j2).sum(-1) / nr1,
        "LongRunHighGrayLevelEmphasis": (high * j2).sum(-1) / nr1,
        "RunEntropy": -(pn * torch.log2(pn + EPS)).sum((2, 3)),
    }
    n_vox = (pr * j).sum(-1)
    f["RunPercentage"] = nr / torch.where(n_vox > 0, n_vox, torch.ones_like(n_vox))
    pgn, prn = pg / nr1[..., None], pr / nr1[..., None]
    i = gray[:, None, :]
    ui = (pgn * i).sum(-1, keepdim=True)
    uj = (prn * j).sum(-1, keepdim=True)
    f["GrayLevelVariance"] = (pgn * (i - ui) ** 2).sum(-1)
    f["RunVariance"] = (prn * (j - uj) ** 2).sum(-1)
    nan = torch.tensor(float("nan"), dtype=runs.dtype, device=runs.device)
    return {name: torch.nanmean(torch.where(present, f[name], nan), dim=1) for name in names}
