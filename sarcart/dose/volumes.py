"""Planning volumes: PTV, evaluation PTV, ring, dose grid, optimisation voxels and their weights.

* The PTV is the GTV grown by the prescription's margin when none is given; ``KIDNEYS`` is the union
  of both kidneys.
* **Evaluation PTV** (``PTV_EVAL``): the PTV minus the organs listed in ``target_exclude`` grown by
  ``target_exclude_margin_mm`` (e.g. PTV minus the bowel PRV). Coverage objectives (``min``,
  ``dvh_min``, painting) act on it, so that a target overlapping the bowel is not pushed against
  the bowel limit, which stays a hard constraint on the whole organ; the PTV itself is still
  reported, and ``max`` objectives stay on it.
* Optimisation voxels: every voxel of the structures, a ring and the PTV within ``far_mm`` of the PTV;
  farther away only every ``far_stride``-th voxel along each axis, the samples standing for all of the
  structure's far voxels (about ``far_stride**3`` each; a weight in every mean, gEUD and DVH volume,
  so that the organ's volume is exact), plus normal tissue (BODY) on
  the same lattice (the ``NORMAL`` structure of the planner's hot-spot objective).
"""

from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from sarcart.dose.density import DensityTable, density_from_ct, density_from_structures
from sarcart.dose.objectives import Constraint, Objective
from sarcart.dose.prescription import PlanPrescription
from sarcart.errors import InvalidImageError
from sarcart.io.geometry import Geometry, Volume

log = logging.getLogger(__name__)

EVAL_SUFFIX = "_EVAL"
COVERAGE_KINDS = ("min", "dvh_min", "painting")


def grow_mask(mask: Volume, margin_mm: float) -> Volume:
    """Isotropic expansion of a boolean mask by ``margin_mm`` (Euclidean distance in mm)."""
    if margin_mm <= 0:
        return mask
    dist = ndimage.distance_transform_edt(~mask.array.astype(bool), sampling=mask.geometry.spacing_mm)
    return mask.with_array(dist <= margin_mm)


def prepare_structures(masks: dict[str, Volume], prescription: PlanPrescription) -> dict[str, Volume]:
    """Add the PTV (GTV + margin) when missing and ``KIDNEYS`` (union of both kidneys)."""
    out = dict(masks)
    if prescription.target not in out:
        if prescription.gtv not in out:
            raise InvalidImageError(f"neither {prescription.target} nor {prescription.gtv} among the structures "
                                    f"{sorted(out)}; contour the target")
        out[prescription.target] = grow_mask(out[prescription.gtv], prescription.ptv_margin_mm)
        if "BODY" in out:
            out[prescription.target] = out[prescription.target].with_array(
                out[prescription.target].array & out["BODY"].array.astype(bool))
        log.info("%s made from %s + %.1f mm", prescription.target, prescription.gtv, prescription.ptv_margin_mm)
    kid = [out[k].array.astype(bool) for k in ("KIDNEY_L", "KIDNEY_R") if k in out]
    if kid and "KIDNEYS" not in out:
        out["KIDNEYS"] = out["BODY" if "BODY" in out else next(iter(out))].with_array(np.logical_or.reduce(kid))
    return out


def evaluation_target(masks: dict[str, Volume], p: PlanPrescription) -> Volume | None:
    """``PTV - (excluded organs + margin)`` on the masks' grid, or ``None`` when nothing is excluded."""
    excl = [masks[n].array.astype(bool) for n in p.target_exclude if n in masks]
    if not excl:
        return None
    ptv = masks[p.target]
    prv = grow_mask(ptv.with_array(np.logical_or.reduce(excl)), p.target_exclude_margin_mm).array
    ev = ptv.array.astype(bool) & ~prv
    if not ev.any():
        log.warning("%s lies entirely within %s + %.1f mm: coverage stays on the whole %s", p.target,
                    "/".join(p.target_exclude), p.target_exclude_margin_mm, p.target)
        return None
    return ptv.with_array(ev)


def dose_grid(body: Volume, spacing_mm: float) -> Geometry:
    """Axis-aligned (image direction) grid of ``spacing_mm`` voxels covering the BODY's bounding box."""
    idx = np.argwhere(body.array)
    if idx.size == 0:
        raise InvalidImageError("BODY mask is empty")
    g = body.geometry
    lo, hi = idx.min(axis=0) - 0.5, idx.max(axis=0) + 0.5
    extent = (hi - lo) * np.asarray(g.spacing_mm)
    shape = tuple(int(max(np.ceil(e / spacing_mm), 1)) for e in extent)
    start = g.index_to_world(lo) + g.direction_matrix @ (np.full(3, spacing_mm / 2.0))
    return Geometry(shape, (spacing_mm,) * 3, tuple(start), g.direction)


def resample(volume: Volume, geometry: Geometry, *, is_mask: bool) -> Volume:
    """Resample onto ``geometry`` (linear; masks thresholded at 0.5 of the interpolated fraction)."""
    img = volume.with_array(volume.array.astype(np.float32)).to_sitk()
    out = sitk.Resample(img, geometry.reference_image(), sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    arr = Volume.from_sitk(out).array
    return Volume(arr >= 0.5 if is_mask else arr, geometry)


def painting_from_spec(masks: dict[str, Volume], p: PlanPrescription) -> Volume | None:
    """Course-dose prescription map: boost in the grown boost structure, base elsewhere in the target,
    a linear ramp over ``ramp_mm`` between them (``None`` without a painting spec or boost structure)."""
    spec = p.painting
    if spec is None or spec.boost_structure not in masks:
        return None
    boost = grow_mask(masks[spec.boost_structure], spec.grow_mm)
    dist = ndimage.distance_transform_edt(~boost.array, sampling=boost.geometry.spacing_mm)
    frac = np.clip(dist / spec.ramp_mm, 0.0, 1.0) if spec.ramp_mm > 0 else (dist > 0).astype(float)
    pmap = spec.boost_gy - (spec.boost_gy - p.dose_gy) * frac
    return boost.with_array(np.where(masks[p.target].array, pmap, 0.0).astype(np.float32))


def dose_grid_inputs(image: Volume, masks: dict[str, Volume], p: PlanPrescription, *, painting: Volume | None,
                     ct: Volume | None, density_table: DensityTable | None
                     ) -> tuple[Geometry, dict[str, Volume], Volume, Volume | None]:
    """Dose grid, masks (with the evaluation PTV), relative electron density and painting map on it."""
    density = density_from_ct(ct, table=density_table) if ct is not None else \
        density_from_structures(masks, table=density_table, image=image)
    geom = dose_grid(masks["BODY"], p.settings.dose_grid_mm)
    dmasks = {k: resample(v, geom, is_mask=True) for k, v in masks.items()}
    ev = evaluation_target(dmasks, p)
    if ev is not None:
        dmasks[p.target + EVAL_SUFFIX] = ev
    dens = resample(density, geom, is_mask=False)
    pmap = resample(painting, geom, is_mask=False) if painting is not None else painting_from_spec(dmasks, p)
    return geom, dmasks, dens, pmap


def plan_objectives(p: PlanPrescription, present: set[str], painting: bool) -> tuple[list[Objective], list[Constraint]]:
    """Per-fraction objectives and constraints on the structures present; coverage moves to the evaluation PTV."""
    objs, cons = p.per_fraction()
    keep = [o for o in objs if o.structure in present and not (painting and o.structure == p.target and o.kind == "max")]
    dropped = {o.structure for o in objs} - present
    if dropped:
        log.warning("no %s structure(s): their objectives are dropped", ", ".join(sorted(dropped)))
    missing_c = [c for c in cons if c.structure not in present]
    if missing_c:
        log.warning("constraints on absent structures ignored: %s", ", ".join(c.structure for c in missing_c))
    if painting:
        weight = p.painting.weight if p.painting is not None else 50.0
        keep.append(Objective(structure=p.target, kind="painting", weight=weight))
    ev = p.target + EVAL_SUFFIX
    if ev in present:
        keep = [o.model_copy(update={"structure": ev}) if o.structure == p.target and o.kind in COVERAGE_KINDS else o
                for o in keep]
    return keep, [c for c in cons if c.structure in present]


def calc_box(target: Volume, margin_mm: float) -> np.ndarray:
    """Boolean box: the target's bounding box grown by ``margin_mm`` (the dose calculation volume)."""
    idx = np.argwhere(target.array)
    pad = np.ceil(margin_mm / np.asarray(target.geometry.spacing_mm)).astype(int)
    lo, hi = np.maximum(idx.min(0) - pad, 0), idx.max(0) + pad + 1
    box = np.zeros(target.geometry.shape, bool)
    box[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return box


def _lattice(shape: tuple[int, ...], stride: int) -> np.ndarray:
    sub = np.zeros(shape, bool)
    sub[::stride, ::stride, ::stride] = True
    return sub


def points_and_structures(dmasks: dict[str, Volume], p: PlanPrescription, names: set[str]
                          ) -> tuple[np.ndarray, np.ndarray, dict[str, torch.Tensor], dict[str, torch.Tensor],
                                     dict[str, float]]:
    """Calculation and optimisation voxels.

    Returns:
        ``body_idx`` (flat indices of the BODY voxels in the calculation box), ``opt_pos`` (positions of the
        optimisation voxels among them), ``structs`` (structure -> positions among the optimisation voxels)
        ``weights`` (structure -> voxels each sample stands for, only for subsampled structures) and
        ``outside`` (structure -> its voxels outside the BODY's calculation box, where the dose is 0).
    """
    s = p.settings
    body = dmasks["BODY"].array & calc_box(dmasks[p.target], s.calc_margin_mm)
    body_idx = np.flatnonzero(body)
    dist = ndimage.distance_transform_edt(~dmasks[p.target].array, sampling=dmasks[p.target].geometry.spacing_mm)
    near = dist <= max(s.far_mm, s.ring_outer_mm)
    keep = near | _lattice(body.shape, s.far_stride)
    chosen = {n: dmasks[n].array & body & keep for n in names if n in dmasks}
    chosen["RING"] = body & (dist > s.ring_inner_mm) & (dist <= s.ring_outer_mm)
    chosen["NORMAL"] = body & (dist > s.ring_outer_mm) & _lattice(body.shape, max(s.far_stride, 2))  # sampled
    union = np.logical_or.reduce(list(chosen.values()))
    pos_in_body = np.full(body.size, -1, dtype=np.int64)
    pos_in_body[body_idx] = np.arange(len(body_idx))
    opt_flat = np.flatnonzero(union)
    pos_in_opt = np.full(body.size, -1, dtype=np.int64)
    pos_in_opt[opt_flat] = np.arange(len(opt_flat))
    structs, weights = {}, {}
    for n, m in chosen.items():
        if not m.any():
            continue
        flat = np.flatnonzero(m)
        structs[n] = torch.as_tensor(pos_in_opt[flat])
        far = ~near.ravel()[flat]
        if n not in ("RING", "NORMAL") and s.far_stride > 1 and far.any():
            # the far samples stand for exactly the structure's far voxels (a DVH limit such as "200 cc of 206 cc
            # below x Gy" depends on the organ volume to the voxel)
            n_far = float((dmasks[n].array & body & ~near).sum())
            weights[n] = torch.as_tensor(np.where(far, n_far / float(far.sum()), 1.0))
    outside = {n: float((dmasks[n].array & ~body).sum()) for n in names if n in dmasks}
    return body_idx, pos_in_body[opt_flat], structs, weights, {k: v for k, v in outside.items() if v > 0}
