"""Commissioning of the "water 6X" beam on measured water-tank data, and the derived MR-linac FFF beam.

Honest split: the depth parameters (build-up, attenuation, hardening) are fitted on the measured
6 MV 10x10 depth dose; the lateral kernel (primary and scatter widths, scatter share) and the FFF
off-axis cone are fitted on the *10 MV FFF* profiles (10x10 and 30x30, the only other measured
curves); the measured 6 MV profiles are held out entirely and only test the model (gamma 2 %/2 mm,
global, 10 % low-dose cut-off). The depth fit is repeated after the lateral fit because the
scatter share enters the central-axis depth dose. A second lateral stage (:func:`fit_tail`, also on
the 10 MV FFF profiles only) adds an intermediate Gaussian for the foot of the penumbra: that
three-term kernel is ``water_6x`` (the engine's model), the two-term stage stays available for
comparison (``water_6x_two_term``). The FFF beam is derived from each with its own fitted cone.

Processing (``commission(..., centre_profiles=True)``, the default): every measured profile, training and
held-out alike, is shifted so that the midpoint of its 50 % points is at 0 mm (central-axis centring,
AAPM TG-106, Das et al. 2008, doi 10.1118/1.2969070; :meth:`sarcart.io.mcc.MccScan.centred`). The shift
comes from each measurement alone, never from the model; the 6 MV profiles still take no part in a fit.
``centre_profiles=False`` fits and tests on the positions as measured.

Run ``python -m sarcart.dose.commission [BEAM_DATA_DIR] [--figure PNG]`` to refit (profiles as measured,
then centred), print the residual tables and draw the figure of docs/dose.md.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch

from sarcart.dose.machine import BeamModel
from sarcart.errors import InvalidImageError
from sarcart.io.mcc import MccScan, read_mcc

log = logging.getLogger(__name__)

FIT_KEYS = ("buildup_c", "buildup_beta_per_mm", "mu_per_mm", "eta_per_mm2")
LATERAL_KEYS = ("sigma_p0_mm", "sigma_s0_mm", "ws_max")
TAIL_KEYS = ("tail_share", "sigma_tail_mm")
#: start values (tail share, tail width in mm) of the multi-start tail fit
TAIL_STARTS = ((0.05, 0.15, 0.3), (4.0, 8.0, 12.0))
#: 6 MV FFF is about 2.9 points lower at 10 cm than 6 MV flattened (TrueBeam 66.3 % vs 63.4 %, FACTS.md)
FFF_PDD10_DROP = 2.9


@dataclass(frozen=True)
class PddResiduals:
    """Depth-dose comparison (percent of each curve's own maximum)."""

    dmax_measured_mm: float
    dmax_model_mm: float
    max_abs_beyond_dmax: float
    rms_beyond_dmax: float
    pdd10_measured: float
    pdd10_model: float
    pdd20_measured: float
    pdd20_model: float


@dataclass(frozen=True)
class ProfileResiduals:
    """Profile comparison (percent of the central-axis value)."""

    name: str
    gamma_pass_rate: float
    max_gamma: float
    fwhm_measured_mm: float
    fwhm_model_mm: float
    penumbra_measured_mm: float
    penumbra_model_mm: float
    max_abs_in_field: float


def _model_pdd(model: BeamModel, scan: MccScan, depths: np.ndarray) -> np.ndarray:
    d = torch.as_tensor(depths, dtype=torch.float64)
    out = model.water_dose(d, ssd_mm=scan.ssd_mm, field_mm=(scan.field_crossplane_mm, scan.field_inplane_mm))
    return out.numpy()


def _dmax(depths: np.ndarray, values: np.ndarray) -> float:
    """Depth of maximum from a parabola through the highest sample and its neighbours."""
    i = int(np.argmax(values))
    if 0 < i < len(values) - 1:
        x, y = depths[i - 1:i + 2], values[i - 1:i + 2]
        a, b, _ = np.polyfit(x, y, 2)
        if a < 0:
            return float(np.clip(-b / (2 * a), x[0], x[-1]))
    return float(depths[i])


def fit_depth_dose(scan: MccScan, base: BeamModel) -> BeamModel:
    """Fit ``buildup_c, buildup_beta_per_mm, mu_per_mm, eta_per_mm2`` on a measured PDD.

    Least squares on the curve normalised to its maximum, with the build-up region (depth < 5 mm)
    down-weighted, since detector effects dominate there.
    """
    from scipy.optimize import least_squares

    if scan.curve_type != "PDD":
        raise InvalidImageError(f"fit_depth_dose needs a PDD scan, got {scan.curve_type}")
    depths, meas = scan.position_mm, scan.normalised()
    weight = np.where(depths < 5.0, 0.3, 1.0)
    x0 = np.array([getattr(base, k) for k in FIT_KEYS])

    def resid(x: np.ndarray) -> np.ndarray:
        m = base.model_copy(update=dict(zip(FIT_KEYS, x)))
        fine = _model_pdd(m, scan, np.linspace(0.0, 60.0, 241))
        model = 100.0 * _model_pdd(m, scan, depths) / fine.max()
        return weight * (model - meas)

    res = least_squares(resid, x0, bounds=([0.0, 0.01, 1e-4, -1e-5], [0.99, 2.0, 0.02, 1e-5]), x_scale="jac")
    fitted = base.model_copy(update=dict(zip(FIT_KEYS, (float(v) for v in res.x))))
    log.info("depth-dose fit: %s (cost %.3g)", dict(zip(FIT_KEYS, res.x)), res.cost)
    return fitted.calibrated()


def pdd_residuals(model: BeamModel, scan: MccScan) -> PddResiduals:
    """Compare a model with a measured PDD (both normalised to their own maximum)."""
    depths, meas = scan.position_mm, scan.normalised()
    fine_d = np.linspace(0.0, float(depths.max()), int(depths.max() * 4) + 1)
    fine = _model_pdd(model, scan, fine_d)
    model_pct = 100.0 * _model_pdd(model, scan, depths) / fine.max()
    dmax_m = _dmax(depths, meas)
    beyond = depths >= dmax_m
    diff = model_pct - meas
    interp = lambda y, at: float(np.interp(at, depths, y))
    return PddResiduals(
        dmax_measured_mm=dmax_m, dmax_model_mm=float(fine_d[np.argmax(fine)]),
        max_abs_beyond_dmax=float(np.abs(diff[beyond]).max()), rms_beyond_dmax=float(np.sqrt(np.mean(diff[beyond] ** 2))),
        pdd10_measured=interp(meas, 100.0), pdd10_model=interp(model_pct, 100.0),
        pdd20_measured=interp(meas, 200.0), pdd20_model=interp(model_pct, 200.0),
    )


def _width_at(x: np.ndarray, y: np.ndarray, level: float) -> tuple[float, float]:
    """Left and right positions where a profile (peaked in the middle) crosses ``level``."""
    c = int(np.argmin(np.abs(x)))
    left = np.interp(level, y[:c + 1], x[:c + 1])
    right = np.interp(level, y[c:][::-1], x[c:][::-1])
    return float(left), float(right)


def _scan_name(scan: MccScan) -> str:
    return (f"{scan.energy:g} MV {scan.filter} {scan.field_crossplane_mm / 10:g}x{scan.field_inplane_mm / 10:g} "
            f"{scan.curve_type.split('_')[0].lower()} d={scan.depth_mm / 10:g} cm")


def load_profiles(data_dir: str | os.PathLike[str], *, centre_profiles: bool = False
                  ) -> tuple[list[MccScan], list[MccScan]]:
    """The measured profiles: (10 MV FFF training profiles, held-out 6 MV profiles).

    Args:
        data_dir: folder with ``10x10FFF.mcc``, ``30x30FFFxy.mcc`` and ``10x10xy.mcc``.
        centre_profiles: shift every profile (both lists, the same rule) so that its 50 %-point centre is
            at 0 mm (:meth:`~sarcart.io.mcc.MccScan.centred`); off: the positions as measured.
    """
    root = Path(data_dir)
    training = read_mcc(root / "10x10FFF.mcc") + read_mcc(root / "30x30FFFxy.mcc")
    held_out = read_mcc(root / "10x10xy.mcc")
    if centre_profiles:
        training, held_out = [s.centred() for s in training], [s.centred() for s in held_out]
    return training, held_out


def profile_centres(data_dir: str | os.PathLike[str]) -> dict[str, float]:
    """Field centre (mm, 50 % points, central-axis normalisation) of every measured profile, by name."""
    training, held_out = load_profiles(data_dir)
    return {_scan_name(s): s.field_centre_mm() for s in (*held_out, *training)}


def model_profile(model: BeamModel, scan: MccScan, x_mm: np.ndarray) -> np.ndarray:
    """Model profile at the scan's depth and SSD, in percent of the central-axis value."""
    d = torch.full((len(x_mm),), float(scan.depth_mm), dtype=torch.float64)
    along_x = scan.curve_type == "CROSSPLANE_PROFILE"
    field = (scan.field_crossplane_mm, scan.field_inplane_mm) if along_x else (scan.field_inplane_mm, scan.field_crossplane_mm)
    dose = model.water_dose(d, torch.as_tensor(x_mm, dtype=torch.float64), ssd_mm=scan.ssd_mm, field_mm=field)
    cax = model.water_dose(torch.tensor(float(scan.depth_mm)), ssd_mm=scan.ssd_mm, field_mm=field)
    return (100.0 * dose / cax).numpy()


def profile_residuals(model: BeamModel, scan: MccScan, *, dose_pct: float = 2.0, dist_mm: float = 2.0,
                      cutoff_pct: float = 10.0) -> ProfileResiduals:
    """Gamma (global, pymedphys) and width/penumbra differences of a measured profile vs the model."""
    from pymedphys import gamma

    x = scan.position_mm
    meas = scan.normalised(at_mm=0.0)
    fine_x = np.arange(x.min(), x.max() + 0.25, 0.25)
    mod = model_profile(model, scan, fine_x)
    g = gamma((x,), meas, (fine_x,), mod, dose_pct, dist_mm, lower_percent_dose_cutoff=cutoff_pct,
              interp_fraction=10, max_gamma=3.0, global_normalisation=float(meas.max()),
              interp_algo="scipy")
    valid = np.isfinite(g)
    ml, mr = _width_at(x, meas, 50.0)
    fl, fr = _width_at(fine_x, mod, 50.0)
    pen_m = np.mean([abs(a - b) for a, b in zip(_width_at(x, meas, 80.0), _width_at(x, meas, 20.0))])
    pen_f = np.mean([abs(a - b) for a, b in zip(_width_at(fine_x, mod, 80.0), _width_at(fine_x, mod, 20.0))])
    inside = np.abs(x) <= 0.8 * (mr - ml) / 2.0
    in_field = np.abs(np.interp(x[inside], fine_x, mod) - meas[inside])
    return ProfileResiduals(
        name=_scan_name(scan),
        gamma_pass_rate=float(np.mean(g[valid] <= 1.0)) if valid.any() else float("nan"),
        max_gamma=float(np.max(g[valid])) if valid.any() else float("nan"),
        fwhm_measured_mm=mr - ml, fwhm_model_mm=fr - fl,
        penumbra_measured_mm=float(pen_m), penumbra_model_mm=float(pen_f),
        max_abs_in_field=float(in_field.max()) if in_field.size else float("nan"),
    )


def fit_lateral(scans: list[MccScan], base: BeamModel) -> tuple[BeamModel, tuple[float, ...]]:
    """Fit ``sigma_p0_mm, sigma_s0_mm, ws_max`` and an FFF off-axis cone on measured FFF profiles.

    Returns:
        The model with the fitted lateral parameters and *no* off-axis cone (a flattened beam), and the
        cone coefficients ``(c1, c2)`` of ``OAF = 1 + c1 |t|/0.1 + c2 (t/0.1)^2`` for the FFF beam.
    """
    from scipy.optimize import least_squares

    if not scans or not all(s.is_profile for s in scans):
        raise InvalidImageError("fit_lateral needs profile scans")

    def resid(x: np.ndarray) -> np.ndarray:
        m = base.model_copy(update={**dict(zip(LATERAL_KEYS, (float(v) for v in x[:3]))),
                                    "oaf_coeffs": (float(x[3]), float(x[4]))})
        return np.concatenate([model_profile(m, s, s.position_mm) - s.normalised(at_mm=0.0) for s in scans])

    x0 = np.array([base.sigma_p0_mm, base.sigma_s0_mm, base.ws_max, -0.3, 0.0])
    res = least_squares(resid, x0, bounds=([0.5, 3.0, 0.0, -3.0, -3.0], [10.0, 150.0, 0.9, 3.0, 3.0]))
    log.info("lateral fit: %s (rms %.2f %%)", res.x, float(np.sqrt(np.mean(res.fun ** 2))))
    lateral = base.model_copy(update={**dict(zip(LATERAL_KEYS, (float(v) for v in res.x[:3]))), "oaf_coeffs": ()})
    return lateral, (float(res.x[3]), float(res.x[4]))


def fit_tail(scans: list[MccScan], base: BeamModel, cone: tuple[float, ...]) -> tuple[BeamModel, tuple[float, ...]]:
    """Second lateral stage: add the intermediate penumbra-tail Gaussian, fitted on FFF profiles.

    The broad scatter component (``sigma_s0_mm``, ``ws_max``) stays at the two-term fit of
    :func:`fit_lateral`; ``sigma_p0_mm``, ``tail_share``, ``sigma_tail_mm`` and the cone ``(c1, c2)`` are
    fitted (least squares in percent of the central axis). A joint fit of all parameters is degenerate
    (the scatter width runs away to ~84 mm and the depth-dose fit then misses the PDD by 1.2 points).
    Motivation: the water pencil kernel (Ahnesjo et al. 1992, doi 10.1118/1.596856) has a cusp and
    exponential tails; two Gaussians leave the foot of the penumbra 1.5-3 points low on *both* the
    10 MV FFF training profiles (54-56 mm) and the held-out 6 MV profiles (54-60 mm).

    Returns:
        The model with the tail (no cone: a flattened beam) and the refitted cone coefficients.
    """
    from scipy.optimize import least_squares

    keys = ("sigma_p0_mm", "tail_share", "sigma_tail_mm")

    def model(x: np.ndarray) -> BeamModel:
        return base.model_copy(update={**dict(zip(keys, (float(v) for v in x[:3]))),
                                       "oaf_coeffs": (float(x[3]), float(x[4]))})

    def resid(x: np.ndarray) -> np.ndarray:
        m = model(x)
        return np.concatenate([model_profile(m, s, s.position_mm) - s.normalised(at_mm=0.0) for s in scans])

    bounds = ([0.5, 0.0, 2.0, -3.0, -3.0], [10.0, 0.6, 30.0, 3.0, 3.0])
    # the cost has several local minima: multi-start, keep the lowest *training* cost
    fits = [least_squares(resid, np.array([base.sigma_p0_mm, w0, s0, *cone]), bounds=bounds)
            for w0 in TAIL_STARTS[0] for s0 in TAIL_STARTS[1]]
    res = min(fits, key=lambda r: float(r.cost))
    log.info("tail fit: %s (rms %.2f %%; %d starts, costs %s)", res.x, float(np.sqrt(np.mean(res.fun ** 2))),
             len(fits), sorted(round(float(r.cost), 1) for r in fits))
    return model(res.x).model_copy(update={"oaf_coeffs": ()}), (float(res.x[3]), float(res.x[4]))


def derive_fff(water: BeamModel, pdd_scan: MccScan, oaf_coeffs: tuple[float, ...] = ()) -> BeamModel:
    """MR-linac 6 MV FFF from water 6X: SAD 90 cm, PDD(10) lowered by 2.9 points, FFF off-axis cone.

    The attenuation ``mu`` is solved so that the model's PDD(10 cm) for a 10x10 field at SSD 100 cm is
    :data:`FFF_PDD10_DROP` points below water 6X's; ``oaf_coeffs`` is the cone shape from
    :func:`fit_lateral` (as a function of the angle, so it transfers to SAD 90 cm).
    """
    from scipy.optimize import brentq

    target = pdd_residuals(water, pdd_scan).pdd10_model - FFF_PDD10_DROP

    def f(mu: float) -> float:
        return pdd_residuals(water.model_copy(update={"mu_per_mm": mu}), pdd_scan).pdd10_model - target

    mu = brentq(f, water.mu_per_mm, water.mu_per_mm * 3.0, xtol=1e-8)
    return water.model_copy(update={
        "name": "MR-linac 6 MV FFF (derived)", "filter": "FFF", "sad_mm": 900.0, "mu_per_mm": float(mu),
        "oaf_coeffs": tuple(oaf_coeffs), "commissioned_against": "derived from water 6X; no MR-linac measurement",
    }).calibrated()


def commission(data_dir: str | os.PathLike[str], *, centre_profiles: bool = True) -> dict[str, object]:
    """Fit water 6X on ``10x10PDD.mcc``, test on the 6 MV profiles, derive the FFF beam.

    Args:
        data_dir: the ``beam_6mv`` folder.
        centre_profiles: centre every measured profile on its 50 % points first (:func:`load_profiles`;
            the default, which gives the committed ``water_6x`` / ``mrlinac_6fff``); ``False``: the
            positions as measured (gives the committed two-term ``water_6x_two_term`` /
            ``mrlinac_6fff_two_term``, the engine's model before the three-term kernel).

    Returns:
        ``{"water_6x": BeamModel, "mrl_6fff": BeamModel, "pdd": PddResiduals, "profiles": [ProfileResiduals],
        "water_6x_two_term": ..., "mrl_6fff_two_term": ..., "pdd_two_term": ..., "profiles_two_term": ...,
        "centres_mm": {name: centre}}`` (unsuffixed: the three-term kernel of :func:`fit_tail`;
        ``_two_term``: the :func:`fit_lateral` stage; ``centres_mm``: the 50 %-point centres of the
        profiles as measured, before any centring).
    """
    root = Path(data_dir)
    pdd = read_mcc(root / "10x10PDD.mcc")[0]
    base = BeamModel(name="water 6X", energy_mv=6.0, filter="FF", sad_mm=pdd.isocenter_mm,
                     commissioned_against="beam_6mv/10x10PDD.mcc (6 MV flattened, SSD 100 cm, depth dose only)")
    water = fit_depth_dose(pdd, base)
    fff_scans, held_out = load_profiles(root, centre_profiles=centre_profiles)
    two, cone_two = fit_lateral(fff_scans, water)
    two = fit_depth_dose(pdd, two)
    lateral, cone = fit_tail(fff_scans, two, cone_two)
    three = fit_depth_dose(pdd, lateral)
    return {"water_6x": three, "mrl_6fff": derive_fff(three, pdd, cone), "pdd": pdd_residuals(three, pdd),
            "profiles": [profile_residuals(three, s) for s in held_out],
            "water_6x_two_term": two, "mrl_6fff_two_term": derive_fff(two, pdd, cone_two),
            "pdd_two_term": pdd_residuals(two, pdd), "profiles_two_term": [profile_residuals(two, s) for s in held_out],
            "centres_mm": profile_centres(root)}


def plot_commissioning(data_dir: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Figure: measured vs model depth dose and held-out profiles (docs/figures/dose_commissioning.png).

    Profiles as measured (black) and centred on their 50 % points (grey); the two-term model is the
    uncentred fit (``water_6x_two_term``, the engine's model before), the three-term model the centred
    one (``water_6x``, the engine's model).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(data_dir)
    raw, cen = commission(root, centre_profiles=False), commission(root)
    model, tail = cast(BeamModel, raw["water_6x_two_term"]), cast(BeamModel, cen["water_6x"])
    pdd = read_mcc(root / "10x10PDD.mcc")[0]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.1), dpi=110)
    d = np.linspace(0, pdd.position_mm.max(), 601)
    m = _model_pdd(model, pdd, d)
    axes[0].plot(pdd.position_mm, pdd.normalised(), "k.", ms=3, label="measured (fit)")
    t = _model_pdd(tail, pdd, d)
    axes[0].plot(d, 100 * m / m.max(), "r-", lw=1, label="two-term model")
    axes[0].plot(d, 100 * t / t.max(), "b--", lw=1, label="three-term model (engine)")
    axes[0].set(xlabel="depth (mm)", ylabel="PDD (%)", title="6 MV 10x10 SSD 100 cm")
    held = zip(load_profiles(root)[1], load_profiles(root, centre_profiles=True)[1])
    for k, (ax, (scan, centred)) in enumerate(zip(axes[1:], held)):
        x = np.linspace(scan.position_mm.min(), scan.position_mm.max(), 641)
        ax.plot(scan.position_mm, scan.normalised(at_mm=0.0), "k.", ms=3, label="measured (held out)")
        ax.plot(centred.position_mm, centred.normalised(at_mm=0.0), ".", color="0.6", ms=3,
                label=f"centred ({-scan.field_centre_mm():+.2f} mm)")
        ax.plot(x, model_profile(model, scan, x), "r-", lw=1, label="two-term model (uncentred fit, before)")
        ax.plot(x, model_profile(tail, scan, x), "b--", lw=1, label="three-term model (centred fit, engine)")
        rates = [100 * o[key][k].gamma_pass_rate for o in (raw, cen) for key in ("profiles_two_term", "profiles")]  # type: ignore[index]
        ax.set(xlabel="off-axis (mm)", ylabel="% of CAX",
               title=f"{scan.curve_type.split('_')[0].lower()}, held out, 2%/2mm pass (two- / three-term)\n"
               f"as measured {rates[0]:.1f} / {rates[1]:.1f} %, centred {rates[2]:.1f} / {rates[3]:.1f} %")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.title.set_fontsize(8)
    fig.suptitle("water 6X commissioning (research; MR-linac beam NOT commissioned on MR-linac data)", fontsize=9)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - developer tool
    from rich.console import Console

    args = list(argv if argv is not None else sys.argv[1:])
    figure = None
    if "--figure" in args:
        i = args.index("--figure")
        figure = args[i + 1]
        del args[i:i + 2]
    data = Path(args[0]) if args else Path(__file__).resolve().parents[3] / "shared" / "data" / "beam_6mv"
    if figure:
        plot_commissioning(data, figure)
    con = Console()
    for centred in (False, True):
        out = commission(data, centre_profiles=centred)
        con.print(f"[bold]profiles {'centred on their 50 % points' if centred else 'as measured'}[/bold]")
        if not centred:
            con.print("50 %-point centres (mm):", out["centres_mm"])
        for p in [out["pdd_two_term"], *out["profiles_two_term"], out["pdd"], *out["profiles"]]:  # type: ignore[misc]
            con.print(p)
        for key in ("water_6x_two_term", "mrl_6fff_two_term", "water_6x", "mrl_6fff"):
            m = out[key]
            con.print(key, {k: getattr(m, k) for k in (*FIT_KEYS, *LATERAL_KEYS, *TAIL_KEYS, "oaf_coeffs", "norm")})
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
