"""Segmentation stage of a fraction: network contours where a trusted model exists, the clinic's
baseline (deformable contour propagation from the reference) otherwise, with QA flags.

Per structure the method is recorded (``network`` or ``propagation``):

* structures the network produces (``SegmentSettings.network_structures`` ∩ the model's) come from the
  network unless QA flags them (then propagation, with the flags kept in the QA report);
* everything else drawn on the reference (BONE, GAS, ... and the network structures when no model is
  available) is propagated: demons registration of today's image to the reference
  (:func:`sarcart.inference.propagation.register`), masks warped and thresholded at 0.5;
* BODY comes from an image rule (:func:`body_from_image`: Otsu threshold of the smoothed image,
  largest connected component, holes filled), so air, bowel gas and the couch edge do not depend on
  the registration.

The DICOM service can call :func:`segment_fraction` as it stands (volumes in, masks + QA out).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from sarcart.adapt.config import SegmentSettings
from sarcart.errors import ConfigError, SarcartError
from sarcart.inference.propagation import RegistrationConfig, propagate, register
from sarcart.inference.qa import input_check, structure_qa
from sarcart.io.geometry import Volume

log = logging.getLogger(__name__)


@dataclass
class FractionSegmentation:
    """Today's structures.

    Attributes:
        masks: canonical name -> boolean :class:`Volume` on today's image grid.
        qa: ``{"input": {...}, "structures": {name: {... "flags": [...]}}, "flags": [...]}``.
        method: name -> ``"network"`` or ``"propagation"`` (``"image rule"`` for BODY).
        model: network name and version, or ``"none"``.
        displacement: today -> reference displacement (mm, on today's grid) of the propagation.
    """

    masks: dict[str, Volume]
    qa: dict[str, Any]
    method: dict[str, str]
    model: str = "none"
    displacement: Volume | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> list[str]:
        return sorted(n for n, q in self.qa.get("structures", {}).items() if q.get("flags"))


def body_from_image(image: Volume) -> Volume:
    """BODY mask by an intensity rule: Otsu threshold of the Gaussian-smoothed image (sigma 1 voxel),
    the largest 26-connected component, internal holes filled (3D and slice by slice).

    Otsu, IEEE Trans SMC 1979;9:62, doi 10.1109/TSMC.1979.4310076.
    """
    from skimage.filters import threshold_otsu

    arr = ndimage.gaussian_filter(np.asarray(image.array, dtype=np.float32), 1.0)
    fg = arr > threshold_otsu(arr)
    lab, n = ndimage.label(fg, structure=np.ones((3, 3, 3)))
    if n == 0:
        raise SarcartError("no body found in the image (constant image?); check the series")
    body = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    body = ndimage.binary_fill_holes(body)
    for k in range(body.shape[2]):
        body[:, :, k] = ndimage.binary_fill_holes(body[:, :, k])
    return image.with_array(body)


@functools.lru_cache(maxsize=4)
def _predictor(model: str, device: str):
    """The predictor, or ``None`` when the model cannot be loaded (cached: the warning is logged once)."""
    from sarcart.inference.predictor import Predictor, PredictorConfig

    try:
        return Predictor(model, config=PredictorConfig(device=device, keep_probabilities=True))
    except (ConfigError, FileNotFoundError, OSError) as exc:
        log.warning("segmentation model %r not available (%s): contours by propagation", model, exc)
        return None


def load_network(model: str | None, device: str = "cpu"):
    """The predictor of ``model`` or ``None`` when it is not available (logged; propagation is used)."""
    return _predictor(model, device) if model else None


def segment_fraction(image: Volume, *, model: Any, reference_masks: Mapping[str, Volume], reference_image: Volume,
                     previous: Mapping[str, Volume] | None = None, settings: SegmentSettings | None = None
                     ) -> FractionSegmentation:
    """Contour today's image (see the module docstring).

    Args:
        image: today's image (float, ``(nx, ny, nz)``).
        model: a :class:`~sarcart.inference.predictor.Predictor`, or ``None`` for propagation only.
        reference_masks: structures drawn on ``reference_image`` (the reference or the last approved set).
        reference_image: the image those structures were drawn on.
        previous: the previous fraction's structures on today's grid (volume-change QA), else the
            propagated reference structures are the comparison.
        settings: see :class:`~sarcart.adapt.config.SegmentSettings`.
    """
    s = settings or SegmentSettings()
    reg = RegistrationConfig(demons_spacing_mm=s.demons_spacing_mm, demons_iterations=s.demons_iterations,
                             smoothing_mm=s.smoothing_mm)
    disp = register(image, reference_image, reg)
    carried = propagate({n: m for n, m in reference_masks.items() if m.array.any()}, disp)
    masks: dict[str, Volume] = {}
    method: dict[str, str] = {}
    qa_s: dict[str, dict[str, Any]] = {}
    body = body_from_image(image) if s.body_from_image else carried.get("BODY")
    if body is not None:
        masks["BODY"], method["BODY"] = body, ("image rule" if s.body_from_image else "propagation")
    model_name = "none"
    if model is not None:
        seg = model(image)
        model_name = f"{seg.model}:{seg.version}" if seg.version else seg.model
        for name in seg.structures:
            if name not in s.network_structures:
                continue
            m = seg.mask(name)
            prob, prob_mask = seg.confidence_inputs(name) or (None, None)
            prev = (previous or {}).get(name, carried.get(name))
            q = structure_qa(name, m, prob=prob, prob_mask=prob_mask, previous=prev)
            if q["flags"] and s.flagged_fallback and name in carried:
                q["replaced_by_propagation"] = True
                masks[name], method[name] = carried[name], "propagation"
            else:
                masks[name], method[name] = m, "network"
            qa_s[name] = q
    for name, m in carried.items():
        if name not in masks:
            masks[name], method[name] = m, "propagation"
    for name, m in masks.items():
        if name not in qa_s:
            prev = (previous or {}).get(name)
            qa_s[name] = structure_qa(name, m, previous=prev if prev is not None else reference_masks.get(name))
    inp = input_check(image, body=masks["BODY"].array if "BODY" in masks else None)
    flags = [f"{n}: {f}" for n, q in qa_s.items() for f in q["flags"]] + [f"input: {f}" for f in inp["flags"]]
    qa = {"input": inp, "structures": qa_s, "flags": flags, "method": dict(method), "model": model_name}
    return FractionSegmentation(masks, qa, method, model_name, disp)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean arrays (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else float(2.0 * (a & b).sum() / total)
