"""bSSFP signal equations against an independent Bloch simulation and analytic results."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar

from sarcart.phantom import tissues as T
from sarcart.phantom.config import PhantomConfig
from sarcart.phantom.render import signal_lut
from sarcart.phantom.signal import (
    bssfp_profile,
    freeman_hill,
    optimal_flip_deg,
    t2_for_signal,
    theta_from_offresonance,
)

# ----------------------------------------------------------------- independent Bloch simulation


def _rx(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=float)


def _rz(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=float)


def _free(tau: float, t1: float, t2: float, phi: float) -> tuple[np.ndarray, np.ndarray]:
    """Affine map (A, b) of free precession by ``phi`` and relaxation over ``tau`` ms."""
    e1, e2 = np.exp(-tau / t1), np.exp(-tau / t2)
    a = np.diag([e2, e2, e1]) @ _rz(phi)
    return a, np.array([0.0, 0.0, 1.0 - e1])


def _compose(second: tuple[np.ndarray, np.ndarray], first: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    a2, b2 = second
    a1, b1 = first
    return a2 @ a1, a2 @ b1 + b2


def steady_state_echo(t1: float, t2: float, flip_deg: float, tr: float, df_hz: float) -> float:
    """|Mxy| at TE = TR/2 after the +alpha pulse, RF phase alternating (+alpha, -alpha), M0 = 1.

    The two-TR propagator is composed and applied to itself 2^40 times by repeated squaring,
    starting from equilibrium, so the result is the converged steady state of the iteration.
    """
    alpha = np.radians(flip_deg)
    phi_half = 2.0 * np.pi * df_hz * tr * 1e-3 / 2.0
    half = _free(tr / 2.0, t1, t2, phi_half)
    rf_p, rf_m = (_rx(alpha), np.zeros(3)), (_rx(-alpha), np.zeros(3))
    # echo (after +pulse) -> half TR -> -pulse -> full TR -> +pulse -> half TR -> echo
    step = half
    for op in (rf_m, half, half, rf_p, half):
        step = _compose(op, step)
    a, b = step
    for _ in range(40):
        a, b = a @ a, a @ b + b
    m_eq = np.array([0.0, 0.0, 1.0])
    # propagate equilibrium through the first pulse and half TR, then the converged map
    m = half[0] @ (_rx(alpha) @ m_eq) + half[1]
    m = a @ m + b
    return float(np.hypot(m[0], m[1]))


# ----------------------------------------------------------------- tests

CASES = [(455.0, 28.0, 60.0), (180.0, 93.0, 60.0), (4200.0, 2050.0, 60.0), (600.0, 80.0, 35.0), (500.0, 80.0, 110.0)]


@pytest.mark.parametrize("t1, t2, flip", CASES)
def test_freeman_hill_matches_bloch_simulation_on_resonance(t1: float, t2: float, flip: float) -> None:
    expected = steady_state_echo(t1, t2, flip, 3.0, 0.0)
    assert float(freeman_hill(t1, t2, 1.0, flip_deg=flip, tr_ms=3.0)) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("t1, t2, flip", CASES[:3])
@pytest.mark.parametrize("df_hz", [0.0, 40.0, 120.0, 160.0, 250.0])
def test_offresonance_profile_matches_bloch_simulation(t1: float, t2: float, flip: float, df_hz: float) -> None:
    theta = theta_from_offresonance(df_hz, 3.0)
    got = float(bssfp_profile(t1, t2, theta, pd=1.0, flip_deg=flip, tr_ms=3.0))
    assert got == pytest.approx(steady_state_echo(t1, t2, flip, 3.0, df_hz), rel=1e-8, abs=1e-12)


def test_passband_centre_equals_freeman_hill_and_band_is_dark() -> None:
    t1 = np.array([455.0, 180.0, 3000.0])
    t2 = np.array([28.0, 93.0, 800.0])
    at_pi = bssfp_profile(t1, t2, np.pi)
    np.testing.assert_allclose(at_pi, freeman_hill(t1, t2, 1.0), rtol=1e-12)
    at_band = bssfp_profile(t1, t2, 0.0)  # stop band of phase-alternated bSSFP
    assert np.all(at_band < 0.2 * at_pi)


@pytest.mark.parametrize("t1, t2", [(455.0, 28.0), (180.0, 93.0), (3000.0, 800.0), (500.0, 80.0)])
def test_optimal_flip_angle_is_the_numerical_maximum(t1: float, t2: float) -> None:
    res = minimize_scalar(lambda a: -float(freeman_hill(t1, t2, 1.0, flip_deg=a, tr_ms=3.0)),
                          bounds=(1.0, 179.0), method="bounded", options={"xatol": 1e-6})
    assert float(optimal_flip_deg(t1, t2, 3.0)) == pytest.approx(res.x, abs=1e-3)
    # TR << T2 limit: cos(a) = (T1 - T2)/(T1 + T2)
    approx = np.degrees(np.arccos((t1 - t2) / (t1 + t2)))
    assert float(optimal_flip_deg(t1, t2, 3.0)) == pytest.approx(approx, abs=1.5)


def test_torch_tensors_give_the_numpy_values() -> None:
    t1 = np.array([455.0, 180.0, 600.0])
    t2 = np.array([28.0, 93.0, 80.0])
    ref = freeman_hill(t1, t2, 0.8)
    got = freeman_hill(torch.tensor(t1), torch.tensor(t2), 0.8)
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12)
    prof = bssfp_profile(torch.tensor(t1), torch.tensor(t2), torch.tensor(2.5, dtype=torch.float64))
    np.testing.assert_allclose(prof.numpy(), bssfp_profile(t1, t2, 2.5), rtol=1e-12)


def test_t2_for_signal_inverts_freeman_hill() -> None:
    target = float(freeman_hill(600.0, 55.0, 0.85))
    assert t2_for_signal(target, 600.0, 0.85, flip_deg=60.0, tr_ms=3.0) == pytest.approx(55.0, rel=1e-5)


def test_contrast_order_of_the_tissue_table() -> None:
    s = signal_lut(PhantomConfig())
    muscle = s[T.MUSCLE]
    for bright in (T.FAT, T.SPINAL_CANAL, T.BOWEL_CONTENT, T.NECROSIS, T.VESSEL):
        assert s[bright] > 2.0 * muscle, T.BY_VALUE[bright].name
    assert s[T.KIDNEY_L] > 1.5 * muscle and s[T.KIDNEY_R] > 1.5 * muscle
    assert s[T.GAS] == 0.0 and s[T.BONE_CORTEX] < 0.05 * muscle
    assert muscle < s[T.TUMOUR] < s[T.NECROSIS]


def test_every_tissue_has_a_documented_source() -> None:
    for t in T.TISSUES:
        assert t.source and (t.verified or "UNVERIFIED" in t.source)
    assert not T.BY_VALUE[T.TUMOUR].verified
