"""MLflow models-from-code entry point: the logged model is :class:`BundlePyfunc` (no pickled objects)."""

from mlflow.models import set_model

from sarcart.training.mlflow_model import BundlePyfunc

set_model(BundlePyfunc())
