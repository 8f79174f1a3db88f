"""Local GLDM and NGTDM features of each kernel (both look at the 26 neighbours of every kernel voxel).

GLDM (grey-level dependence matrix; IBSI's NGLDM with coarseness alpha): Sun & Wee, Comput Vis Graph
Image Process 1983, doi:10.1016/0734-189X(83)90032-4. NGTDM (neighbourhood grey-tone difference matrix):
Amadasun & King, IEEE Trans Syst Man Cybern 1989, doi:10.1109/21.44058. Both as implemented in
pyradiomics 3.0.1 (doi:10.1158/0008-5472.CAN-17-0339): neighbours must lie inside the kernel cube and
the ROI.
"""

from __future__ import annotations

import torch

from sarcart.radiomics.maps.glszm import adjacency, item_features
from sarcart.radiomics.maps.kernel import Chunk, KernelGeometry

GLDM_NAMES = {
    "SmallDependenceEmphasis": "Small", "LargeDependenceEmphasis": "Large", "LowGrayLevelEmphasis": "LowGray",
    "HighGrayLevelEmphasis": "HighGray", "SmallDependenceLowGrayLevelEmphasis": "SmallLow",
    "SmallDependenceHighGrayLevelEmphasis": "SmallHigh", "LargeDependenceLowGrayLevelEmphasis": "LargeLow",
    "LargeDependenceHighGrayLevelEmphasis": "LargeHigh", "GrayLevelNonUniformity": "GrayLevelNonUniformity",
    "DependenceNonUniformity": "NonUniformity", "DependenceNonUniformityNormalized": "NonUniformityNormalized",
    "GrayLevelVariance": "GrayLevelVariance", "DependenceVariance": "Variance", "DependenceEntropy": "Entropy",
}


def gldm_features(chunk: Chunk, geometry: KernelGeometry, names: tuple[str, ...], *, device: torch.device,
                  alpha: int) -> dict[str, torch.Tensor]:
    """GLDM features per voxel (dependence k counted from 1 = no dependent neighbour, as pyradiomics).

    The dependent neighbours of every kernel position are counted with one matrix product of the
    one-hot local grey levels with the cube's adjacency matrix (and a level window for alpha > 0).
    """
    b, k = chunk.levels.shape
    valid = chunk.levels >= 0
    lev = chunk.levels.clamp(min=0)
    onehot = torch.zeros((b, k, chunk.m), dtype=torch.float64, device=device)
    onehot.scatter_(2, lev[:, :, None], valid[:, :, None].double())
    per_level = torch.matmul(adjacency(geometry, device, torch.float64), onehot)  # (B, K, m) neighbours by level
    if alpha > 0:
        window = ((chunk.gray[:, :, None] - chunk.gray[:, None, :]).abs() <= alpha).double()
        per_level = torch.bmm(per_level, window)
    dep = per_level.gather(2, lev[:, :, None])[:, :, 0].round().long()
    n_cols = geometry.neighbours.shape[1] + 1
    feats = item_features(chunk.levels, dep + 1, valid.double(), gray=chunk.gray, n_cols=n_cols)
    return {name: feats[GLDM_NAMES[name]] for name in names}


def ngtdm_vectors(chunk: Chunk, geometry: KernelGeometry, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per local grey level: voxel counts n_i (B, m) and summed absolute differences s_i (B, m).

    Neighbour counts and grey-level sums of all kernel positions come from one matrix product with the
    cube's adjacency matrix.
    """
    valid = chunk.levels >= 0
    adj = adjacency(geometry, device, torch.float64)
    vals = torch.stack([valid.double(), chunk.disc.double() * valid], dim=2)  # (B, K, 2)
    sums = torch.matmul(adj, vals)
    count, total = sums[..., 0], sums[..., 1]
    mean = total / torch.where(count > 0, count, torch.ones_like(count))
    diff = torch.where(count > 0, (chunk.disc.double() - mean).abs(), torch.zeros_like(mean))
    idx = chunk.levels.clamp(min=0)
    n = torch.zeros((valid.shape[0], chunk.m), dtype=torch.float64, device=device)
    s = torch.zeros_like(n)
    n.scatter_add_(1, idx, valid.double())
    s.scatter_add_(1, idx, diff * valid)
    return n, s


def ngtdm_features(n: torch.Tensor, s: torch.Tensor, gray: torch.Tensor, *, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """NGTDM features per voxel (pyradiomics conventions: coarseness 1e6 when sum p_i s_i is 0)."""
    nvp = n.sum(1)
    p = n / torch.where(nvp > 0, nvp, torch.ones_like(nvp))[:, None]
    present = n > 0
    both = present[:, :, None] & present[:, None, :]
    ngp = present.sum(1).double()
    gi, gj = gray[:, :, None], gray[:, None, :]
    pi, pj = p[:, :, None], p[:, None, :]
    ps = (p * s).sum(1)
    zero = torch.zeros_like(ps)
    f: dict[str, torch.Tensor] = {}
    f["Coarseness"] = torch.where(ps != 0, 1 / torch.where(ps != 0, ps, torch.ones_like(ps)), zero + 1e6)
    div = ngp * (ngp - 1)
    contrast = (pi * pj * (gi - gj) ** 2).sum((1, 2)) * s.sum(1) / nvp
    f["Contrast"] = torch.where(div != 0, contrast / torch.where(div != 0, div, torch.ones_like(div)), zero)
    ipi = gray * p
    absdiff = torch.where(both, (ipi[:, :, None] - ipi[:, None, :]).abs(), torch.zeros_like(both, dtype=p.dtype)).sum((1, 2))
    f["Busyness"] = torch.where(absdiff != 0, ps / torch.where(absdiff != 0, absdiff, torch.ones_like(absdiff)), zero)
    psi = p * s
    num = torch.where(both, psi[:, :, None] + psi[:, None, :], torch.zeros_like(both, dtype=p.dtype))
    den = pi + pj
    den = torch.where(den == 0, torch.ones_like(den), den)
    f["Complexity"] = ((gi - gj).abs() * num / den).sum((1, 2)) / nvp
    strength = torch.where(both, (pi + pj) * (gi - gj) ** 2, torch.zeros_like(both, dtype=p.dtype)).sum((1, 2))
    ssum = s.sum(1)
    f["Strength"] = torch.where(ssum != 0, strength / torch.where(ssum != 0, ssum, torch.ones_like(ssum)), zero)
    return {name: f[name] for name in names}
