"""Helpers for tests: reference data in ../shared/data and external programs (import as `helpers`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_path(*parts: str) -> Path:
    """Path inside ../shared/data, or skip the test with the reason when it is absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"reference data {p} is absent (only the project's workplace has ../shared/data)")
    return p


def require_tool(name: str, package: str) -> str:
    """Full path of an external program, or skip naming the Debian package that provides it."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not found: install the Debian package {package} (make test does so as root)")
    return path


def synth_patients(out: Path, *, patients: int = 1, seed: int = 0, fractions: int = 1,
                   site: str = "retroperitoneum", spacing: str | None = "6,6,6", spec: Path | None = None) -> Path:
    """Synthesise a small phantom cohort into ``out`` with ``sarcart synth`` (1 worker, no progress bar).

    With ``spec`` (a cohort YAML) the spec's own seed, site and spacing are kept: only the patient and
    fraction counts are passed.
    """
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "sarcart.cli", "synth", "--out", str(out), "--patients", str(patients),
           "--fractions", str(fractions), "--no-progress", "--workers", "1"]
    if spec is not None:
        cmd += ["--spec", str(spec)]
    else:
        cmd += ["--site", site, "--seed", str(seed)] + (["--spacing", spacing] if spacing else [])
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True)
    return out
