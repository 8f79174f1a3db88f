"""IBSI 2 Gabor filters and undecimated separable wavelets in PyTorch.

Definitions: IBSI reference manual for convolutional filters (arXiv:2006.05470,
doi:10.48550/arXiv.2006.05470); conventions below were fixed against the IBSI 2 phase 1 consensus
response maps (tests 4.a.1-4.b.2, 5.a.1-7.a.2; ``tests/radiomics/test_filters.py``).

Gabor (Gabor 1946, doi:10.1049/ji-3-2.1946.0074): 2D kernel in a plane,
g(x, y) = exp(-(x'^2 + gamma^2 y'^2) / (2 sigma^2)) exp(i 2 pi x' / lambda), x' = x cos t + y sin t,
y' = -x sin t + y cos t, (x, y) = (i, j) in voxels; half-width floor(4 sigma max(1, 1/gamma) + 0.5) voxels;
the response is the modulus of the complex convolution (done by FFT). Rotation invariance averages the
responses over t = 0, dt, ..., 2 pi - dt and over the three orthogonal planes.

Wavelets (Mallat 1989, doi:10.1109/34.192463; a-trous algorithm): PyWavelets' decomposition filters,
applied as convolutions along x, y, z without decimation; level j uses the filters upsampled by 2^(j-1)
(zeros inserted after every tap) on the low-pass (LLL) output of level j - 1. Rotation invariance averages
the responses of the 24 right-angle rotations of the image (each rotated back).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sarcart.errors import ConfigError
from sarcart.radiomics.filters import Padding, _check, _rotations, pad, separable


def gabor_kernel(sigma_vox: float, lambda_vox: float, *, gamma: float, theta: float) -> np.ndarray:
    """Complex 2D Gabor kernel (2h+1, 2h+1), indexed [x, y] (see the module docstring)."""
    half = (math.floor(4 * sigma_vox * max(1.0, 1.0 / gamma) + 0.5))
    ax = np.arange(-half, half + 1, dtype=np.float64)
    x, y = np.meshgrid(ax, ax, indexing="ij")
    xt = x * math.cos(theta) + y * math.sin(theta)
    yt = -x * math.sin(theta) + y * math.cos(theta)
    return np.exp(-(xt ** 2 + gamma ** 2 * yt ** 2) / (2 * sigma_vox ** 2)) * np.exp(2j * math.pi * xt / lambda_vox)


def _plane_modulus(x: torch.Tensor, kernel: np.ndarray, *, mode: Padding, plane: tuple[int, int]) -> torch.Tensor:
    other = next(d for d in range(3) if d not in plane)
    order = (plane[0], plane[1], other)
    xs = x.permute(*order)
    h = (kernel.shape[0] - 1) // 2
    xp = pad(xs, ((h, h), (h, h), (0, 0)), mode)
    kt = torch.zeros(xp.shape[:2], dtype=torch.complex128, device=x.device)
    kt[: kernel.shape[0], : kernel.shape[1]] = torch.as_tensor(kernel, device=x.device)
    spec = torch.fft.fft2(xp.to(torch.complex128), dim=(0, 1)) * torch.fft.fft2(kt)[:, :, None]
    out = torch.fft.ifft2(spec, dim=(0, 1))[2 * h: 2 * h + xs.shape[0], 2 * h: 2 * h + xs.shape[1]].abs()
    return out.permute(*np.argsort(order))


def gabor_filter(image: torch.Tensor | np.ndarray, *, sigma_mm: float, lambda_mm: float, gamma: float,
                 theta: float, spacing_mm: float, mode: Padding = "mirror",
                 rotation_invariant: bool = False) -> torch.Tensor:
    """Gabor response modulus in the (x, y) plane; with ``rotation_invariant``, ``theta`` is the angular
    step and responses are averaged over orientations and the three orthogonal planes."""
    if min(sigma_mm, lambda_mm, gamma, spacing_mm) <= 0:
        raise ConfigError("sigma_mm, lambda_mm, gamma and spacing_mm must be positive")
    x = _check(image)
    s, lam = sigma_mm / spacing_mm, lambda_mm / spacing_mm
    if rotation_invariant:
        n = round(2 * math.pi / theta)
        if n < 1 or not math.isclose(n * theta, 2 * math.pi, rel_tol=1e-6):
            raise ConfigError(f"theta must divide 2 pi for rotation invariance, got {theta}")
        thetas, planes = [i * theta for i in range(n)], [(0, 1), (0, 2), (1, 2)]
    else:
        thetas, planes = [theta], [(0, 1)]
    acc = torch.zeros_like(x)
    for plane in planes:
        for t in thetas:
            acc = acc + _plane_modulus(x, gabor_kernel(s, lam, gamma=gamma, theta=t), mode=mode, plane=plane)
    return acc / (len(thetas) * len(planes))


def _upsample(taps: np.ndarray, level: int) -> np.ndarray:
    step = 2 ** (level - 1)
    out = np.zeros(len(taps) * step)
    out[::step] = taps
    return out


def wavelet_filter(image: torch.Tensor | np.ndarray, wavelet: str, response: str, *, level: int = 1,
                   mode: Padding = "mirror", rotation_invariant: bool = False) -> torch.Tensor:
    """Undecimated separable wavelet response, e.g. ``response="LHL"`` (low-pass along x, high-pass
    along y, low-pass along z) at decomposition ``level`` (see the module docstring)."""
    import pywt

    if wavelet not in pywt.wavelist(kind="discrete"):
        raise ConfigError(f"unknown discrete wavelet {wavelet!r}; see pywt.wavelist(kind='discrete')")
    if len(response) != 3 or set(response) - {"L", "H"} or level < 1:
        raise ConfigError(f"response must be 3 letters of L/H and level >= 1, got {response!r}, {level}")
    w = pywt.Wavelet(wavelet)
    lo, hi = np.asarray(w.dec_lo), np.asarray(w.dec_hi)

    def apply(x: torch.Tensor, code: str, lvl: int) -> torch.Tensor:
        return separable(x, tuple(_upsample((lo if c == "L" else hi), lvl) for c in code), mode)

    def decompose(x: torch.Tensor) -> torch.Tensor:
        for lvl in range(1, level):
            x = apply(x, "LLL", lvl)
        return apply(x, response, level)

    x = _check(image)
    if not rotation_invariant:
        return decompose(x)
    acc = torch.zeros_like(x)
    rots = _rotations(3)
    for perm, flips in rots:
        y = x.permute(*perm)
        dims = [d for d, fl in enumerate(flips) if fl]
        y = decompose(y.flip(dims) if dims else y)
        y = y.flip(dims) if dims else y
        acc = acc + y.permute(*np.argsort(perm))
    return acc / len(rots)
