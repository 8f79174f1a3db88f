"""Shared fixtures and the GPU opt-in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import shared_path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The reference data folder (../shared/data); skips when absent."""
    return shared_path()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="no CUDA device on this machine (GPU checks are opt-in)")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


os.environ.setdefault("MPLBACKEND", "Agg")
