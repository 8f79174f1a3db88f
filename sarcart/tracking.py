"""MLflow store resolution and run helpers shared by every subpackage that tracks.

Default store: ``mlruns/`` at the project root, as a SQLite database ``mlruns/mlflow.db`` with
artifacts in ``mlruns/artifacts/`` (current MLflow refuses the plain file store). The project root
is the nearest folder above the working directory holding ``pyproject.toml`` or ``.git`` (the
working directory itself otherwise). ``MLFLOW_TRACKING_URI`` overrides everything.

No patient identifiers go to MLflow: pass them through :func:`hash_id` first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

from sarcart.errors import ConfigError

log = logging.getLogger(__name__)

STORE_DIRNAME = "mlruns"
_HASH_SALT = "sarcart-v1"


def project_root(start: Path | None = None) -> Path:
    """Nearest folder at or above ``start`` (default: cwd) holding pyproject.toml or .git."""
    here = (start or Path.cwd()).resolve()
    for p in (here, *here.parents):
        if (p / "pyproject.toml").is_file() or (p / ".git").exists():
            return p
    return here


def tracking_uri(store: str | os.PathLike[str] | None = None) -> str:
    """The tracking URI to use.

    Args:
        store: a URI (``sqlite:///...``, ``http://...``) or a folder that becomes
            ``sqlite:///<folder>/mlflow.db``; ``None`` means ``MLFLOW_TRACKING_URI`` when set,
            else ``<project root>/mlruns``.
    """
    if store is None:
        env = os.environ.get("MLFLOW_TRACKING_URI")
        if env:
            return env
        store = project_root() / STORE_DIRNAME
    s = str(store)
    if "://" in s:
        return s
    folder = Path(s).resolve()
    if folder.suffix == ".db":
        folder.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{folder}"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def artifact_root(uri: str) -> str | None:
    """Artifact folder beside a SQLite store (``<store>/artifacts``); None for remote stores."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.parent / "artifacts").as_uri()
    return None


def configure(store: str | os.PathLike[str] | None = None) -> str:
    """Point MLflow at the resolved store and return its URI."""
    import mlflow

    uri = tracking_uri(store)
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        mlflow.set_registry_uri(uri)
    return uri


def experiment_id(name: str, store: str | os.PathLike[str] | None = None) -> str:
    """Id of experiment ``name`` in the store, created (with artifacts beside the DB) if needed."""
    import mlflow

    if not name.strip():
        raise ConfigError(f"experiment name must be non-empty, got {name!r}")
    uri = configure(store)
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    root = artifact_root(uri)
    location = f"{root}/{name}" if root else None
    return client.create_experiment(name, artifact_location=location)


def hash_id(value: str, *, length: int = 12) -> str:
    """Stable pseudonym of an identifier (patient ID, name) for logs, MLflow and research tables."""
    return hashlib.sha256(f"{_HASH_SALT}:{value}".encode()).hexdigest()[:length]


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> flat ``{"a.b.c": "value"}`` strings (MLflow params are 6000 chars max)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, prefix=f"{name}."))
        else:
            text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
            out[name] = text[:6000]
    return out


def log_config(config: Any, *, artifact_file: str = "config.json") -> None:
    """Log a configuration (pydantic model, dataclass or mapping) as params and as a JSON artifact."""
    import dataclasses

    import mlflow

    if hasattr(config, "model_dump"):
        data = config.model_dump(mode="json")
    elif dataclasses.is_dataclass(config) and not isinstance(config, type):
        data = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    elif isinstance(config, Mapping):
        data = dict(config)
    else:
        raise ConfigError(f"config must be a pydantic model, dataclass or mapping, got {type(config).__name__}")
    mlflow.log_params(flatten_params(data))
    mlflow.log_dict(data, artifact_file)
