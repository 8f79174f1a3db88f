"""Canonical structure names and the synonym table that maps clinical ROI names onto them."""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

from sarcart.errors import ConfigError

CANONICAL = (
    "GTV", "CTV", "PTV", "BOWEL", "KIDNEY_L", "KIDNEY_R", "BODY", "BONE",
    "GAS", "EDEMA", "NECROSIS", "HYPOXIA",
)

#: display colour (RGB 0-255) and DICOM RT ROI Interpreted Type of each canonical structure
STYLE: dict[str, tuple[tuple[int, int, int], str]] = {
    "GTV": ((255, 0, 0), "GTV"),
    "CTV": ((255, 128, 0), "CTV"),
    "PTV": ((0, 128, 255), "PTV"),
    "BOWEL": ((170, 110, 40), "ORGAN"),
    "KIDNEY_L": ((0, 200, 0), "ORGAN"),
    "KIDNEY_R": ((0, 150, 255), "ORGAN"),
    "BODY": ((0, 255, 0), "EXTERNAL"),
    "BONE": ((230, 230, 200), "ORGAN"),
    "GAS": ((0, 255, 255), "CAVITY"),
    "EDEMA": ((255, 0, 255), "CONTROL"),
    "NECROSIS": ((128, 0, 128), "CONTROL"),
    "HYPOXIA": ((255, 255, 0), "DOSE_REGION"),
}


def _normalise(name: str) -> str:
    return re.sub(r"[\s\-.]+", "_", name.strip()).upper()


def load_synonyms(path: str | Path | None = None) -> dict[str, list[re.Pattern[str]]]:
    """Load a synonym table (canonical name -> list of regular expressions).

    Args:
        path: a YAML file of the same form as the packaged ``structure_synonyms.yaml``; the
            packaged table when ``None``.

    Raises:
        ConfigError: unknown canonical names, wrong types or invalid regular expressions.
    """
    if path is None:
        return _default_synonyms()
    return _compile(Path(path).read_text(), str(path))


@lru_cache(maxsize=1)
def _default_synonyms() -> dict[str, list[re.Pattern[str]]]:
    text = resources.files("sarcart.io").joinpath("structure_synonyms.yaml").read_text()
    return _compile(text, "structure_synonyms.yaml")


def _compile(text: str, where: str) -> dict[str, list[re.Pattern[str]]]:
    raw = yaml.safe_load(text) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping canonical name -> list of patterns")
    table: dict[str, list[re.Pattern[str]]] = {}
    for key, patterns in raw.items():
        if key not in CANONICAL:
            raise ConfigError(f"{where}: unknown canonical structure {key!r}; allowed: {', '.join(CANONICAL)}")
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise ConfigError(f"{where}: {key} must map to a list of strings, got {patterns!r}")
        try:
            table[key] = [re.compile(p, re.IGNORECASE) for p in patterns]
        except re.error as exc:
            raise ConfigError(f"{where}: invalid pattern for {key}: {exc}") from exc
    return table


def canonical_name(name: str, synonyms: dict[str, list[re.Pattern[str]]] | None = None) -> str | None:
    """Canonical name of a clinical ROI name (``GTV_Mass`` -> ``GTV``), or ``None`` when unknown."""
    table = synonyms if synonyms is not None else _default_synonyms()
    norm = _normalise(name)
    for canon, patterns in table.items():
        if any(p.fullmatch(norm) for p in patterns):
            return canon
    return None
