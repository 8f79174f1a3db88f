"""Helpers for tests: reference data in ../shared/data and external programs (import as `helpers`)."""

from __future__ import annotations

import functools
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


#: what the ``--version`` output of a package's programs contains; pynetdicom 3 installs Python apps with
#: DCMTK's names (storescp, storescu) into the virtual environment's bin/, which comes first on PATH once the
#: environment is activated, and they take other options
VERSION_MARKER = {"dcmtk": "dcmtk"}


@functools.cache
def require_tool(name: str, package: str) -> str:
    """Full path of the Debian package's external program, or skip naming the package that provides it.

    Every ``name`` on PATH is tried in order; for a package in :data:`VERSION_MARKER` the first whose
    ``--version`` output names the package wins (not a same-named program of another origin).
    """
    import os
    import subprocess

    marker = VERSION_MARKER.get(package)
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = shutil.which(name, path=folder)
        if path is None:
            continue
        if marker is None:
            return path
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=False)
        if marker in (out.stdout + out.stderr).lower():
            return path
    pytest.skip(f"{name} of {package} not found: install the Debian package {package} (make test does so as root)")


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
