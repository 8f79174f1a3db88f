"""Local first-order statistics of each kernel (pyradiomics ``firstorder`` definitions).

Formulas: pyradiomics documentation (van Griethuysen et al., Cancer Res 2017;77:e104,
doi:10.1158/0008-5472.CAN-17-0339) and IBSI (Zwanenburg et al., Radiology 2020,
doi:10.1148/radiol.2020191145). Kurtosis is Pearson's (IBSI's excess kurtosis + 3), percentiles use
numpy's linear interpolation, skewness and kurtosis of a flat kernel are 0.
"""

from __future__ import annotations

import torch

EPS = 2.220446049250313e-16  # numpy.spacing(1), as in pyradiomics' entropy


def _percentile(srt: torch.Tensor, n: torch.Tensor, q: float) -> torch.Tensor:
    """Linear-interpolation percentile (numpy default) of rows sorted ascending with NaN/inf last."""
    h = (n - 1).double() * (q / 100.0)
    lo = torch.floor(h).long().clamp(min=0)
    hi = torch.minimum(lo + 1, (n - 1).clamp(min=0))
    t = h - lo.double()
    a = srt.gather(1, lo[:, None])[:, 0]
    b = srt.gather(1, hi[:, None])[:, 0]
    return torch.where(t >= 0.5, b - (b - a) * (1 - t), a + (b - a) * t)


def _robust_mad(raw: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """Mean absolute deviation from the mean of the values between the 10th and 90th percentiles."""
    ni = inside.sum(1).double()
    mean_in = torch.where(inside, raw, torch.zeros_like(raw)).sum(1) / ni
    return torch.where(inside, (raw - mean_in[:, None]).abs(), torch.zeros_like(raw)).sum(1) / ni


def firstorder_maps(raw: torch.Tensor, disc: torch.Tensor, names: tuple[str, ...], *,
                    n_gray: int, shift: float, voxel_volume_mm3: float) -> dict[str, torch.Tensor]:
    """First-order features of each kernel.

    Args:
        raw: (B, K) float64 intensities, NaN where the position does not count.
        disc: (B, K) int64 grey levels (1..n_gray), 0 where the position does not count.
        names: features to return (pyradiomics names).
        n_gray: number of grey levels (histogram width for Entropy/Uniformity).
        shift: ``voxelArrayShift`` c of Energy/TotalEnergy/RootMeanSquared.
        voxel_volume_mm3: voxel volume for TotalEnergy.

    Returns:
        name -> (B,) float64.
    """
    valid = ~torch.isnan(raw)
    n = valid.sum(1)
    nd = n.double()
    x0 = torch.where(valid, raw, torch.zeros_like(raw))
    mean = x0.sum(1) / nd
    dev = torch.where(valid, raw - mean[:, None], torch.zeros_like(raw))
    out: dict[str, torch.Tensor] = {}
    want = set(names)

    def moment(k: int) -> torch.Tensor:
        return (dev ** k).sum(1) / nd

    srt = torch.sort(torch.where(valid, raw, torch.full_like(raw, float("inf"))), dim=1).values
    pct = {q: _percentile(srt, n, q) for q in (10, 25, 50, 75, 90)}
    energy = ((x0 + shift) ** 2 * valid).sum(1)
    if "Energy" in want:
        out["Energy"] = energy
    if "TotalEnergy" in want:
        out["TotalEnergy"] = energy * voxel_volume_mm3
    if "RootMeanSquared" in want:
        out["RootMeanSquared"] = torch.sqrt(energy / nd)
    out["Minimum"] = srt[:, 0]
    out["Maximum"] = srt.gather(1, (n - 1).clamp(min=0)[:, None])[:, 0]
    out["Range"] = out["Maximum"] - out["Minimum"]
    out["Mean"] = mean
    out["Median"] = pct[50]
    out["10Percentile"] = pct[10]
    out["90Percentile"] = pct[90]
    out["InterquartileRange"] = pct[75] - pct[25]
    out["MeanAbsoluteDeviation"] = dev.abs().sum(1) / nd
    out["RobustMeanAbsoluteDeviation"] = _robust_mad(raw, valid & (raw >= pct[10][:, None]) & (raw <= pct[90][:, None]))
    m2 = moment(2)
    out["Variance"] = m2
    if want & {"Skewness", "Kurtosis"}:
        m2s = torch.where(m2 == 0, torch.ones_like(m2), m2)
        out["Skewness"] = moment(3) / m2s ** 1.5
        out["Kurtosis"] = moment(4) / m2s ** 2
    if want & {"Entropy", "Uniformity"}:
        counts = torch.zeros((raw.shape[0], n_gray + 1), dtype=torch.float64, device=raw.device)
        counts.scatter_add_(1, disc, valid.double())
        p = counts[:, 1:] / nd[:, None]
        out["Entropy"] = -(p * torch.log2(p + EPS)).sum(1)
        out["Uniformity"] = (p ** 2).sum(1)
    return {k: out[k] for k in names}
