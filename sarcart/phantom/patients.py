"""Per-patient parameters and synthetic covariates (cheap: no image is made here).

The genomic grade score is linked to the hypoxic burden with a chosen correlation ``rho``
(``CohortSpec.genomic_link``)::

    h ~ Beta(2, 5) clipped to [0.02, 0.8]      hypoxic fraction of the viable tumour
    z = (h - mean) / sd                         standardised with the Beta(2, 5) moments
    genomic_score = rho * z + sqrt(1 - rho^2) * e,  e ~ N(0, 1)

so that corr(genomic_score, h) = rho (zero allowed) and the score has unit variance. Histological
grade (FNCLCC 1-3) follows the score with noise; age and sex are independent of everything.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from sarcart.phantom.config import CohortSpec
from sarcart.phantom.fields import rng_for

_HYP_A, _HYP_B = 2.0, 5.0
HYP_MEAN = _HYP_A / (_HYP_A + _HYP_B)
HYP_SD = math.sqrt(_HYP_A * _HYP_B / ((_HYP_A + _HYP_B) ** 2 * (_HYP_A + _HYP_B + 1.0)))
_ELONGATION = {"retroperitoneum": (1.0, 1.4), "upper_extremity": (1.3, 2.0), "lower_extremity": (1.4, 2.4)}


@dataclass(frozen=True)
class PatientParams:
    """Everything sampled for one patient before any image is made.

    Attributes:
        seed: the patient's own seed (derived from the cohort seed and index).
        side: side of the tumour, ``L`` or ``R`` (the laterality for limbs).
        volume_cc: requested GTV volume (ignored for real anatomy, which keeps the real GTV).
        necrotic_fraction: of the GTV. hypoxic_fraction: of the viable tumour (target).
        edema_mm: mean oedema rim thickness (extremities; 0 = none).
        genomic_score: synthetic genomic grade score (unit variance).
        real_case: folder name of the real case used (``--from-real``), else None.
    """

    index: int
    name: str
    site: str
    seed: int
    side: str
    volume_cc: float
    elongation: float
    necrotic_fraction: float
    hypoxic_fraction: float
    edema_mm: float
    age: int
    sex: str
    grade: int
    genomic_score: float
    real_case: str | None = None

    def covariates(self) -> dict[str, object]:
        """The row of ``cohort.csv`` known before imaging (targets, not realised volumes)."""
        d = asdict(self)
        d["patient"] = d.pop("name")
        return d


def sample_patient(spec: CohortSpec, index: int, real_cases: list[str] | None = None) -> PatientParams:
    """Draw patient ``index`` (0-based) of the cohort; depends only on (spec.seed, index, spec)."""
    rng = rng_for(spec.seed, "patient", index)
    site = spec.site_of(index)
    lo, hi = spec.tumour_range_cc(site)
    q = float(rng.uniform())
    volume = math.exp(math.log(lo) + q * (math.log(hi) - math.log(lo)))
    e_lo, e_hi = _ELONGATION[site]
    elongation = float(rng.uniform(e_lo, e_hi))
    p_necrosis = spec.necrosis_probability if spec.necrosis_probability is not None else 0.25 + 0.5 * q
    has_necrosis = rng.uniform() < p_necrosis
    necrotic = float(rng.uniform(*spec.necrotic_fraction)) if has_necrosis else 0.0
    hyp = float(np.clip(rng.beta(_HYP_A, _HYP_B), 0.02, 0.8))
    rho = float(spec.genomic_link)
    z = (hyp - HYP_MEAN) / HYP_SD
    genomic = rho * z + math.sqrt(max(1.0 - rho * rho, 0.0)) * float(rng.standard_normal())
    g = genomic + 0.5 * float(rng.standard_normal())
    grade = 1 if g < -0.6 else (2 if g < 0.6 else 3)
    age = int(np.clip(round(float(rng.normal(58.0, 15.0))), 18, 90))
    sex = "M" if rng.uniform() < 0.55 else "F"
    side = "L" if rng.uniform() < 0.5 else "R"
    edema = float(rng.uniform(2.0, 9.0)) if site != "retroperitoneum" and rng.uniform() < 0.75 else 0.0
    real = real_cases[index % len(real_cases)] if real_cases else None
    return PatientParams(
        index=index, name=spec.patient_name(index), site=site, seed=int(rng.integers(0, 2**31 - 1)),
        side=side, volume_cc=volume, elongation=elongation, necrotic_fraction=necrotic,
        hypoxic_fraction=hyp, edema_mm=edema, age=age, sex=sex, grade=grade, genomic_score=genomic,
        real_case=real,
    )


def sample_cohort(spec: CohortSpec, real_cases: list[str] | None = None) -> list[PatientParams]:
    """All patients of the spec (covariates only, no images)."""
    return [sample_patient(spec, i, real_cases) for i in range(spec.patients)]
