"""Synthetic outcomes with a planted response signal, for testing response studies on phantom cohorts.

No outcome data exist for the real sarcoma MRs, so the study statistics are checked on phantom cohorts
whose outcomes come from a committed model (``configs/cohorts/response_*.yaml``; documented in
docs/cohort.md). A response specification has two blocks: ``cohort`` (a phantom cohort spec, see
docs/phantom.md) and ``outcome`` (:class:`OutcomeModel`). Per patient, with the latent quantity x taken
from the phantom's ``cohort.csv`` (e.g. the realised necrotic fraction of the GTV) and
z = (x - mean x) / sd x over the cohort:

* binary ``local_failure``: P = 1 / (1 + exp(-(logit(prevalence) + ln(odds_ratio_per_sd) z)));
* time to progression (Cox proportional hazards, Weibull baseline; Bender et al., Stat Med 2005,
  doi:10.1002/sim.2059): S(t | z) = exp(-ln 2 (t / baseline_median_months)^k exp(beta z)),
  beta = ln(hazard_ratio_per_sd), k = ``weibull_shape``, sampled as
  T = m (-ln U / (ln 2 exp(beta z)))^(1/k); censored at ``follow_up_months`` or at an exponential loss
  to follow-up (rate ``loss_rate_per_month``): ``time_months`` = min(T, C), ``progression`` = [T <= C].

Odds and hazard ratios of 1 give outcomes independent of the images (the null cohort).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sarcart.config import read_yaml_mapping, validate_model
from sarcart.errors import ConfigError

OUTCOME_COLUMNS = ("local_failure", "time_months", "progression")
CARRIED_COVARIATES = ("age", "sex", "grade", "genomic_score")


class OutcomeModel(BaseModel):
    """The outcome-generating model of a response specification (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latent: str = Field(description="cohort.csv column driving the outcomes")
    seed: int = Field(default=0, ge=0)
    prevalence: float = Field(default=0.5, gt=0.0, lt=1.0)
    odds_ratio_per_sd: float = Field(default=1.0, gt=0.0)
    hazard_ratio_per_sd: float = Field(default=1.0, gt=0.0)
    baseline_median_months: float = Field(default=24.0, gt=0.0)
    weibull_shape: float = Field(default=1.0, gt=0.0)
    follow_up_months: float = Field(default=36.0, gt=0.0)
    loss_rate_per_month: float = Field(default=0.0, ge=0.0)


class ResponseSpec(BaseModel):
    """A response specification: the phantom cohort (``cohort``) and the outcome model (``outcome``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cohort: dict[str, Any]
    outcome: OutcomeModel


def load_response_spec(path: str | os.PathLike[str]) -> tuple[Any, OutcomeModel]:
    """(CohortSpec, OutcomeModel) of a response YAML; unknown keys are rejected in both blocks."""
    from sarcart.phantom import make_spec

    data = read_yaml_mapping(path, what="response specification", hint="see configs/cohorts/response_signal.yaml")
    spec = validate_model(ResponseSpec, data, where=str(path), hint="blocks: cohort (phantom spec), outcome")
    return make_spec(**spec.cohort), spec.outcome


def generate_outcomes(covariates: Any, model: OutcomeModel) -> Any:
    """Outcomes per patient from a phantom ``cohort.csv`` table (pandas DataFrame with ``patient``).

    Returns:
        DataFrame ``patient, latent_z, local_failure, time_months, progression``.

    Raises:
        ConfigError: the latent column is missing, non-numeric or constant.
    """
    import pandas as pd

    if model.latent not in covariates.columns:
        raise ConfigError(f"latent {model.latent!r} is not a column of cohort.csv; columns: {list(covariates.columns)}")
    x = pd.to_numeric(covariates[model.latent], errors="coerce").to_numpy(dtype=np.float64)
    if not np.isfinite(x).all() or x.std() == 0:
        raise ConfigError(f"latent {model.latent!r} must be finite and vary across patients")
    z = (x - x.mean()) / x.std()
    rng = np.random.default_rng(model.seed)
    u_bin, u_event, u_loss = rng.uniform(size=(3, len(z)))
    logit = np.log(model.prevalence / (1 - model.prevalence)) + np.log(model.odds_ratio_per_sd) * z
    failure = (u_bin < 1.0 / (1.0 + np.exp(-logit))).astype(int)
    hazard = np.log(2.0) * np.exp(np.log(model.hazard_ratio_per_sd) * z)
    t_event = model.baseline_median_months * (-np.log(u_event) / hazard) ** (1.0 / model.weibull_shape)
    t_loss = (-np.log(u_loss) / model.loss_rate_per_month if model.loss_rate_per_month > 0
              else np.full(len(z), np.inf))
    censor = np.minimum(t_loss, model.follow_up_months)
    return pd.DataFrame({"patient": covariates["patient"].astype(str).to_numpy(), "latent_z": z,
                         "local_failure": failure, "time_months": np.round(np.minimum(t_event, censor), 3),
                         "progression": (t_event <= censor).astype(int)})


def phantom_manifest(cohort_dir: str | os.PathLike[str], outcomes: Any = None, *, roi: str = "GTV",
                     covariates: tuple[str, ...] = CARRIED_COVARIATES) -> Path:
    """Write ``<cohort_dir>/manifest.csv`` for a phantom cohort: every fraction's image and label map
    (ROI ``roi`` from ``labels.json``), the outcome columns and the listed covariates of ``cohort.csv``.

    The latent quantity is *not* carried (it would be the answer). Returns the manifest path.
    """
    import pandas as pd

    root = Path(cohort_dir)
    cov = pd.read_csv(root / "cohort.csv", dtype={"patient": str})
    keep = ["patient"] + [c for c in covariates if c in cov.columns]
    per_patient = cov[keep]
    if outcomes is not None:
        per_patient = per_patient.merge(outcomes[["patient", *OUTCOME_COLUMNS]], on="patient", how="left")
    rows = []
    for rec in per_patient.to_dict("records"):
        for fx in sorted((root / rec["patient"]).glob("fx[0-9][0-9]")):
            rows.append({"patient": rec["patient"], "fraction": int(fx.name[2:]),
                         "image": f"{rec['patient']}/{fx.name}/image.nii.gz",
                         "mask": f"{rec['patient']}/{fx.name}/labels.nii.gz", "roi": roi,
                         **{k: v for k, v in rec.items() if k != "patient"}})
    if not rows:
        raise ConfigError(f"{root} holds no patient fractions (fxNN folders); synthesise the cohort first")
    path = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def prepare_response_cohort(spec_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                            show_progress: bool = False) -> Path:
    """Synthesise the cohort of a response spec (once), write ``outcomes.csv`` and ``manifest.csv``.

    Returns:
        The manifest path (``<out_dir>/manifest.csv``).
    """
    import pandas as pd

    from sarcart.phantom import write_cohort

    spec, model = load_response_spec(spec_path)
    out = Path(out_dir)
    if not (out / "cohort.csv").is_file():
        write_cohort(spec, out, show_progress=show_progress)
    outcomes = generate_outcomes(pd.read_csv(out / "cohort.csv", dtype={"patient": str}), model)
    outcomes.to_csv(out / "outcomes.csv", index=False)
    return phantom_manifest(out, outcomes)
