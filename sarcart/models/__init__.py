"""Segmentation models: self-configuring plans, MONAI networks built by name, model bundles.

``plan``/``planner``: dataset fingerprint + compute budget -> :class:`Plan` (readable JSON).
``networks``: :func:`build_network` (DynUNet with deep supervision, SegResNet, UNet).
``bundle``: :class:`ModelBundle` files and :func:`resolve_model` (shipped name, path, MLflow URI).
"""

from sarcart.models.plan import Budget, Fingerprint, NetworkPlan, Plan
from sarcart.models.planner import make_plan

__all__ = ["Budget", "Fingerprint", "NetworkPlan", "Plan", "make_plan"]
