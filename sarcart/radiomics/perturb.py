"""Image and contour perturbations for feature robustness (Zwanenburg et al., Sci Rep 2019,
doi:10.1038/s41598-018-36938-4).

One perturbed replicate of (image, ROI) applies, in this order and each with its own random draw:

1. **rotation** about the ROI centroid around the slice normal (z), angle uniform in
   +-``rotation_deg``, and **translation** by a sub-voxel shift uniform in [0, 1) voxel along each axis;
   the image is resampled with B-splines (edge voxels extrapolated), the ROI linearly then thresholded
   at 0.5;
2. **volume adaptation**: the ROI grown or shrunk to (1 + tau) times its volume, tau uniform in
   +-``volume_change``, by thresholding its signed distance map (mm);
3. **contour randomisation**: supervoxels (SLIC, Achanta et al. 2012, doi:10.1109/TPAMI.2012.120) of the
   image around the ROI; each supervoxel joins the new ROI with a probability equal to the fraction of
   it that lies inside the ROI;
4. **noise addition**: Gaussian noise whose SD is the image noise estimated slice by slice with
   Immerkaer's method (CVIU 1996, doi:10.1006/cviu.1996.0060).

Replicate 0 is the unperturbed case. Replicates are reproducible: the random generator of replicate r
of a case is seeded with ``(seed, case id, r)``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from sarcart.errors import ConfigError, InvalidImageError
from sarcart.io.geometry import Volume


@dataclass(frozen=True)
class PerturbationConfig:
    """Perturbation chain settings (set a magnitude to 0 or a flag to False to leave a step out).

    Attributes:
        replicates: perturbed replicates per case (replicate 0, unperturbed, comes on top).
        rotation_deg: largest rotation angle about z (degrees).
        translation: sub-voxel translation on/off.
        volume_change: largest relative ROI volume change (0.1 = +-10 %).
        contour: supervoxel contour randomisation on/off.
        supervoxel_cc: mean supervoxel size (cc) for contour randomisation.
        noise: noise addition on/off.
        seed: base random seed.
    """

    replicates: int = 9
    rotation_deg: float = 10.0
    translation: bool = True
    volume_change: float = 0.1
    contour: bool = True
    supervoxel_cc: float = 0.5
    noise: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.replicates < 1:
            raise ConfigError(f"replicates must be >= 1, got {self.replicates}")
        if not 0 <= self.rotation_deg <= 45 or not 0 <= self.volume_change < 0.5:
            raise ConfigError(f"need 0 <= rotation_deg <= 45 and 0 <= volume_change < 0.5, got "
                              f"{self.rotation_deg}, {self.volume_change}")
        if self.supervoxel_cc <= 0:
            raise ConfigError(f"supervoxel_cc must be positive, got {self.supervoxel_cc}")


def replicate_rng(seed: int, case_id: str, replicate: int) -> np.random.Generator:
    """The random generator of one replicate (independent of run order and of the other cases)."""
    digest = hashlib.sha256(f"{seed}/{case_id}/{replicate}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def noise_sd(image: Volume) -> float:
    """Image noise SD by Immerkaer's method, averaged over axial slices (doi:10.1006/cviu.1996.0060).

    sigma = sqrt(pi/2) / (6 (W-2) (H-2)) * sum |I * N|, N = [[1,-2,1],[-2,4,-2],[1,-2,1]].
    """
    from scipy.ndimage import convolve

    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    arr = np.asarray(image.array, dtype=np.float64)
    if min(arr.shape[:2]) < 3:
        raise InvalidImageError(f"noise estimation needs slices of at least 3 x 3 voxels, got {arr.shape[:2]}")
    sds = []
    for z in range(arr.shape[2]):
        resp = convolve(arr[:, :, z], kernel, mode="nearest")[1:-1, 1:-1]
        sds.append(np.sqrt(np.pi / 2) * np.abs(resp).sum() / (6 * resp.size))
    return float(np.mean(sds))


def rotate_translate(image: Volume, mask: Volume, angle_deg: float, shift_vox: np.ndarray) -> tuple[Volume, Volume]:
    """Rotate (about z, through the ROI centroid) and translate (in voxels) image and ROI on their own grid."""
    import SimpleITK as sitk

    g = image.geometry
    centre = g.index_to_world(np.argwhere(mask.array).mean(0))
    tx = sitk.Euler3DTransform()
    tx.SetCenter([float(c) for c in centre])
    tx.SetRotation(0.0, 0.0, float(np.deg2rad(angle_deg)))
    tx.SetTranslation([float(t) for t in (g.affine[:3, :3] @ np.asarray(shift_vox, dtype=float))])
    ref = g.reference_image()
    img = sitk.Resample(sitk.Cast(image.to_sitk(), sitk.sitkFloat64), ref, tx, sitk.sitkBSpline, 0.0,
                        sitk.sitkFloat64, True)
    msk = sitk.Resample(mask.with_array(np.asarray(mask.array, dtype=np.float32)).to_sitk(), ref, tx,
                        sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return Volume.from_sitk(img), mask.with_array(Volume.from_sitk(msk).array >= 0.5)


def adapt_volume(mask: Volume, tau: float) -> Volume:
    """ROI grown (tau > 0) or shrunk (tau < 0) to round((1 + tau) * voxels) voxels by its signed distance."""
    from scipy.ndimage import distance_transform_edt

    m = np.asarray(mask.array, dtype=bool)
    sp = mask.geometry.spacing_mm
    signed = distance_transform_edt(~m, sampling=sp) - distance_transform_edt(m, sampling=sp)
    target = int(np.rint((1 + tau) * m.sum()))
    target = min(max(target, 1), m.size)
    order = np.argsort(signed, axis=None, kind="stable")
    out = np.zeros(m.size, dtype=bool)
    out[order[:target]] = True
    return mask.with_array(out.reshape(m.shape))


def randomise_contour(image: Volume, mask: Volume, rng: np.random.Generator, *, supervoxel_cc: float) -> Volume:
    """Supervoxel contour randomisation (see the module docstring); keeps the ROI when none is drawn."""
    from skimage.segmentation import slic

    m = np.asarray(mask.array, dtype=bool)
    idx = np.argwhere(m)
    lo = np.maximum(idx.min(0) - 3, 0)
    hi = np.minimum(idx.max(0) + 4, np.array(m.shape))
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    crop = np.asarray(image.array, dtype=np.float64)[box]
    span = float(crop.max() - crop.min()) or 1.0
    n_seg = max(2, int(np.rint(m.sum() * mask.geometry.voxel_volume_cc / supervoxel_cc)))
    labels = slic((crop - crop.min()) / span, n_segments=n_seg, compactness=0.1, channel_axis=None,
                  spacing=np.asarray(mask.geometry.spacing_mm), start_label=0, enforce_connectivity=True)
    inside = np.bincount(labels.ravel(), weights=m[box].ravel().astype(float), minlength=labels.max() + 1)
    total = np.bincount(labels.ravel(), minlength=labels.max() + 1)
    keep = rng.uniform(size=total.size) < inside / np.maximum(total, 1)
    out = np.zeros_like(m)
    out[box] = keep[labels]
    return mask.with_array(out) if out.any() else mask


def perturb(image: Volume, mask: Volume, config: PerturbationConfig, rng: np.random.Generator) -> tuple[Volume, Volume]:
    """One perturbed replicate of (image, boolean ROI) on the image's grid; see the module docstring."""
    if not np.asarray(mask.array).any():
        raise InvalidImageError("cannot perturb an empty ROI")
    img, roi = image.with_array(np.asarray(image.array, dtype=np.float64)), mask.with_array(np.asarray(mask.array) != 0)
    angle = rng.uniform(-config.rotation_deg, config.rotation_deg) if config.rotation_deg > 0 else 0.0
    shift = rng.uniform(0.0, 1.0, size=3) if config.translation else np.zeros(3)
    if angle != 0.0 or shift.any():
        img, roi = rotate_translate(img, roi, angle, shift)
    if config.volume_change > 0:
        roi = adapt_volume(roi, rng.uniform(-config.volume_change, config.volume_change))
    if config.contour:
        roi = randomise_contour(img, roi, rng, supervoxel_cc=config.supervoxel_cc)
    if config.noise:
        img = img.with_array(img.array + rng.normal(0.0, noise_sd(image), size=img.array.shape))
    return img, roi
