"""Local grey-level co-occurrence matrix (GLCM) features of each kernel.

One symmetric GLCM per direction (13 in 3D, Chebyshev distance 1) is built from the kernel's own voxel
pairs, features are computed per direction and averaged over the directions that hold at least one pair
(pyradiomics 3.0.1 semantics, equal to IBSI's "3D_avg" aggregation). Definitions: Haralick et al., IEEE
Trans Syst Man Cybern 1973, doi:10.1109/TSMC.1973.4309314; pyradiomics documentation
(doi:10.1158/0008-5472.CAN-17-0339); IBSI (doi:10.1148/radiol.2020191145).

For speed, features that depend on (i, j) only through i - j or i + j are computed from the
difference and sum histograms p_{x-y}, p_{x+y} (one GEMM for all linear ones), which is algebraically
what pyradiomics does. MCC is the square root of the second largest eigenvalue of
Q = D^-1 P D^-1 P^T, computed as the second largest |eigenvalue| of the symmetric D^-1/2 P D^-1/2
(same spectrum, since P is symmetric).
"""

from __future__ import annotations

import torch

from sarcart.radiomics.maps.kernel import Chunk, KernelGeometry

EPS = 2.220446049250313e-16


def glcm_matrices(chunk: Chunk, geometry: KernelGeometry, device: torch.device) -> torch.Tensor:
    """(B, A, m, m) float64 symmetric co-occurrence counts per direction (local grey-level indices)."""
    b, m = chunk.levels.shape[0], chunk.m
    n_angles = geometry.angles.shape[0]
    pp = torch.as_tensor(geometry.pair_p, device=device)
    pq = torch.as_tensor(geometry.pair_q, device=device)
    pa = torch.as_tensor(geometry.pair_angle, device=device)
    lp, lq = chunk.levels[:, pp], chunk.levels[:, pq]
    ok = ((lp >= 0) & (lq >= 0)).double()
    lp, lq = lp.clamp(min=0), lq.clamp(min=0)
    base = pa[None, :] * (m * m)
    counts = torch.zeros((b, n_angles * m * m), dtype=torch.float64, device=device)
    counts.scatter_add_(1, base + lp * m + lq, ok)
    counts.scatter_add_(1, base + lq * m + lp, ok)
    return counts.view(b, n_angles, m, m)


LN2 = 0.6931471805599453


def _clogc(counts: torch.Tensor) -> torch.Tensor:
    """c ln c of integer-valued counts by table lookup (much cheaper than a logarithm per element)."""
    table = torch.special.xlogy(*(torch.arange(int(counts.max()) + 1, dtype=counts.dtype, device=counts.device),) * 2)
    return torch.take(table, counts.long())


def _entropy_of_counts(counts: torch.Tensor, total: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """-sum p log2 p with p = counts / total (pyradiomics adds eps=2.2e-16 inside the log: negligible)."""
    return torch.log2(total) - _clogc(counts).sum(dims) / (total * LN2)


def _local_bins(values: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Rank of each value among its row's distinct values: (B, m, m) long -> (index (B, m, m), bins)."""
    b = values.shape[0]
    flat = values.reshape(b, -1)
    srt, perm = flat.sort(dim=1)
    new = torch.ones_like(srt, dtype=torch.bool)
    new[:, 1:] = srt[:, 1:] != srt[:, :-1]
    rank = torch.cumsum(new.long(), dim=1) - 1
    return torch.empty_like(rank).scatter_(1, perm, rank).view_as(values), int(rank[:, -1].max()) + 1


def _hist_entropy(counts: torch.Tensor, values: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """Entropy of the histogram of counts (B, A, m, m) over the cell values (B, m, m) (e.g. |i - j|)."""
    b, a, m, _ = counts.shape
    index, n_bins = _local_bins(values)
    hist = torch.zeros((b, a, n_bins), dtype=counts.dtype, device=counts.device)
    hist.scatter_add_(2, index.reshape(b, 1, m * m).expand(b, a, m * m), counts.reshape(b, a, m * m))
    return _entropy_of_counts(hist, total, (2,))


def _mcc(counts: torch.Tensor, cx: torch.Tensor) -> torch.Tensor:
    """Maximal correlation coefficient per (B, A) from symmetric counts and their marginal (scale-free).

    With at most two grey levels present the non-trivial eigenvalue is trace(M) - 1 (the other is 1);
    the other directions go through a symmetric eigen-decomposition.
    """
    m = counts.shape[-1]
    out = torch.zeros(counts.shape[:2], dtype=counts.dtype, device=counts.device)
    if m < 2:
        return out
    inv = torch.where(cx > 0, cx.clamp(min=1e-300).rsqrt(), torch.zeros_like(cx))
    sym = inv[..., :, None] * counts * inv[..., None, :]
    n_present = (cx > 0).sum(-1)
    trace = sym.diagonal(dim1=-2, dim2=-1).sum(-1)
    out = torch.where(n_present == 2, (trace - 1).abs(), out)
    big = n_present > 2
    if bool(big.any()):
        ev = torch.linalg.eigvalsh(sym[big]).abs().sort(dim=-1).values
        out[big] = ev[:, -2]
    return out


def _weights(gray: torch.Tensor, n_gray: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-voxel weight matrices (B, m*m, F) of the features that are linear in p, and the shift c0."""
    gi, gj = gray[:, :, None], gray[:, None, :]
    k = (gi - gj).abs()
    c0 = 2 * gray[:, 0]  # shift of the (i + j) moments (smallest level), against cancellation
    s = gi + gj - c0[:, None, None]
    inv_var = torch.where(k > 0, 1 / k.clamp(min=1) ** 2, torch.zeros_like(k))
    w = torch.stack([k, k ** 2, 1 / (1 + k ** 2), 1 / (1 + k ** 2 / n_gray ** 2), 1 / (1 + k),
                     1 / (1 + k / n_gray), inv_var, s, s ** 2, s ** 3, s ** 4, gi * gj], dim=-1)
    return w.reshape(gray.shape[0], -1, w.shape[-1]), c0


def glcm_features(counts: torch.Tensor, gray: torch.Tensor, names: tuple[str, ...], *, n_gray: int,
                  n_distinct: int) -> dict[str, torch.Tensor]:
    """GLCM features per voxel from per-direction counts.

    Args:
        counts: (B, A, m, m) co-occurrence counts (local levels).
        gray: (B, m) global grey value of each local level.
        names: features to return.
        n_gray: Ng (largest grey level of the binning region), used by Idmn, Idn and the histograms.
        n_distinct: distinct grey levels of the binning region (MCC is 1 when it is below 2).

    Returns:
        name -> (B,) float64, the mean over directions with at least one pair (NaN when none has).
    """
    want = set(names)
    b, a, m, _ = counts.shape
    total = counts.sum((2, 3))
    present = total > 0
    n = torch.where(present, total, torch.ones_like(total))
    w, c0 = _weights(gray, n_gray)
    lin = torch.bmm(counts.reshape(b, a, m * m), w) / n[..., None]  # (B, A, F)
    cx, cy = counts.sum(3), counts.sum(2)
    px, py = cx / n[..., None], cy / n[..., None]
    g = gray[:, None, :]
    ux, uy = (px * g).sum(-1), (py * g).sum(-1)
    f: dict[str, torch.Tensor] = {"JointAverage": ux, "DifferenceAverage": lin[..., 0], "Contrast": lin[..., 1]}
    f["Idm"], f["Idmn"], f["Id"], f["Idn"], f["InverseVariance"] = (lin[..., i] for i in range(2, 7))
    f["DifferenceVariance"] = (lin[..., 1] - lin[..., 0] ** 2).clamp(min=0)
    f["SumAverage"] = lin[..., 7] + c0[:, None]
    d = (ux + uy) - c0[:, None]  # sum p (s - d)^n from the shifted raw moments M1..M4
    m1, m2, m3, m4 = (lin[..., i] for i in range(7, 11))
    f["ClusterTendency"] = m2 - 2 * d * m1 + d ** 2
    f["ClusterShade"] = m3 - 3 * d * m2 + 3 * d ** 2 * m1 - d ** 3
    f["ClusterProminence"] = m4 - 4 * d * m3 + 6 * d ** 2 * m2 - 4 * d ** 3 * m1 + d ** 4
    f["Autocorrelation"] = lin[..., 11]
    sigx2 = (px * (g - ux[..., None]) ** 2).sum(-1)
    sigy2 = (py * (g - uy[..., None]) ** 2).sum(-1)
    f["SumSquares"] = sigx2
    sig = sigx2.sqrt() * sigy2.sqrt()
    corr = (lin[..., 11] - ux * uy) / (sig + EPS)
    f["Correlation"] = torch.where(sig == 0, torch.ones_like(corr), corr)
    f["JointEnergy"] = (counts * counts).sum((2, 3)) / n ** 2
    hxy = _entropy_of_counts(counts, n, (2, 3))
    f["JointEntropy"] = hxy
    if "MaximumProbability" in want:
        f["MaximumProbability"] = counts.amax((2, 3)) / n
    if "DifferenceEntropy" in want:
        f["DifferenceEntropy"] = _hist_entropy(counts, (gray[:, :, None] - gray[:, None, :]).abs().long(), n)
    if "SumEntropy" in want:
        f["SumEntropy"] = _hist_entropy(counts, (gray[:, :, None] + gray[:, None, :]).long(), n)
    if want & {"Imc1", "Imc2"}:
        _information_features(px, py, hxy, f=f)
    if "MCC" in want:
        f["MCC"] = torch.ones_like(hxy) if n_distinct < 2 else _mcc(counts, cx)
    nan = torch.tensor(float("nan"), dtype=counts.dtype, device=counts.device)
    return {name: torch.nanmean(torch.where(present, f[name], nan), dim=1) for name in names}


def _information_features(px: torch.Tensor, py: torch.Tensor, hxy: torch.Tensor, *, f: dict[str, torch.Tensor]) -> None:
    """Imc1 and Imc2 from the marginals: HXY1 = HXY2 = HX + HY wherever p_ij > 0 implies px_i py_j > 0.

    A direction with a single grey level gives 0 for both, as pyradiomics' own arithmetic does. At
    statistical independence (HXY = HX + HY) Imc2 is 0; pyradiomics can instead get a NaN there from
    rounding (square root of -1e-16) and drop that direction from its average - see docs/radiomics.md.
    """
    hx = -torch.special.xlogy(px, px).sum(-1) / LN2  # (B, A, m): small
    hy = -torch.special.xlogy(py, py).sum(-1) / LN2
    single = (px > 0).sum(-1) <= 1
    hxy1 = hx + hy
    div = torch.fmax(hx, hy)
    imc1 = (hxy - hxy1) / torch.where(div != 0, div, torch.ones_like(div))
    f["Imc1"] = torch.where(single | (div == 0), torch.zeros_like(imc1), imc1)
    imc2 = torch.sqrt((1 - torch.exp(-2 * (hxy1 - hxy))).clamp(min=0))
    f["Imc2"] = torch.where(single, torch.zeros_like(imc2), imc2)
