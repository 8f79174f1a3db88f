"""Fixtures of the dose tests: keep torch to two threads (the CI machine has two cores)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

torch.set_num_threads(2)
sys.path.insert(0, str(Path(__file__).parent))  # phantoms.py
