"""sarcart.phantom: synthetic 0.35 T TRUFI cohorts with complete ground truth (see docs/phantom.md).

Public API (imported lazily so that ``sarcart --help`` stays fast)::

    PhantomConfig, CohortSpec, load_spec, make_spec   configuration (sarcart.phantom.config)
    generate_patient, FractionData                    in-memory patients (sarcart.phantom.generate)
    write_cohort                                      cohort on disk (sarcart.phantom.cohort)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PhantomConfig": "config", "CohortSpec": "config", "load_spec": "config", "make_spec": "config",
    "save_spec": "config", "generate_patient": "generate", "FractionData": "generate",
    "write_cohort": "cohort", "write_patient": "writer", "sample_cohort": "patients",
}

__all__ = [
    "CohortSpec", "FractionData", "PhantomConfig", "generate_patient", "load_spec", "make_spec",
    "sample_cohort", "save_spec", "write_cohort", "write_patient",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"sarcart.phantom.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'sarcart.phantom' has no attribute {name!r}")
