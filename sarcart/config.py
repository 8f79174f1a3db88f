"""Shared helpers for component configurations: YAML files that reject unknown keys, validated
by pydantic models, with errors that name the file, the key, the rule and the value."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from sarcart.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def format_validation_error(exc: ValidationError, where: str) -> str:
    """One line per problem: ``where: key.sub: message (got value)``.

    The offending value is shown for a single field only (never the whole mapping, which may hold
    secrets such as tokens) and is shortened when long.
    """
    msgs = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e["loc"])
        value = e.get("input")
        got = ""
        if loc and not isinstance(value, (dict, list)):
            text = repr(value)
            got = f" (got {text[:60] + '...' if len(text) > 60 else text})"
        msgs.append(f"{loc or '(top)'}: {e['msg']}{got}")
    return f"{where}: " + "; ".join(msgs)


def read_yaml_mapping(path: str | os.PathLike[str], *, what: str = "configuration", hint: str = "") -> dict[str, Any]:
    """Read a YAML file holding a mapping; :class:`ConfigError` for a missing file, bad YAML or a non-mapping."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} file not found: {p}" + (f"; {hint}" if hint else ""))
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping of {what} fields, got {type(raw).__name__}")
    return raw


def validate_model(model: type[M], data: dict[str, Any], *, where: str, hint: str = "") -> M:
    """``model.model_validate(data)`` with a :class:`ConfigError` naming every problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where) + (f"; {hint}" if hint else "")) from exc


def load_model(model: type[M], path: str | os.PathLike[str] | None, *, what: str = "configuration",
               hint: str = "", **overrides: Any) -> M:
    """Read ``path`` (optional), apply ``overrides`` (``None`` ignored) and validate into ``model``."""
    data = read_yaml_mapping(path, what=what, hint=hint) if path is not None else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return validate_model(model, data, where=str(path) if path is not None else what, hint=hint)
