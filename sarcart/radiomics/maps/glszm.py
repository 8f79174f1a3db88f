"""Local grey-level size-zone matrix (GLSZM) features of each kernel, and the zone-list features it
shares with the GLDM.

Zones are 26-connected groups of ROI voxels with one grey level inside the kernel cube. For kernels of
up to 27 positions they are found by a boolean transitive closure of the same-level adjacency matrix
(batched matrix products); larger kernels use min-label propagation with pointer jumping.
Definitions: Thibault et al., Pattern Recognit Image Anal 2013 (doi:10.1134/S1054661813030140);
pyradiomics documentation (doi:10.1158/0008-5472.CAN-17-0339); IBSI (doi:10.1148/radiol.2020191145).
"""

from __future__ import annotations

import torch

from sarcart.radiomics.maps.kernel import Chunk, KernelGeometry

EPS = 2.220446049250313e-16


def adjacency(geometry: KernelGeometry, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(K, K) 0/1 matrix of 26-neighbour positions inside the kernel cube."""
    k = geometry.size
    adj = torch.zeros((k, k + 1), dtype=dtype, device=device)
    nb = torch.as_tensor(geometry.neighbours, device=device)
    adj.scatter_(1, nb, torch.ones(nb.shape, dtype=dtype, device=device))
    return adj[:, :k].contiguous()


def _zone_roots_closure(levels: torch.Tensor, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    valid = levels >= 0
    same = (levels[:, :, None] == levels[:, None, :]) & valid[:, :, None]
    eye = torch.eye(levels.shape[1], dtype=adj.dtype, device=adj.device)
    reach = (same.to(adj.dtype) * adj) + eye * valid[:, :, None].to(adj.dtype)
    for _ in range(6):  # paths of up to 2^6 > 27 steps
        nxt = torch.clamp(torch.bmm(reach, reach), max=1.0)
        if torch.equal(nxt, reach):
            break
        reach = nxt
    size = reach.sum(2)
    first = torch.argmax(reach, dim=2)  # smallest reachable position = zone root
    pos = torch.arange(levels.shape[1], device=levels.device)
    return valid & (first == pos), size.round().long()


def _zone_roots_propagation(levels: torch.Tensor, neighbours: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b, k = levels.shape
    valid = levels >= 0
    pos = torch.arange(k, device=levels.device).expand(b, k)
    lab = torch.where(valid, pos, torch.full_like(pos, k))
    lev_ext = torch.cat([levels, torch.full((b, 1), -2, dtype=levels.dtype, device=levels.device)], 1)
    same = (lev_ext[:, neighbours] == levels[:, :, None]) & valid[:, :, None]
    pad = torch.full((b, 1), k, dtype=lab.dtype, device=lab.device)
    while True:
        cand = torch.where(same, torch.cat([lab, pad], 1)[:, neighbours], torch.full_like(same, k, dtype=lab.dtype))
        new = torch.minimum(lab, cand.amin(2))
        for _ in range(2):  # pointer jumping
            new = torch.where(valid, torch.cat([new, pad], 1).gather(1, new), new)
        if torch.equal(new, lab):
            break
        lab = new
    size = torch.zeros((b, k + 1), dtype=torch.long, device=levels.device)
    size.scatter_add_(1, lab, valid.long())
    return valid & (lab == pos), size.gather(1, lab.clamp(max=k))


def zone_list(chunk: Chunk, geometry: KernelGeometry, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Zones of every kernel as a list over kernel positions: (is_root (B, K) bool, zone size (B, K) long)."""
    if geometry.size <= 27:
        return _zone_roots_closure(chunk.levels, adjacency(geometry, device))
    return _zone_roots_propagation(chunk.levels, torch.as_tensor(geometry.neighbours, device=device))


def item_features(levels: torch.Tensor, j: torch.Tensor, weight: torch.Tensor, *, gray: torch.Tensor,
                  n_cols: int) -> dict[str, torch.Tensor]:
    """Features of a (grey level, j) count matrix given as a list of items (zones, or voxels for GLDM).

    Args:
        levels: (B, Z) local grey level of each item (any value where ``weight`` is 0).
        j: (B, Z) column of each item, 1..n_cols (zone size, or dependence + 1).
        weight: (B, Z) 1.0 for items that count, 0.0 otherwise.
        gray: (B, m) grey values of the local levels.
        n_cols: number of columns of the matrix (largest possible j).

    Returns:
        Generic names (``Small``, ``Large``, ``LowGray``, ``HighGray``, ``SmallLow``, ... ``Entropy``,
        ``NonUniformity``, ``GrayLevelNonUniformity``, ``Variance``, ``Percentage``), mapped to class
        names by the callers.
    """
    b, m = gray.shape
    lev = levels.clamp(min=0)
    nz = weight.sum(1)
    nz1 = torch.where(nz == 0, torch.ones_like(nz), nz)
    g2 = gray.gather(1, lev) ** 2
    jf = j.double()
    j2 = jf ** 2
    lin = torch.stack([1 / j2, j2, 1 / g2, g2, 1 / (g2 * j2), g2 / j2, j2 / g2, g2 * j2, jf], dim=2)
    sums = (lin * weight[:, :, None]).sum(1) / nz1[:, None]
    pg = torch.zeros((b, m), dtype=torch.float64, device=gray.device).scatter_add_(1, lev, weight)
    ps = torch.zeros((b, n_cols), dtype=torch.float64, device=gray.device).scatter_add_(1, j - 1, weight)
    cells = torch.zeros((b, m * n_cols), dtype=torch.float64, device=gray.device)
    cells.scatter_add_(1, lev * n_cols + j - 1, weight)
    pn = cells / nz1[:, None]
    pgn, psn = pg / nz1[:, None], ps / nz1[:, None]
    jv = torch.arange(1, n_cols + 1, dtype=torch.float64, device=gray.device)
    ui, uj = (pgn * gray).sum(1, keepdim=True), (psn * jv).sum(1, keepdim=True)
    n_vox = sums[:, 8] * nz1
    out = dict(zip(("Small", "Large", "LowGray", "HighGray", "SmallLow", "SmallHigh", "LargeLow", "LargeHigh"),
                   sums[:, :8].unbind(1)))
    out.update({
        "GrayLevelNonUniformity": (pg ** 2).sum(1) / nz1,
        "GrayLevelNonUniformityNormalized": (pg ** 2).sum(1) / nz1 ** 2,
        "NonUniformity": (ps ** 2).sum(1) / nz1,
        "NonUniformityNormalized": (ps ** 2).sum(1) / nz1 ** 2,
        "GrayLevelVariance": (pgn * (gray - ui) ** 2).sum(1),
        "Variance": (psn * (jv - uj) ** 2).sum(1),
        "Entropy": -(pn * torch.log2(pn + EPS)).sum(1),
        "Percentage": nz1 / torch.where(n_vox == 0, torch.ones_like(n_vox), n_vox),
    })
    return out


GLSZM_NAMES = {
    "SmallAreaEmphasis": "Small", "LargeAreaEmphasis": "Large", "LowGrayLevelZoneEmphasis": "LowGray",
    "HighGrayLevelZoneEmphasis": "HighGray", "SmallAreaLowGrayLevelEmphasis": "SmallLow",
    "SmallAreaHighGrayLevelEmphasis": "SmallHigh", "LargeAreaLowGrayLevelEmphasis": "LargeLow",
    "LargeAreaHighGrayLevelEmphasis": "LargeHigh", "GrayLevelNonUniformity": "GrayLevelNonUniformity",
    "GrayLevelNonUniformityNormalized": "GrayLevelNonUniformityNormalized",
    "SizeZoneNonUniformity": "NonUniformity", "SizeZoneNonUniformityNormalized": "NonUniformityNormalized",
    "GrayLevelVariance": "GrayLevelVariance", "ZoneVariance": "Variance", "ZoneEntropy": "Entropy",
    "ZonePercentage": "Percentage",
}


def glszm_features(chunk: Chunk, geometry: KernelGeometry, names: tuple[str, ...], *,
                   device: torch.device) -> dict[str, torch.Tensor]:
    """GLSZM features per voxel (pyradiomics conventions: Nz and Np of an empty kernel are 1)."""
    root, size = zone_list(chunk, geometry, device)
    k = geometry.size
    feats = item_features(chunk.levels, size.clamp(1, k), root.double(), gray=chunk.gray, n_cols=k)
    return {name: feats[GLSZM_NAMES[name]] for name in names}
