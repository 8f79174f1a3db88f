"""Kernel geometry, grey-level discretisation and per-voxel neighbourhoods for the voxel-wise maps.

Semantics follow pyradiomics 3.0.1's voxel-based extraction (van Griethuysen et al., Cancer Res
2017;77:e104, doi:10.1158/0008-5472.CAN-17-0339): the image is cropped to the ROI bounding box plus
the kernel radius; grey levels are discretised once over the ROI (or over the whole crop when the kernel
is not masked); the kernel of a voxel is the (2r+1)^3 cube around it, and only kernel voxels inside the
ROI (masked kernel) take part. Texture matrices of a kernel use neighbours inside that same cube only.

Each kernel's grey levels are relabelled to local indices ``0..m-1`` (``m`` distinct levels in the
kernel), so texture matrices are ``m x m`` instead of ``Ng x Ng``; the global grey values stay available
for the formulas. Voxels are processed in chunks sorted by ``m`` (see :func:`iter_chunks`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from sarcart.errors import InvalidImageError
from sarcart.radiomics.maps.settings import MapSettings


def discretise(values: np.ndarray, *, bin_width: float, bin_count: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Grey-level discretisation exactly as pyradiomics ``imageoperations.binImage`` does it.

    Fixed bin width W: edges from ``min - (min mod W)`` in steps of W, ``digitize`` (bins half open),
    i.e. ``floor(x/W) - floor(min/W) + 1``. Fixed bin count N: ``numpy.histogram`` edges with the last
    edge raised by 1. IBSI discusses both (Zwanenburg et al. 2020, doi:10.1148/radiol.2020191145).

    Args:
        values: intensities of the binning region (1D, any real dtype; kept as given, as pyradiomics does).

    Returns:
        ``(levels, edges)``: int64 levels >= 1 of ``values`` and the bin edges.
    """
    if values.size == 0:
        raise InvalidImageError("cannot discretise an empty ROI")
    if bin_count is not None:
        edges = np.histogram(values, bin_count)[1]
        edges[-1] += 1
    else:
        minimum, maximum = min(values), max(values)
        low = minimum - (minimum % bin_width)
        edges = np.arange(low, maximum + 2 * bin_width, bin_width)
        if len(edges) == 1:
            edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
    return np.digitize(values, edges).astype(np.int64), np.asarray(edges)


def _offsets(radius: int, allowed_dims: tuple[bool, bool, bool]) -> list[tuple[int, int, int]]:
    rng = range(-radius, radius + 1)
    out = []
    for off in itertools.product(rng, rng, rng):
        if any(o != 0 and not ok for o, ok in zip(off, allowed_dims)):
            continue
        out.append(off)
    return out


@dataclass(frozen=True)
class KernelGeometry:
    """Static tables of one kernel cube (positions ``t = 0..K-1``, K = (2r+1)^3).

    Attributes:
        radius: kernel radius r.
        positions: (K, 3) offsets of the cube positions from the centre voxel.
        angles: (A, 3) unidirectional neighbour offsets (13 in 3D; fewer when a dimension has size 1).
        pair_p, pair_q, pair_angle: (P,) every ordered pair ``q = p + angle`` inside the cube.
        neighbours: (K, 2A) index of the neighbour in each of the 2A directions, ``K`` when outside.
        lines: (L, T) position sequences along each angle (GLRLM runs), padded with ``K``.
        line_angle: (L,) angle index of each line.
        next_pos: (A, K) position one step along each angle, ``K`` when outside the cube.
        prev_pos: (A, K) position one step against each angle, ``K`` when outside the cube.
    """

    radius: int
    positions: np.ndarray
    angles: np.ndarray
    pair_p: np.ndarray
    pair_q: np.ndarray
    pair_angle: np.ndarray
    neighbours: np.ndarray
    lines: np.ndarray
    line_angle: np.ndarray
    next_pos: np.ndarray
    prev_pos: np.ndarray

    @property
    def size(self) -> int:
        return int(self.positions.shape[0])

    @classmethod
    def build(cls, radius: int, allowed_dims: tuple[bool, bool, bool] = (True, True, True)) -> KernelGeometry:
        side = 2 * radius + 1
        pos = np.array(list(itertools.product(range(-radius, radius + 1), repeat=3)), dtype=np.int64)
        index = {tuple(p): t for t, p in enumerate(pos.tolist())}
        unit = [o for o in _offsets(1, allowed_dims) if o != (0, 0, 0)]
        angles = np.array([o for o in unit if o > (0, 0, 0)], dtype=np.int64)  # lexicographically positive half
        both = np.concatenate([angles, -angles])
        pairs = [(index[tuple(p)], index[tuple(p + a)], ai) for ai, a in enumerate(angles) for p in pos
                 if tuple(p + a) in index]
        pp, pq, pa = (np.array(x, dtype=np.int64) for x in zip(*pairs)) if pairs else (np.zeros(0, np.int64),) * 3
        nb = np.full((len(pos), len(both)), len(pos), dtype=np.int64)
        for t, p in enumerate(pos):
            for d, a in enumerate(both):
                nb[t, d] = index.get(tuple(p + a), len(pos))
        lines, line_angle = [], []
        for ai, a in enumerate(angles):
            for p in pos:
                if tuple(p - a) in index:
                    continue  # not a line start
                seq, cur = [], p.copy()
                while tuple(cur) in index:
                    seq.append(index[tuple(cur)])
                    cur = cur + a
                lines.append(seq + [len(pos)] * (side - len(seq)))
                line_angle.append(ai)
        k = len(pos)
        nxt = np.array([[index.get(tuple(p + a), k) for p in pos] for a in angles], dtype=np.int64).reshape(-1, k)
        prv = np.array([[index.get(tuple(p - a), k) for p in pos] for a in angles], dtype=np.int64).reshape(-1, k)
        return cls(radius, pos, angles, pp, pq, pa, nb, np.array(lines, dtype=np.int64),
                   np.array(line_angle, dtype=np.int64), nxt, prv)


@dataclass
class Neighbourhoods:
    """Per-ROI-voxel kernel contents (rows = ROI voxels, columns = kernel positions).

    Attributes:
        raw: (V, K) float64 intensities, NaN where the position does not count.
        disc: (V, K) int64 global grey levels (1..Ng), 0 where the position does not count.
        disc_fo: (V, K) like ``disc`` but binned from float64 intensities, as pyradiomics' first-order
            class does (it differs from ``disc`` only for float32 images, by rounding).
        levels: (V, K) int64 local level index (0..m_v-1), -1 where the position does not count.
        gray: (V, m_max) float64 global grey value of each local level (1.0 as padding).
        n_levels: (V,) number of distinct levels m_v in each kernel.
        n_gray: number of grey levels Ng (maximum level in the binning region).
        n_distinct: number of distinct grey levels present in the binning region.
        voxel_index: (V, 3) int64 indices of the ROI voxels in the input array.
    """

    raw: torch.Tensor
    disc: torch.Tensor
    disc_fo: torch.Tensor
    levels: torch.Tensor
    gray: torch.Tensor
    n_levels: torch.Tensor
    n_gray: int
    n_distinct: int
    voxel_index: np.ndarray


def _crop_bounds(roi: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.argwhere(roi)
    lo = np.maximum(idx.min(0) - radius, 0)
    hi = np.minimum(idx.max(0) + radius + 1, np.array(roi.shape))
    return lo, hi


def gather(image: np.ndarray, roi: np.ndarray, settings: MapSettings, *, geometry: KernelGeometry,
           device: torch.device | str = "cpu") -> Neighbourhoods:
    """Crop, discretise and collect each ROI voxel's kernel (see the module docstring).

    Args:
        image: (nx, ny, nz) intensities (any real dtype).
        roi: (nx, ny, nz) bool ROI.
    """
    r = settings.kernel_radius
    lo, hi = _crop_bounds(roi, r)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    crop_img, crop_roi = image[sl], roi[sl]
    region = crop_roi if settings.masked_kernel else np.ones_like(crop_roi)
    levels_region, _ = discretise(crop_img[region], bin_width=settings.bin_width, bin_count=settings.bin_count)
    levels_fo, _ = discretise(crop_img[region].astype(np.float64), bin_width=settings.bin_width,
                              bin_count=settings.bin_count)
    disc = np.zeros(crop_img.shape, dtype=np.int64)
    disc[region] = levels_region
    disc_fo = np.zeros(crop_img.shape, dtype=np.int64)
    disc_fo[region] = levels_fo
    pad = [(r, r)] * 3
    disc_p = np.pad(disc, pad)
    region_p = np.pad(region, pad)
    raw_p = np.pad(crop_img.astype(np.float64), pad)
    shape = np.array(disc_p.shape)
    strides = np.array([shape[1] * shape[2], shape[2], 1])
    vox = np.argwhere(crop_roi)
    centre = torch.as_tensor((vox + r) @ strides, device=device)
    koff = torch.as_tensor(geometry.positions @ strides, device=device)
    flat = centre[:, None] + koff[None, :]
    valid = torch.as_tensor(region_p.reshape(-1), device=device)[flat]
    raw = torch.as_tensor(raw_p.reshape(-1), device=device)[flat].masked_fill(~valid, float("nan"))
    disc_k = torch.as_tensor(disc_p.reshape(-1), device=device)[flat].masked_fill(~valid, 0)
    disc_fo_k = torch.as_tensor(np.pad(disc_fo, pad).reshape(-1), device=device)[flat].masked_fill(~valid, 0)
    n_gray = int(levels_region.max())
    levels, gray, n_levels = local_levels(disc_k, valid, n_gray)
    return Neighbourhoods(raw, disc_k, disc_fo_k, levels, gray, n_levels, n_gray,
                          int(np.unique(levels_region).size), vox + lo)


def local_levels(disc: torch.Tensor, valid: torch.Tensor, n_gray: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Relabel each row's grey levels to 0..m-1 (sorted); returns (levels, gray values, m per row)."""
    big = n_gray + 1
    key = torch.where(valid, disc, torch.full_like(disc, big))
    srt, perm = torch.sort(key, dim=1)
    new = torch.ones_like(srt, dtype=torch.bool)
    new[:, 1:] = srt[:, 1:] != srt[:, :-1]
    rank = torch.cumsum(new.long(), dim=1) - 1
    levels = torch.empty_like(rank).scatter_(1, perm, rank).masked_fill(~valid, -1)
    first = new & (srt < big)
    n_levels = first.sum(1)
    m_max = max(int(n_levels.max()), 1)
    gray = torch.ones((disc.shape[0], m_max + 1), dtype=torch.float64, device=disc.device)
    target = torch.where(first, rank, torch.full_like(rank, m_max))
    gray.scatter_(1, target, torch.where(first, srt, torch.ones_like(srt)).double())
    return levels, gray[:, :m_max].contiguous(), n_levels


@dataclass
class Chunk:
    """A batch of ROI voxels (rows) with at most ``m`` local levels each; see :class:`Neighbourhoods`."""

    rows: torch.Tensor
    raw: torch.Tensor
    disc: torch.Tensor
    disc_fo: torch.Tensor
    levels: torch.Tensor
    gray: torch.Tensor
    m: int


def iter_chunks(hoods: Neighbourhoods, *, budget: int = 4_000_000, cost_per_level2: int = 13):
    """Yield :class:`Chunk`s of voxels sorted by their number of local levels.

    A chunk holds at most ``budget / (cost_per_level2 * m^2)`` voxels (m = the chunk's largest level
    count), which bounds the memory of the ``(B, A, m, m)`` texture matrices.
    """
    order = torch.argsort(hoods.n_levels, stable=True)
    m_sorted = np.maximum(hoods.n_levels[order].cpu().numpy(), 1).astype(np.int64)
    start, total = 0, len(order)
    while start < total:
        # largest chunk whose size x cost x (its largest m)^2 stays within the budget (m is sorted)
        cost = (np.arange(1, total - start + 1) * cost_per_level2) * m_sorted[start:] ** 2
        stop = start + max(1, int(np.searchsorted(cost, budget, side="right")))
        m = int(m_sorted[stop - 1])
        rows = order[start:stop]
        yield Chunk(rows, hoods.raw[rows], hoods.disc[rows], hoods.disc_fo[rows], hoods.levels[rows],
                    hoods.gray[rows, :m], m)
        start = stop
