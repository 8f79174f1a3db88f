"""MLflow store resolution and run helpers shared by every subpackage that tracks.

Default store: ``mlruns/`` at the project root, as a SQLite database ``mlruns/mlflow.db`` with
artifacts in ``mlruns/artifacts/`` (current MLflow refuses the plain file store). The project root
is the nearest folder above the working directory holding ``pyproject.toml`` or ``.git`` (the
working directory itself otherwise). ``MLFLOW_TRACKING_URI`` overrides everything.

No patient identifiers go to MLflow: pass them through :func:`hash_id` first.

Several processes may open the same fresh SQLite store at once (cross-validation folds started
together, one per core or as a SLURM array): MLflow creates the database schema on first use and two
processes doing so at the same time fail with ``table ... already exists``. :func:`configure` therefore
creates the schema, and :func:`experiment_id` the experiment, under an exclusive lock on
``<store>/mlflow.db.lock`` (``fcntl.flock``; on a shared file system it needs working POSIX locks).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sarcart.errors import ConfigError

log = logging.getLogger(__name__)

STORE_DIRNAME = "mlruns"
_HASH_SALT = "sarcart-v1"
_READY: set[str] = set()  # SQLite URIs whose schema this process has already seen created


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


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Exclusive inter-process lock for a SQLite store (``<db>.lock``); a no-op for other stores and
    for an in-memory database (``sqlite:///:memory:``, private to its process)."""
    if not uri.startswith("sqlite:///") or uri[len("sqlite:///"):] in ("", ":memory:"):
        yield
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock, the race stays possible
        yield
        return
    lock = Path(uri[len("sqlite:///"):] + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def configure(store: str | os.PathLike[str] | None = None) -> str:
    """Point MLflow at the resolved store and return its URI.

    A SQLite store's schema is created here, once per process and under :func:`store_lock`, so that
    processes opening the same fresh store together do not race to create its tables.
    """
    import mlflow

    uri = tracking_uri(store)
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        mlflow.set_registry_uri(uri)
        if uri not in _READY:
            with store_lock(uri):
                mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
            _READY.add(uri)
    return uri


def experiment_id(name: str, store: str | os.PathLike[str] | None = None) -> str:
    """Id of experiment ``name`` in the store, created (with artifacts beside the DB) if needed."""
    import mlflow

    if not name.strip():
        raise ConfigError(f"experiment name must be non-empty, got {name!r}")
    uri = configure(store)
    client = mlflow.MlflowClient(tracking_uri=uri)
    with store_lock(uri):  # two processes must not both create it
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


# ---------------------------------------------------------------------------- model registry
CHAMPION_ALIAS = "champion"


def register_model(model_uri: str, name: str, *, tags: Mapping[str, Any] | None = None,
                   store: str | os.PathLike[str] | None = None) -> str:
    """Register a logged model (``runs:/...`` or ``models:/m-...``) as a new version of ``name``.

    Returns:
        The new version number (as a string).
    """
    import mlflow

    if not name.strip():
        raise ConfigError(f"registered model name must be non-empty, got {name!r}")
    configure(store)
    mv = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in (tags or {}).items()})
    log.info("registered %s version %s", name, mv.version)
    return str(mv.version)


def alias_version(name: str, alias: str = CHAMPION_ALIAS, *, store: str | os.PathLike[str] | None = None) -> Any:
    """The model version holding ``alias`` (an MLflow ``ModelVersion``), or None."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=configure(store))
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def cases_key(cases: list[str]) -> str:
    """Order-independent fingerprint of a set of validation cases (already pseudonymised or not)."""
    return hashlib.sha256("|".join(sorted(set(cases))).encode()).hexdigest()[:16]


def _compare(name: str, current: Any, *, score: float, cases: str, evaluate: Any, alias: str) -> dict[str, Any]:
    """The new score against the current alias holder's score on the same cases."""
    import math

    out: dict[str, Any] = {"previous": str(current.version), "previous_score": None}
    prev: float | None = None
    how = ""
    if current.tags.get("val_cases") == cases:
        prev, how = float(current.tags.get("val_score", "nan")), "its recorded score on the same cases"
    elif evaluate is not None:
        prev = float(evaluate(f"models:/{name}/{current.version}"))
        how = "re-scored on the new version's validation cases"
    out["previous_score"] = prev
    if prev is None:
        out["reason"] = f"{alias} v{current.version} was validated on other cases and cannot be re-scored"
    elif not math.isfinite(score):
        out["reason"] = "the new version has no validation score"
    elif math.isfinite(prev) and score <= prev:
        out["reason"] = f"score {score:.4f} does not beat v{current.version}'s {prev:.4f} ({how})"
    else:
        out.update(promoted=True, reason=f"score {score:.4f} beats v{current.version}'s {prev:.4f} ({how})")
    return out


def promote_if_better(
    name: str,
    version: str,
    *,
    score: float,
    cases: str,
    evaluate: Any = None,
    alias: str = CHAMPION_ALIAS,
    store: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Move ``alias`` to ``version`` only when it beats the current holder on the same validation cases.

    Args:
        name: registered model name (``sarcart-<task>``).
        version: the new version.
        score: the new version's validation score (higher is better; NaN when it was not validated).
        cases: :func:`cases_key` of the validation cases ``score`` was computed on.
        evaluate: optional callable ``model_uri -> score`` that scores another version on the same
            cases; used when the current champion was validated on different cases. Without it such
            a champion is kept.

    Returns:
        The decision: ``{"promoted", "version", "previous", "score", "previous_score", "reason"}``;
        it is also written as tags on the new version.
    """
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=configure(store))
    client.set_model_version_tag(name, version, "val_score", f"{score:.6f}")
    client.set_model_version_tag(name, version, "val_cases", cases)
    current = alias_version(name, alias, store=store)
    decision: dict[str, Any] = {"promoted": False, "version": version, "previous": None, "score": score,
                                "previous_score": None, "reason": ""}
    if current is None:
        decision.update(promoted=True, reason=f"no {alias} yet")
    elif str(current.version) == str(version):
        decision.update(previous=version, reason=f"already {alias}")
    else:
        decision.update(_compare(name, current, score=score, cases=cases, evaluate=evaluate, alias=alias))
    if decision["promoted"]:
        client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, f"{alias}_decision", decision["reason"][:5000])
    log.info("%s v%s: %s %s", name, version, "promoted to" if decision["promoted"] else "not", alias)
    return decision


def registry_version(model_uri: str, *, store: str | os.PathLike[str] | None = None) -> str | None:
    """The version number a ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` URI points to (else None)."""
    if not model_uri.startswith("models:/"):
        return None
    ref = model_uri[len("models:/"):]
    if "@" in ref:
        name, alias = ref.split("@", 1)
        mv = alias_version(name, alias, store=store)
        return str(mv.version) if mv is not None else None
    parts = ref.split("/")
    return parts[1] if len(parts) == 2 and parts[1].isdigit() else None
