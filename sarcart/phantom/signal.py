"""Balanced SSFP (TRUFI) steady-state signal: on-resonance Freeman-Hill form and the off-resonance profile.

Every function accepts Python floats, numpy arrays or torch tensors (any device) for the tissue
parameters and the off-resonance angle and returns the same kind; flip angle and TR are scalars.

Equations (E1 = exp(-TR/T1), E2 = exp(-TR/T2), alpha the flip angle):

* On resonance, TE = TR/2, alternating RF phase (Freeman-Hill form; review: Bieri & Scheffler,
  JMRI 2013;38:2-11, doi 10.1002/jmri.24163)::

      S = M0 sin(a) (1 - E1) sqrt(E2) / [1 - (E1 - E2) cos(a) - E1 E2]

* General transverse steady state right after the RF pulse (Xiang & Hoff, MRM 2014;71:927,
  doi 10.1002/mrm.24704)::

      I(theta) = M (1 - E2 exp(i theta)) / (1 - b cos(theta))
      M = M0 (1 - E1) sin(a) / D,   b = E2 (1 - E1)(1 + cos(a)) / D
      D = 1 - E1 cos(a) - E2^2 (E1 - cos(a))

  ``theta`` is the precession per TR plus the RF phase increment; with phase-alternated RF the
  passband centre is ``theta = pi`` and ``theta = pi + 2 pi df TR`` for an off-resonance ``df`` (Hz).
  At the echo (TE = TR/2) the magnitude is ``|I(theta)| sqrt(E2)``, which equals the Freeman-Hill
  value at ``theta = pi`` (checked numerically in the tests).

* Flip angle of maximum signal: cos(a_opt) = (E1 - E2) / (1 - E1 E2) (tends to (T1 - T2)/(T1 + T2)
  for TR << T2; Bieri & Scheffler 2013).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sarcart.errors import ConfigError

#: a float, numpy array or torch tensor (kept as the caller gave it)
ArrayT = Any


def _lib(*values: Any) -> Any:
    """numpy, or torch when any argument is a torch tensor (torch is imported only then)."""
    for v in values:
        if type(v).__module__.startswith("torch"):
            import torch

            return torch
    return np


def _check_sequence(flip_deg: float, tr_ms: float) -> tuple[float, float]:
    if not 0.0 < float(flip_deg) < 180.0:
        raise ConfigError(f"flip_deg must be in (0, 180) degrees, got {flip_deg}; a TRUFI uses e.g. 60")
    if not float(tr_ms) > 0.0:
        raise ConfigError(f"tr_ms must be positive, got {tr_ms}; a 0.35 T TRUFI uses about 3 ms")
    return math.radians(float(flip_deg)), float(tr_ms)


def relaxation(t1_ms: ArrayT, t2_ms: ArrayT, tr_ms: float) -> tuple[ArrayT, ArrayT]:
    """E1 = exp(-TR/T1) and E2 = exp(-TR/T2), same type as the inputs."""
    xp = _lib(t1_ms, t2_ms)
    t1 = t1_ms if xp is not np else np.asarray(t1_ms, dtype=np.float64)
    t2 = t2_ms if xp is not np else np.asarray(t2_ms, dtype=np.float64)
    return xp.exp(-tr_ms / t1), xp.exp(-tr_ms / t2)


def freeman_hill(t1_ms: ArrayT, t2_ms: ArrayT, pd: ArrayT | float = 1.0, *, flip_deg: float = 60.0,
                 tr_ms: float = 3.0) -> ArrayT:
    """On-resonance bSSFP magnitude at TE = TR/2 (Freeman-Hill form, doi 10.1002/jmri.24163).

    Args:
        t1_ms: T1 (ms), any shape. t2_ms: T2 (ms), broadcastable with ``t1_ms``.
        pd: proton density M0 (relative), broadcastable.
        flip_deg: flip angle (degrees). tr_ms: repetition time (ms).

    Returns:
        Signal in units of M0, same shape/type as the broadcast inputs.
    """
    a, tr = _check_sequence(flip_deg, tr_ms)
    e1, e2 = relaxation(t1_ms, t2_ms, tr)
    xp = _lib(t1_ms, t2_ms)
    num = math.sin(a) * (1.0 - e1) * xp.sqrt(e2)
    return pd * num / (1.0 - (e1 - e2) * math.cos(a) - e1 * e2)


def xiang_hoff_terms(t1_ms: ArrayT, t2_ms: ArrayT, pd: ArrayT | float = 1.0, *, flip_deg: float = 60.0,
                     tr_ms: float = 3.0) -> tuple[ArrayT, ArrayT, ArrayT]:
    """``(M, b, E2)`` of the general bSSFP steady state (Xiang & Hoff 2014, doi 10.1002/mrm.24704)."""
    a, tr = _check_sequence(flip_deg, tr_ms)
    e1, e2 = relaxation(t1_ms, t2_ms, tr)
    ca = math.cos(a)
    d = 1.0 - e1 * ca - e2 * e2 * (e1 - ca)
    m = pd * (1.0 - e1) * math.sin(a) / d
    b = e2 * (1.0 - e1) * (1.0 + ca) / d
    return m, b, e2


def bssfp_profile(t1_ms: ArrayT, t2_ms: ArrayT, theta: ArrayT | float, *, pd: ArrayT | float = 1.0,
                  flip_deg: float = 60.0, tr_ms: float = 3.0, at_echo: bool = True) -> ArrayT:
    """Magnitude of the bSSFP steady state at resonance offset angle ``theta`` (rad).

    ``|I(theta)| = M sqrt(1 - 2 E2 cos(theta) + E2^2) / (1 - b cos(theta))`` (Xiang & Hoff 2014,
    doi 10.1002/mrm.24704), times ``sqrt(E2)`` at the echo (TE = TR/2) when ``at_echo``.

    Args:
        theta: precession per TR plus RF phase increment (rad); ``pi`` = passband centre with
            alternating RF. Broadcastable with the tissue arrays.
    """
    m, b, e2 = xiang_hoff_terms(t1_ms, t2_ms, pd, flip_deg=flip_deg, tr_ms=tr_ms)
    xp = _lib(t1_ms, t2_ms, theta)
    c = xp.cos(theta) if xp is not np else np.cos(np.asarray(theta, dtype=np.float64))
    mag = m * xp.sqrt(1.0 - 2.0 * e2 * c + e2 * e2) / (1.0 - b * c)
    return mag * xp.sqrt(e2) if at_echo else mag


def bssfp_complex(t1_ms: float, t2_ms: float, theta: np.ndarray, *, pd: float = 1.0, flip_deg: float = 60.0,
                  tr_ms: float = 3.0) -> np.ndarray:
    """Complex ``I(theta)`` right after the RF pulse (numpy only; for checks and plots)."""
    m, b, e2 = xiang_hoff_terms(t1_ms, t2_ms, pd, flip_deg=flip_deg, tr_ms=tr_ms)
    th = np.asarray(theta, dtype=np.float64)
    return m * (1.0 - e2 * np.exp(1j * th)) / (1.0 - b * np.cos(th))


def theta_from_offresonance(df_hz: ArrayT, tr_ms: float) -> ArrayT:
    """Resonance offset angle with phase-alternated RF: ``pi + 2 pi df TR`` (rad)."""
    return math.pi + 2.0 * math.pi * df_hz * (tr_ms * 1e-3)


def optimal_flip_deg(t1_ms: ArrayT, t2_ms: ArrayT, tr_ms: float = 3.0) -> ArrayT:
    """Flip angle (degrees) maximising the on-resonance signal: cos a = (E1 - E2)/(1 - E1 E2).

    Reference: Bieri & Scheffler, JMRI 2013;38:2-11, doi 10.1002/jmri.24163.
    """
    e1, e2 = relaxation(t1_ms, t2_ms, float(tr_ms))
    xp = _lib(t1_ms, t2_ms)
    return xp.rad2deg(xp.arccos((e1 - e2) / (1.0 - e1 * e2)))


def t2_for_signal(target: float, t1_ms: float, pd: float, *, flip_deg: float, tr_ms: float,
                  t2_bounds_ms: tuple[float, float] = (0.5, 5000.0)) -> float:
    """T2 (ms) whose on-resonance Freeman-Hill signal equals ``target`` (the signal rises with T2).

    Used to give hypoxic tumour a T2-shortening signature of a requested contrast. The result is
    clipped to ``t2_bounds_ms`` when the target lies outside the reachable range.
    """
    from scipy.optimize import brentq

    lo, hi = t2_bounds_ms

    def f(t2: float) -> float:
        return float(freeman_hill(t1_ms, t2, pd, flip_deg=flip_deg, tr_ms=tr_ms)) - target

    if f(lo) >= 0.0:
        return lo
    if f(hi) <= 0.0:
        return hi
    return float(brentq(f, lo, hi, xtol=1e-6))
