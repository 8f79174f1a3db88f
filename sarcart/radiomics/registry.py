"""Risk models in MLflow: log a trained pipeline with its metrics, register it, and resolve a model by name.

The store is resolved by :mod:`sarcart.tracking` (default ``mlruns/`` at the project root, SQLite;
``MLFLOW_TRACKING_URI`` overrides it; tests pass a temporary folder). Models are logged with MLflow's
scikit-learn flavour using skops serialisation, and registered as ``sarcart-radiomics-risk`` unless
another name is given. No patient identifiers are logged: case ids go through
:func:`sarcart.tracking.hash_id`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sarcart import tracking
from sarcart.errors import ConfigError
from sarcart.radiomics.risk import EXPERIMENT, REGISTERED_NAME, RiskConfig, load_model

log = logging.getLogger(__name__)


def log_risk_model(
    model: Any,
    config: RiskConfig,
    metrics: Mapping[str, float],
    *,
    train_cases: Sequence[str] = (),
    test_cases: Sequence[str] = (),
    registered_name: str | None = REGISTERED_NAME,
    store: str | os.PathLike[str] | None = None,
    extra_params: Mapping[str, Any] | None = None,
    experiment: str = EXPERIMENT,
) -> dict[str, str]:
    """Log one trained risk model as an MLflow run (params, metrics, model) and optionally register it.

    Returns:
        ``{"run_id", "model_uri", "version"}`` (version empty when not registered).
    """
    import mlflow
    import mlflow.sklearn

    exp = tracking.experiment_id(experiment, store)
    with mlflow.start_run(experiment_id=exp) as run:
        tracking.log_config({**asdict(config), **dict(extra_params or {})}, artifact_file="risk_config.json")
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        mlflow.log_dict({"train": [tracking.hash_id(c) for c in train_cases],
                         "test": [tracking.hash_id(c) for c in test_cases]}, "cases.json")
        mlflow.set_tag("sarcart.note", "synthetic-cohort demonstration; clinical use needs labelled data")
        info = mlflow.sklearn.log_model(model, name="model", serialization_format="skops",
                                        skops_trusted_types=_trusted(model))
    version = ""
    if registered_name:
        mv = mlflow.register_model(info.model_uri, registered_name)
        version = str(mv.version)
    log.info("logged risk model run %s (%s)", run.info.run_id, info.model_uri)
    return {"run_id": run.info.run_id, "model_uri": info.model_uri, "version": version}


def _trusted(model: Any) -> list[str]:
    import tempfile

    import skops.io as sio

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.skops"
        sio.dump(model, path)
        return list(sio.get_untrusted_types(file=path))


#: risk models shipped in the package: ``sarcart/models/weights/<name>.skops`` (+ ``<name>.json``)
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "models" / "weights"


def shipped_risk_models() -> dict[str, Path]:
    """Name -> file of every risk model shipped in the package (e.g. ``adapt-risk``)."""
    return {p.stem: p for p in sorted(WEIGHTS_DIR.glob("*.skops"))}


def resolve_model(name_or_uri: str, *, store: str | os.PathLike[str] | None = None) -> Any:
    """Load a risk model from a shipped name (``adapt-risk``), a ``.skops`` file, an MLflow URI
    (``models:/...``, ``runs:/...``) or a registered model name (its latest version).

    Raises:
        ConfigError: nothing found under that name.
    """
    shipped = shipped_risk_models()
    if name_or_uri in shipped:
        return load_model(shipped[name_or_uri])
    path = Path(name_or_uri)
    if path.suffix == ".skops" or path.is_file():
        return load_model(path)
    import mlflow
    import mlflow.sklearn
    from mlflow.exceptions import MlflowException

    uri = tracking.configure(store)
    if "://" in name_or_uri or name_or_uri.startswith(("models:/", "runs:/")):
        model_uri = name_or_uri
    else:
        client = mlflow.MlflowClient(tracking_uri=uri)
        try:
            versions = client.search_model_versions(f"name='{name_or_uri}'")
        except MlflowException as exc:
            raise ConfigError(f"cannot query the model registry at {uri}: {exc}") from exc
        if not versions:
            raise ConfigError(f"no registered model {name_or_uri!r} in {uri} and no such .skops file; "
                              "train one first (docs/radiomics.md, 'Risk model')")
        latest = max(versions, key=lambda v: int(v.version))
        model_uri = f"models:/{name_or_uri}/{latest.version}"
    try:
        return mlflow.sklearn.load_model(model_uri)
    except (MlflowException, OSError) as exc:
        raise ConfigError(f"cannot load risk model {model_uri}: {exc}") from exc
