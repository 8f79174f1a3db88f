"""Extremity anatomy from a real T1-weighted MR (``sts_mr_t1/STS_xxx/{image,gtv}.nii.gz``).

The reference images are N4-corrected and normalised on subcutaneous fat (fat ~ 1000), cropped
5 cm around the GTV. Tissue classes from T1 intensity ``v`` (after a 3 x 3 x 1 median filter):

* air: ``v < 0.12``-fat outside the body (largest connected body component, holes filled per slice);
* fat: ``v > 0.62`` fat; muscle / generic soft tissue: in between; dark (``v < 0.2`` fat inside the
  body): cortical bone where it rings bright marrow (holes of the closed dark mask, per slice),
  otherwise generic soft tissue (fascia, tendons, flow voids);
* marrow: bright voxels enclosed by cortex; skin: the outer voxel layer of the body where it meets air;
* GTV: the clinical mask; necrosis: GTV voxels darker than 0.7 x the GTV median (fluid has a long
  T1), at least 2 voxels inside the GTV surface, components >= 0.3 cc;
* hypoxia (synthetic, as for the phantom sites) and an oedema rim (extremities) are added;
* texture: the real within-class intensity variation, halved, becomes the PD texture.

Limits: the field of view is the 5 cm crop, not the scanner's; no vessels (flow voids become soft
tissue); thresholds fail where the T1 bias correction failed; marrow needs a cortex ring closed in
the axial slice; the real grid (about 0.98 x 0.98 x 3.3 mm) is kept, so ``--spacing/--fov`` do not apply.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from sarcart.io.geometry import Geometry
from sarcart.io.nifti import read_mask, read_nifti
from sarcart.phantom import tissues as T
from sarcart.phantom.anatomy import Anatomy
from sarcart.phantom.config import PhantomConfig
from sarcart.phantom.fields import SmoothField, rng_for
from sarcart.phantom.patients import PatientParams
from sarcart.phantom.tumour import edema_rim, hypoxic_regions

_PAD_MM = (12.0, 12.0, 18.0)


def classify_t1(t1: np.ndarray, gtv: np.ndarray, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """uint8 tissue labels from a fat-normalised T1 image (see the module docstring)."""
    fat_level = float(np.percentile(t1[t1 > 0.5 * np.percentile(t1, 99)], 50)) if t1.max() > 0 else 1.0
    v = ndimage.median_filter(t1, size=(3, 3, 1)) / max(fat_level, 1e-6)
    body = v > 0.12
    body = ndimage.binary_closing(body, structure=np.ones((3, 3, 1)), iterations=2)
    lab, n = ndimage.label(body)
    if n > 1:
        sizes = ndimage.sum(body, lab, index=np.arange(1, n + 1))
        body = lab == (int(np.argmax(sizes)) + 1)
    body = np.stack([ndimage.binary_fill_holes(body[:, :, k]) for k in range(body.shape[2])], axis=-1)
    body |= gtv
    labels = np.zeros(t1.shape, dtype=np.uint8)
    labels[body] = T.MUSCLE
    labels[body & (v > 0.62)] = T.FAT
    dark = body & (v < 0.2)
    ring = ndimage.binary_closing(dark, structure=np.ones((3, 3, 1)), iterations=2)
    holes = np.stack([ndimage.binary_fill_holes(ring[:, :, k]) for k in range(ring.shape[2])], axis=-1) & ~ring
    marrow = holes & (v > 0.45)
    cortex = dark & ndimage.binary_dilation(marrow, structure=np.ones((3, 3, 1)), iterations=4)
    labels[cortex] = T.BONE_CORTEX
    labels[marrow] = T.BONE_MARROW
    outside = ~body
    skin = body & ndimage.binary_dilation(outside, structure=np.ones((3, 3, 1))) & outside.any()
    labels[skin & ~gtv] = T.SKIN
    inner = ndimage.binary_erosion(gtv, structure=np.ones((3, 3, 1)), iterations=2)
    med = float(np.median(v[gtv])) if gtv.any() else 0.0
    nec = inner & (ndimage.gaussian_filter(v, (1.0, 1.0, 0.5)) < 0.7 * med)
    nec = _drop_small(nec, int(300.0 / float(np.prod(spacing_mm))))
    labels[gtv] = T.TUMOUR
    labels[nec] = T.NECROSIS
    return labels


def _drop_small(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = ndimage.sum(mask, lab, index=np.arange(1, n + 1))
    keep = np.concatenate([[False], sizes >= min_voxels])
    return keep[lab]


def _texture(t1: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Half the real within-class relative intensity variation, clipped to +-20 %."""
    tex = np.ones(t1.shape, dtype=np.float32)
    sm = ndimage.gaussian_filter(t1.astype(np.float32), 0.7)
    for value in (T.MUSCLE, T.FAT, T.TUMOUR, T.BONE_MARROW):
        m = labels == value
        if m.sum() > 10:
            med = float(np.median(sm[m]))
            if med > 0:
                tex[m] = np.clip(1.0 + 0.5 * (sm[m] / med - 1.0), 0.8, 1.2)
    return tex


def build_from_real(config: PhantomConfig, patient: PatientParams, case_dir: str | Path) -> Anatomy:
    """Reference anatomy on the real image grid (padded by edge replication for the motion model)."""
    case = Path(case_dir)
    img = read_nifti(case / "image.nii.gz")
    gtv = read_mask(case / "gtv.nii.gz").array
    img.geometry.require_same(read_nifti(case / "gtv.nii.gz").geometry, what=f"{case.name} gtv.nii.gz")
    g = img.geometry
    t1 = img.array.astype(np.float32)
    labels = classify_t1(t1, gtv, g.spacing_mm)
    texture = _texture(t1, labels)
    rng = rng_for(patient.seed, "anatomy")
    sp = g.spacing_mm
    depth = ndimage.distance_transform_edt(gtv, sampling=sp).astype(np.float32)
    viable = labels == T.TUMOUR
    hyp = hypoxic_regions(viable, depth, labels == T.NECROSIS, fraction=patient.hypoxic_fraction, rng=rng,
                          spacing_mm=sp, placement=config.hypoxia_placement)
    if patient.edema_mm > 0:
        outside = ndimage.distance_transform_edt(~gtv, sampling=sp).astype(np.float32)
        rim = edema_rim(outside, patient.edema_mm, rng, spacing_mm=sp) & np.isin(labels, (T.MUSCLE, T.FAT))
        labels[rim] = T.EDEMA
    normoxic = viable & ~hyp
    if hyp.any() and normoxic.any():
        texture[hyp] *= np.float32(texture[normoxic].mean() / texture[hyp].mean())
    px, py, pz = (int(np.ceil(p / s)) for p, s in zip(_PAD_MM, sp))
    pad = (px, py, pz)
    pw = [(p, p) for p in pad]
    ext = Geometry(tuple(n + 2 * p for n, p in zip(g.shape, pad)), sp,  # type: ignore[arg-type]
                   tuple(g.index_to_world(-np.asarray(pad, dtype=float))), g.direction)  # type: ignore[arg-type]
    labels_e = np.pad(labels, pw, mode="edge")
    pts = g.index_to_world(np.argwhere(gtv))
    centre = pts.mean(axis=0)
    soft = SmoothField.weight_from_mask((labels_e > 0) & ~np.isin(labels_e, T.STRUCTURES["BONE"]), ext)
    voxel_cc = float(np.prod(sp)) / 1000.0
    return Anatomy(
        site=patient.site, geometry=ext, pad=pad, labels=labels_e, hypoxia=np.pad(hyp, pw, mode="edge"),
        texture=np.pad(texture, pw, mode="edge"), tumour_centre_mm=tuple(float(c) for c in centre),  # type: ignore
        tumour_radius_mm=float(np.linalg.norm(pts - centre, axis=1).max()) + 2.0, laterality=patient.side,
        soft_weight=soft, edge_mode="nearest",
        info={"real_case": case.name, "gtv_cc": float(gtv.sum()) * voxel_cc,
              "necrosis_cc": float((labels == T.NECROSIS).sum()) * voxel_cc,
              "hypoxia_cc": float(hyp.sum()) * voxel_cc},
    )
