"""A tiny synthetic cohort written once per test session through the ``sarcart synth`` CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from sarcart.cli import main

#: 3 patients (RP, UE, LE), 2 daily fractions, 4 x 4 x 6 mm voxels over the default field of view
TINY_ARGS = ["--patients", "3", "--fractions", "2", "--site", "mixed", "--seed", "11", "--spacing", "4,4,6",
             "--snr", "25", "--hypoxia-cnr", "1.5", "--no-progress"]


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "cohort"
    assert main(["synth", "--out", str(out), *TINY_ARGS]) == 0
    return out
