"""The MLflow form of a trained model: a pyfunc around the bundle file.

The logged model folder holds ``artifacts/bundle.pt`` (what :func:`sarcart.models.bundle.resolve_model`
fetches for ``models:/...`` URIs; the sarcart predictor does the whole pipeline from it) and a
pyfunc that scores an image that is already on the plan grid and normalised:
``(nx, ny, nz)`` or ``(n, nx, ny, nz)`` float32 -> integer labels of the same spatial shape.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

try:
    import mlflow.pyfunc

    _Base: Any = mlflow.pyfunc.PythonModel
except ImportError:  # pragma: no cover - mlflow is part of the [full] install
    _Base = object


class BundlePyfunc(_Base):  # type: ignore[misc]
    """Pyfunc: normalised image on the plan grid -> label map (argmax of the sliding-window softmax)."""

    # no type hints on load_context/predict: MLflow turns them into a (wrong) input schema
    def load_context(self, context):  # type: ignore[no-untyped-def]
        from sarcart.models.bundle import load_bundle

        self.bundle = load_bundle(context.artifacts["bundle"])
        self.net = self.bundle.network("cpu")

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        import torch

        from sarcart.training.predict import sliding_window_probs

        x = np.asarray(model_input, dtype=np.float32)
        batch = x[None] if x.ndim == 3 else x
        out = [torch.argmax(sliding_window_probs(self.net, torch.from_numpy(v), self.bundle.plan), 0).numpy()
               for v in batch]
        labels = np.stack(out).astype(np.int32)
        return labels[0] if x.ndim == 3 else labels


def log_bundle_model(bundle_path: str | Path, *, name: str = "model") -> str:
    """Log ``bundle_path`` as an MLflow pyfunc model (with an input example) in the active run.

    Returns:
        The logged model's URI (to register).
    """
    import mlflow
    import monai
    import torch

    example = np.random.default_rng(0).normal(size=(1, 16, 16, 8)).astype(np.float32)
    info = mlflow.pyfunc.log_model(
        name=name,
        python_model=str(Path(__file__).with_name("mlflow_entry.py")),
        artifacts={"bundle": str(bundle_path)},
        input_example=example,
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"monai=={monai.__version__}", "numpy",
                          "sarcart"],
    )
    return str(info.model_uri)
