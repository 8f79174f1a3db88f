"""Radiomics parameter sets in pyradiomics' own parameter-file format, with sarcart's defaults.

A parameter set is a mapping with the sections pyradiomics reads (``setting``, ``voxelSetting``,
``featureClass``, ``imageType``; see https://pyradiomics.readthedocs.io/en/v3.0.1/customization.html).
sarcart adds one optional top-level key, ``base``: the name of a packaged set (``mr_default``) or the
path of another parameter file; the file's own keys are then merged over that base, section by
section (``setting`` keys one by one; a key set to ``null`` is removed, so pyradiomics' default applies;
setting ``binWidth`` removes the base's ``binCount`` and vice versa). Without ``base`` a file is taken exactly as pyradiomics would take it (pyradiomics' own
defaults fill what it leaves out), so the same file gives the same settings in pyradiomics and sarcart.

Every set is validated against pyradiomics' schema (unknown keys and out-of-range values are
rejected) and identified by :attr:`RadiomicsParams.settings_hash`, a hash of the resolved mapping and
the pyradiomics version.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sarcart.errors import ConfigError

log = logging.getLogger(__name__)

PACKAGED = ("mr_default",)
SECTIONS = ("setting", "voxelSetting", "featureClass", "imageType")
DEFAULT = "mr_default"


def _packaged_text(name: str) -> str:
    if name not in PACKAGED:
        raise ConfigError(f"base must be one of {', '.join(PACKAGED)} or a file path, got {name!r}")
    return resources.files("sarcart.radiomics").joinpath("params", f"{name}.yaml").read_text()


def _parse_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must hold a mapping with sections {', '.join(SECTIONS)}, got {type(data).__name__}")
    return data


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Section-wise merge: ``setting``/``voxelSetting`` keys override one by one; other sections replace."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if key in ("setting", "voxelSetting") and isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            merged = dict(out[key])
            for exclusive, other in (("binWidth", "binCount"), ("binCount", "binWidth")):
                if exclusive in value and other not in value:
                    merged.pop(other, None)  # a new discretisation replaces the base's one
            merged.update(copy.deepcopy(dict(value)))
            out[key] = {k: v for k, v in merged.items() if v is not None}  # null removes a key

        else:
            out[key] = copy.deepcopy(value)
    return out


def _resolve(data: Mapping[str, Any], where: str, depth: int = 0) -> dict[str, Any]:
    if depth > 5:
        raise ConfigError(f"{where}: 'base' nests more than 5 levels; check for a cycle")
    data = dict(data)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{where}: base must be a packaged name or a path, got {base!r}")
    if base in PACKAGED:
        parent = _parse_yaml(_packaged_text(base), f"packaged {base}.yaml")
    else:
        path = Path(base)
        if not path.is_file():
            raise ConfigError(f"{where}: base {base!r} is neither {', '.join(PACKAGED)} nor an existing file")
        parent = _parse_yaml(path.read_text(), str(path))
    return _merge(_resolve(parent, base, depth + 1), data)


def validate(data: Mapping[str, Any], where: str = "parameters") -> dict[str, Any]:
    """Validate a resolved mapping with pyradiomics' own schema; return the normalised mapping.

    Raises:
        ConfigError: unknown sections or keys, wrong types, values out of range.
    """
    import pykwalify.core
    from pykwalify.errors import PyKwalifyException
    from radiomics import getParameterValidationFiles

    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"{where}: unknown top-level keys {sorted(unknown)}; allowed: base, {', '.join(SECTIONS)}")
    schema_file, schema_funcs = getParameterValidationFiles()
    logging.getLogger("pykwalify").setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():  # pykwalify loads pyradiomics' schema functions with load_module()
            warnings.simplefilter("ignore", DeprecationWarning)
            core = pykwalify.core.Core(source_data=copy.deepcopy(dict(data)), schema_files=[schema_file],
                                       extensions=[schema_funcs])
            return dict(core.validate(raise_exception=True))
    except (PyKwalifyException, ValueError, TypeError) as exc:  # pyradiomics' schema functions raise these
        msg = getattr(exc, "msg", str(exc))
        raise ConfigError(f"{where} is not a valid pyradiomics parameter set: {msg}. "
                          "See https://pyradiomics.readthedocs.io/en/v3.0.1/customization.html") from exc


@dataclass(frozen=True)
class RadiomicsParams:
    """A resolved, validated pyradiomics parameter set.

    Attributes:
        data: the mapping pyradiomics reads (``setting``, ``voxelSetting``, ``featureClass``, ``imageType``).
        source: where it came from (packaged name, file path or ``"mapping"``).
    """

    data: Mapping[str, Any]
    source: str = "mapping"

    @property
    def settings(self) -> dict[str, Any]:
        """``setting`` section (empty dict when absent)."""
        return dict(self.data.get("setting") or {})

    @property
    def voxel_settings(self) -> dict[str, Any]:
        """``voxelSetting`` section (empty dict when absent)."""
        return dict(self.data.get("voxelSetting") or {})

    @property
    def feature_classes(self) -> dict[str, list[str] | None]:
        """Enabled feature classes -> feature names (``None``: all non-deprecated features of the class)."""
        return dict(self.data.get("featureClass") or {})

    @property
    def settings_hash(self) -> str:
        """12 hex digits identifying the resolved settings together with the pyradiomics version."""
        import radiomics

        text = json.dumps({"params": self.data, "pyradiomics": radiomics.__version__}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def to_yaml(self) -> str:
        """The resolved parameter set as a pyradiomics parameter file (no ``base`` key)."""
        return yaml.safe_dump(json.loads(json.dumps(dict(self.data), default=str)), sort_keys=False)

    def extractor(self) -> Any:
        """A ``radiomics.featureextractor.RadiomicsFeatureExtractor`` configured with this set."""
        from radiomics import featureextractor

        return featureextractor.RadiomicsFeatureExtractor(copy.deepcopy(dict(self.data)))


def load_params(
    source: str | os.PathLike[str] | Mapping[str, Any] | RadiomicsParams | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> RadiomicsParams:
    """Load, resolve (``base``), override and validate a parameter set.

    Args:
        source: ``None`` for the packaged ``mr_default``; a packaged name; a YAML/JSON file path; a mapping
            in pyradiomics' format (may hold ``base``); or an existing :class:`RadiomicsParams`.
        overrides: mapping merged over the result section by section (``setting`` keys one by one).

    Raises:
        ConfigError: unreadable or invalid file, unknown keys, invalid values.
    """
    if isinstance(source, RadiomicsParams):
        data, where = dict(source.data), source.source
    elif source is None or (isinstance(source, str) and source in PACKAGED):
        name = DEFAULT if source is None else str(source)
        data, where = {"base": name}, name
    elif isinstance(source, Mapping):
        data, where = dict(source), "mapping"
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"params file {path} not found; pass a pyradiomics YAML file or one of {PACKAGED}")
        data, where = _parse_yaml(path.read_text(), str(path)), str(path)
    resolved = _resolve(data, where)
    if overrides:
        resolved = _merge(resolved, _resolve(dict(overrides), "overrides"))
    return RadiomicsParams(validate(resolved, where), where)
