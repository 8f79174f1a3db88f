"""Model bundles: one file with the plan, the weights and a description; and where to find them.

A bundle (``*.pt``, written with :func:`save_bundle`) is a plain dictionary of tensors and JSON
values, loaded with ``torch.load(weights_only=True)`` (no pickled code is executed)::

    {"format": "sarcart-seg-1", "plan": {...plan.json...}, "state_dict": {...}, "meta": {...}}

:func:`resolve_model` turns what a user types into a bundle path: a shipped model name
(``gtv-t1``, ``trufi`` under ``sarcart/models/weights/``), a file or folder, or an MLflow URI
(``models:/sarcart-trufi@champion``, ``runs:/<id>/model``), downloaded once into a cache folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sarcart.errors import ConfigError
from sarcart.io.atomic import atomic_write
from sarcart.models.networks import build_network
from sarcart.models.plan import Plan

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "sarcart-seg-1"
BUNDLE_FILENAME = "bundle.pt"
_URI_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


@dataclass(frozen=True)
class ModelBundle:
    """A trained segmentation model: its plan, its weights and what is known about it.

    Attributes:
        plan: the training plan (spacing, patch, network, structures, normalisation).
        state_dict: network weights (float32 tensors on CPU).
        meta: JSON-able facts: task, version, training data summary, validation metrics.
    """

    plan: Plan
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    def network(self, device: str | torch.device = "cpu") -> nn.Module:
        """The network with the weights loaded, in eval mode on ``device``."""
        net = build_network(self.plan.network, out_channels=self.plan.n_classes)
        net.load_state_dict(self.state_dict)
        return net.to(device).eval()

    @property
    def name(self) -> str:
        return str(self.meta.get("name", self.plan.task))

    @property
    def version(self) -> str:
        return str(self.meta.get("version", "unversioned"))

    def weights_digest(self) -> str:
        """SHA-256 (first 16 hex digits) of the weights as float32: the same model whatever its name, path,
        registry version or storage precision (a float16 bundle and its float32 load agree)."""
        h = hashlib.sha256()
        for k in sorted(self.state_dict):
            v = self.state_dict[k].detach().cpu()
            h.update(k.encode())
            h.update(str(v.dtype if not v.is_floating_point() else torch.float32).encode())
            h.update((v.float() if v.is_floating_point() else v).contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def save_bundle(bundle: ModelBundle, path: str | os.PathLike[str], *, half: bool = False) -> Path:
    """Write a bundle atomically; ``half`` stores floating weights as float16 (halves the size)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu())
          for k, v in bundle.state_dict.items()}
    payload = {"format": BUNDLE_FORMAT, "plan": bundle.plan.model_dump(mode="json"), "state_dict": sd,
               "meta": bundle.meta}
    return atomic_write(p, lambda tmp: torch.save(payload, tmp), suffix=".pt")


def load_bundle(path: str | os.PathLike[str]) -> ModelBundle:
    """Read a bundle written by :func:`save_bundle` (weights come back as float32).

    Raises:
        ConfigError: the file is missing, not a bundle, or of an unknown format.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"model bundle {p} not found; train one with `sarcart train` or name a shipped model")
    try:
        raw = torch.load(p, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise ConfigError(f"{p} is not a readable model bundle: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != BUNDLE_FORMAT:
        got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise ConfigError(f"{p} is not a sarcart model bundle (format {got!r}, expected {BUNDLE_FORMAT!r})")
    plan = Plan.model_validate(raw["plan"])
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in raw["state_dict"].items()}
    return ModelBundle(plan=plan, state_dict=sd, meta=dict(raw.get("meta", {})))


def export_bundle(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, meta: dict[str, Any] | None = None,
                  half: bool = False) -> Path:
    """Copy a bundle with updated ``meta`` (e.g. to ship it as ``sarcart/models/weights/<name>.pt``)."""
    b = load_bundle(src)
    return save_bundle(ModelBundle(b.plan, b.state_dict, {**b.meta, **(meta or {})}), dst, half=half)


def shipped_models() -> dict[str, Path]:
    """Shipped model names and their bundle files (``sarcart/models/weights/<name>.pt``)."""
    folder = Path(str(resources.files("sarcart.models").joinpath("weights")))
    if not folder.is_dir():
        return {}
    return {f.stem: f for f in sorted(folder.glob("*.pt"))}


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sarcart" / "models"


def _from_uri(uri: str, cache: Path | None, store: str | os.PathLike[str] | None = None) -> Path:
    import hashlib

    import mlflow
    from mlflow.exceptions import MlflowException

    from sarcart import tracking

    store_uri = tracking.configure(store)
    dst = (cache or _cache_dir()) / hashlib.sha256(f"{store_uri}|{uri}".encode()).hexdigest()[:16]
    if uri.startswith("models:/") and "@" in uri:
        # aliases move: never trust a cached copy of an alias
        import shutil

        shutil.rmtree(dst, ignore_errors=True)
    found = sorted(dst.rglob(BUNDLE_FILENAME)) if dst.is_dir() else []
    if not found:
        dst.mkdir(parents=True, exist_ok=True)
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst), tracking_uri=store_uri,
                                                        registry_uri=store_uri)
        except (MlflowException, OSError) as exc:
            raise ConfigError(f"cannot fetch model {uri!r} from {store_uri}: {exc}") from exc
        found = sorted(Path(local).rglob(BUNDLE_FILENAME))
    if not found:
        raise ConfigError(f"MLflow model {uri!r} holds no {BUNDLE_FILENAME}; was it logged by `sarcart train`?")
    return found[0]


def resolve_model(ref: str | os.PathLike[str], *, cache: Path | None = None,
                  store: str | os.PathLike[str] | None = None) -> Path:
    """The bundle file that ``ref`` names.

    Args:
        ref: a shipped model name (see :func:`shipped_models`), a bundle file, a folder holding
            ``bundle.pt`` itself or exactly one below it (an MLflow model folder too), or an MLflow URI (``models:/NAME@ALIAS``,
            ``models:/NAME/VERSION``, ``runs:/RUN/model``), fetched from the tracking store
            (``store``, else ``MLFLOW_TRACKING_URI`` or ``mlruns/``).
        cache: download folder for URIs (default ``~/.cache/sarcart/models``).
        store: MLflow store (folder or URI) that URIs are fetched from.

    Raises:
        ConfigError: nothing matches ``ref``, or a folder holds several bundles below it and none itself.
    """
    s = str(ref)
    if s.startswith(_URI_SCHEMES):
        return _from_uri(s, cache, store)
    shipped = shipped_models()
    if s in shipped:
        return shipped[s]
    p = Path(s)
    if p.is_file():
        return p
    if p.is_dir():
        if (p / BUNDLE_FILENAME).is_file():
            return p / BUNDLE_FILENAME
        found = sorted(p.rglob(BUNDLE_FILENAME))
        if len(found) == 1:
            return found[0]
        if found:  # e.g. a task folder with every fold's model: which one is meant is not for us to guess
            listed = ", ".join(str(f.relative_to(p)) for f in found[:8]) + (", ..." if len(found) > 8 else "")
            raise ConfigError(
                f"folder {p} holds {len(found)} model bundles ({listed}); name one of them, or repeat --model "
                f"with each to run them as an ensemble")
        raise ConfigError(f"folder {p} holds no {BUNDLE_FILENAME}")
    names = ", ".join(shipped) or "none installed"
    raise ConfigError(
        f"model {s!r} is neither a shipped model ({names}), an existing file/folder, nor an MLflow URI "
        "(models:/NAME@ALIAS, runs:/RUN_ID/model)"
    )
