"""Treatment machine (MLC geometry, field limits) and the photon beam model (pencil-beam kernel).

The beam model is a three-component pencil beam in the spirit of Bortfeld et al. 1993 (doi
10.1118/1.597070) and Ahnesjö et al. 1992 (doi 10.1118/1.596856): the dose at a point of
radiological (water-equivalent) depth ``d`` from a beamlet of fluence ``w`` (MU) is::

    D = N * w * ISQ * OAF(t) * T(d) * [(1 - ws(d) - wt) * K(sigma_p(d)) + ws(d) * K(sigma_s(d)) + wt * K(sigma_t)]

* ``T(d) = (1 - c * exp(-beta d)) * exp(-mu d + eta d^2)``: build-up (electron fluence growing to
  equilibrium) times attenuation with beam hardening (``eta``); fitted on a measured depth dose.
* ``ISQ = (SAD / z)^2``, ``z`` the distance from the source along the central axis.
* ``K(sigma)``: the beamlet's rectangular opening convolved with a 2D Gaussian of width ``sigma``
  projected to the isocentre plane (an erf product); ``sigma_p`` (primary: source size, leaf ends,
  lateral electron transport) and ``sigma_s`` (phantom scatter) grow linearly with depth.
* ``ws(d) = ws_max * (1 - exp(-d / ws_len))``: the share of the broad scatter component.
* third term ``wt * K(sigma_t)`` (``tail_share``, ``sigma_tail_mm``; the primary share becomes
  ``1 - ws - wt``): an intermediate-width Gaussian for the non-Gaussian foot of the penumbra (the water
  pencil kernel of Ahnesjo et al. 1992 is cusp-like with exponential tails, which two Gaussians miss).
  ``water_6x()`` and ``mrlinac_6fff()`` use it; ``tail_share = 0`` gives the two-term kernel
  (``water_6x_two_term()``, ``mrlinac_6fff_two_term()``, kept for comparison).
* ``OAF(t)``: off-axis fluence as a function of ``t = tan(angle)`` (1 for a flattened beam; the
  cone of a flattening-filter-free beam otherwise).
* ``N``: calibration so that 1 MU gives ``gy_per_mu_ref`` at the reference point.

Heterogeneities enter through the radiological depth only; lateral kernels are not scaled with
density (the classic pencil-beam limitation; see docs/dose.md).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

NOT_COMMISSIONED = (
    "beam model NOT commissioned against MR-linac measurements (derived from a conventional 6 MV "
    "water-tank data set) - research use only, not for clinical use"
)


class MachineConfig(BaseModel):
    """An MR-linac-like treatment unit (defaults: 0.35 T MR-linac, double-stacked MLC, no jaws).

    Leaf rows are the *effective* 4.15 mm rows: each of the two layers has 8.3 mm leaves, the lower
    layer offset by half a leaf, so two adjacent effective rows share one leaf of one layer.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = "MRL-6FFF"
    sad_mm: float = Field(900.0, gt=0, description="source-axis distance")
    leaf_width_mm: float = Field(8.3, gt=0, description="physical leaf width of one layer at isocentre")
    max_field_x_mm: float = Field(274.0, gt=0, description="maximum field along leaf travel (IEC X)")
    max_field_y_mm: float = Field(241.0, gt=0, description="maximum field across the leaves (IEC Y)")
    double_stacked: bool = Field(True, description="two MLC layers offset by half a leaf, no jaws")
    bixel_x_mm: float = Field(4.15, gt=0, description="beamlet size along leaf travel used for optimisation")
    min_mu_per_segment: float = Field(1.0, ge=0, description="smallest deliverable segment weight")
    min_segment_area_cm2: float = Field(1.0, ge=0, description="smallest deliverable segment opening")
    dose_rate_mu_per_min: float = Field(600.0, gt=0)
    gantry_angles_deg: tuple[float, ...] = Field(
        default=tuple(round(i * 24.0, 6) for i in range(15)), description="coplanar step-and-shoot beams"
    )

    @property
    def row_width_mm(self) -> float:
        """Effective row (leaf-pair) width at isocentre: half a leaf for a double stack."""
        return self.leaf_width_mm / 2.0 if self.double_stacked else self.leaf_width_mm

    @property
    def n_rows(self) -> int:
        """Number of effective rows covering the maximum field across the leaves."""
        return 2 * int(self.max_field_y_mm / 2.0 // self.row_width_mm)

    def row_edges_mm(self) -> torch.Tensor:
        """``(n_rows + 1,)`` float64 row boundaries (IEC Y, isocentre plane), symmetric about the axis."""
        half = self.n_rows // 2
        return torch.arange(-half, half + 1, dtype=torch.float64) * self.row_width_mm


class BeamModel(BaseModel):
    """Parameters of the pencil-beam kernel (see the module docstring for the formula)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    energy_mv: float = 6.0
    filter: Literal["FF", "FFF"] = "FF"
    sad_mm: float = Field(1000.0, gt=0)
    buildup_c: float = Field(0.55, ge=0, lt=1)
    buildup_beta_per_mm: float = Field(0.3, gt=0)
    mu_per_mm: float = Field(0.0045, gt=0)
    eta_per_mm2: float = 0.0
    sigma_p0_mm: float = Field(3.0, gt=0, description="primary kernel width at the surface (isocentre plane)")
    sigma_p_slope: float = Field(0.005, ge=0, description="primary width increase per mm depth")
    sigma_s0_mm: float = Field(15.0, gt=0, description="scatter kernel width at the surface")
    sigma_s_slope: float = Field(0.10, ge=0, description="scatter width increase per mm depth")
    ws_max: float = Field(0.30, ge=0, lt=1, description="asymptotic share of the scatter component")
    ws_len_mm: float = Field(80.0, gt=0)
    tail_share: float = Field(0.0, ge=0, lt=1, description="share of the intermediate (penumbra-tail) component")
    sigma_tail_mm: float = Field(5.0, gt=0, description="width of the intermediate component (isocentre plane)")
    oaf_coeffs: tuple[float, ...] = Field(default=(), description="OAF = 1 + sum_k c_k (|t|/0.1)^(k+1)")
    gy_per_mu_ref: float = Field(0.01, gt=0, description="dose per MU at the reference point")
    ref_depth_mm: float = Field(15.0, gt=0, description="reference depth (10x10 cm field, SSD = SAD - depth)")
    norm: float = Field(1.0, gt=0, description="N, set by calibrate()")
    commissioned_against: str = ""
    note: str = NOT_COMMISSIONED

    @model_validator(mode="after")
    def _shares_below_one(self) -> BeamModel:
        if self.ws_max + self.tail_share >= 1.0:
            raise ValueError(f"ws_max + tail_share must be < 1 (the primary share 1 - ws - wt must stay positive), "
                             f"got {self.ws_max:g} + {self.tail_share:g}; lower one of them")
        return self

    # ------------------------------------------------------------------ kernel terms (torch)
    def depth_term(self, d_mm: torch.Tensor) -> torch.Tensor:
        """T(d): build-up times attenuation, ``d`` radiological depth in mm (any shape, any device)."""
        d = d_mm.clamp_min(0.0)
        return (1.0 - self.buildup_c * torch.exp(-self.buildup_beta_per_mm * d)) * torch.exp(
            -self.mu_per_mm * d + self.eta_per_mm2 * d * d
        )

    def scatter_share(self, d_mm: torch.Tensor) -> torch.Tensor:
        """ws(d), the share of the broad component."""
        return self.ws_max * (1.0 - torch.exp(-d_mm.clamp_min(0.0) / self.ws_len_mm))

    def sigma_primary(self, d_mm: torch.Tensor) -> torch.Tensor:
        return self.sigma_p0_mm + self.sigma_p_slope * d_mm.clamp_min(0.0)

    def sigma_scatter(self, d_mm: torch.Tensor) -> torch.Tensor:
        return self.sigma_s0_mm + self.sigma_s_slope * d_mm.clamp_min(0.0)

    def off_axis(self, tan_angle: torch.Tensor) -> torch.Tensor:
        """OAF as a function of ``tan(angle)`` from the central axis (radial)."""
        out = torch.ones_like(tan_angle)
        x = tan_angle.abs() / 0.1
        for k, c in enumerate(self.oaf_coeffs):
            out = out + c * x ** (k + 1)
        return out

    # ------------------------------------------------------------------ simple fields in water
    def field_factor(self, u_mm: torch.Tensor, half_x: float, half_y: float, sigma: torch.Tensor,
                     *, v_mm: torch.Tensor | float = 0.0) -> torch.Tensor:
        """Gaussian-blurred rectangle ``[-half_x, half_x] x [-half_y, half_y]`` at ``(u, v)`` (isocentre plane)."""
        s = sigma * math.sqrt(2.0)
        v = torch.as_tensor(v_mm, dtype=u_mm.dtype, device=u_mm.device)
        fx = 0.5 * (torch.erf((half_x - u_mm) / s) + torch.erf((half_x + u_mm) / s))
        fy = 0.5 * (torch.erf((half_y - v) / s) + torch.erf((half_y + v) / s))
        return fx * fy

    def water_dose(self, depth_mm: torch.Tensor, off_axis_mm: torch.Tensor | float = 0.0, *,
                   ssd_mm: float, field_mm: tuple[float, float] = (100.0, 100.0),
                   mu: float = 1.0) -> torch.Tensor:
        """Dose (Gy) in a water tank for an open rectangular field (size defined at the isocentre plane).

        Args:
            depth_mm: depths below the surface (any shape).
            off_axis_mm: physical off-axis distance along IEC X at that depth (broadcast with depth).
            ssd_mm: source-surface distance.
            field_mm: field size (X, Y) at the isocentre plane.
        """
        d = torch.as_tensor(depth_mm, dtype=torch.float64)
        x = torch.as_tensor(off_axis_mm, dtype=torch.float64)
        z = ssd_mm + d
        u_iso = x * self.sad_mm / z
        hx, hy = field_mm[0] / 2.0, field_mm[1] / 2.0
        ws, wt = self.scatter_share(d), self.tail_share
        lateral = (1.0 - ws - wt) * self.field_factor(u_iso, hx, hy, self.sigma_primary(d)) + ws * self.field_factor(
            u_iso, hx, hy, self.sigma_scatter(d))
        if wt > 0.0:
            lateral = lateral + wt * self.field_factor(u_iso, hx, hy, torch.full_like(d, self.sigma_tail_mm))
        return self.norm * mu * (self.sad_mm / z) ** 2 * self.depth_term(d) * lateral * self.off_axis(x / z)

    def calibrated(self) -> BeamModel:
        """A copy whose ``norm`` gives ``gy_per_mu_ref`` per MU at the reference point."""
        probe = self.model_copy(update={"norm": 1.0})
        ref = probe.water_dose(torch.tensor(self.ref_depth_mm), ssd_mm=self.sad_mm - self.ref_depth_mm)
        return self.model_copy(update={"norm": float(self.gy_per_mu_ref / ref)})


def water_6x() -> BeamModel:
    """The "water 6X" beam: three-term kernel fitted by :func:`sarcart.dose.commission.commission`.

    Honest split: the depth parameters are fitted on the measured 6 MV depth dose
    (``beam_6mv/10x10PDD.mcc``); the primary width, the tail share and width (:func:`~sarcart.dose.
    commission.fit_tail`) and the broad scatter component (:func:`~sarcart.dose.commission.fit_lateral`)
    on the 10 MV FFF profiles, every profile first centred on its 50 % points (AAPM TG-106, doi
    10.1118/1.2969070); the measured 6 MV profiles are held out and only test the model.
    """
    return BeamModel(name="water 6X", energy_mv=6.0, filter="FF", sad_mm=1000.0, ref_depth_mm=15.0,
                     commissioned_against="beam_6mv/10x10PDD.mcc (depth) and 10 MV FFF profiles, centred (lateral)",
                     **WATER_6X_FIT).calibrated()


def mrlinac_6fff() -> BeamModel:
    """MR-linac 6 MV FFF beam derived from :func:`water_6x` (NOT commissioned on MR-linac data).

    Derivation (:func:`sarcart.dose.commission.derive_fff`): SAD 90 cm; attenuation increased so that
    PDD(10 cm, 10x10, SSD 100) is 2.9 points lower than the flattened beam (TrueBeam 6X 66.3 % vs 6FFF
    63.4 %, FACTS.md section 7); the off-axis cone of a flattening-filter-free beam fitted with the
    three-term kernel on the measured 10 MV FFF profiles (shape only; a 6 MV FFF cone is somewhat more
    peaked). Reference point: 1 MU = 1 cGy at d = 15 mm, 10x10 at the isocentre (assumed, UNVERIFIED).
    """
    return BeamModel(name="MR-linac 6 MV FFF (derived)", energy_mv=6.0, filter="FFF", sad_mm=900.0,
                     ref_depth_mm=15.0, commissioned_against="derived from water 6X; no MR-linac measurement",
                     **MRL_6FFF_DERIVED).calibrated()


def water_6x_two_term() -> BeamModel:
    """The two-term water 6X (no tail), fitted on the profiles as measured: the engine's model before the
    three-term kernel, kept for comparison (``commission(..., centre_profiles=False)["water_6x_two_term"]``)."""
    return BeamModel(name="water 6X (two-term kernel)", energy_mv=6.0, filter="FF", sad_mm=1000.0, ref_depth_mm=15.0,
                     commissioned_against="beam_6mv/10x10PDD.mcc (depth) and 10 MV FFF profiles as measured (lateral)",
                     **WATER_6X_TWO_TERM_FIT).calibrated()


def mrlinac_6fff_two_term() -> BeamModel:
    """:func:`mrlinac_6fff` derived from :func:`water_6x_two_term` (its own fitted cone); for comparison."""
    return BeamModel(name="MR-linac 6 MV FFF (derived, two-term kernel)", energy_mv=6.0, filter="FFF", sad_mm=900.0,
                     ref_depth_mm=15.0, commissioned_against="derived from water 6X (two-term); no MR-linac measurement",
                     **MRL_6FFF_TWO_TERM).calibrated()


#: ``commission()["water_6x"]`` on beam_6mv (profiles centred; regenerate with ``python -m sarcart.dose.commission``)
WATER_6X_FIT: dict[str, Any] = {'buildup_c': 0.62986479, 'buildup_beta_per_mm': 0.23861756, 'mu_per_mm': 0.001166591, 'eta_per_mm2': -5.0818484e-06, 'sigma_p0_mm': 0.76536836, 'sigma_s0_mm': 36.438781, 'ws_max': 0.36573773, 'tail_share': 0.33573213, 'sigma_tail_mm': 4.1609253}
#: water 6X with the FFF changes of ``derive_fff`` and the three-term cone (``commission()["mrl_6fff"]``)
MRL_6FFF_DERIVED: dict[str, Any] = {'buildup_c': 0.62986479, 'buildup_beta_per_mm': 0.23861756, 'mu_per_mm': 0.0016860169, 'eta_per_mm2': -5.0818484e-06, 'sigma_p0_mm': 0.76536836, 'sigma_s0_mm': 36.438781, 'ws_max': 0.36573773, 'tail_share': 0.33573213, 'sigma_tail_mm': 4.1609253, 'oaf_coeffs': (-0.376880, 0.028922)}
#: ``commission(..., centre_profiles=False)["water_6x_two_term"]`` (same command)
WATER_6X_TWO_TERM_FIT: dict[str, Any] = {'buildup_c': 0.62986123, 'buildup_beta_per_mm': 0.23861231, 'mu_per_mm': 0.00116671, 'eta_per_mm2': -5.0823289e-06, 'sigma_p0_mm': 1.85912784, 'sigma_s0_mm': 36.4445537, 'ws_max': 0.36564299}
#: ``commission(..., centre_profiles=False)["mrl_6fff_two_term"]`` (same command)
MRL_6FFF_TWO_TERM: dict[str, Any] = {'buildup_c': 0.62986123, 'buildup_beta_per_mm': 0.23861231, 'mu_per_mm': 0.00168614, 'eta_per_mm2': -5.0823289e-06, 'sigma_p0_mm': 1.85912784, 'sigma_s0_mm': 36.4445537, 'ws_max': 0.36564299, 'oaf_coeffs': (-0.384236, 0.033137)}
