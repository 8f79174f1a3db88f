"""Tumour habitats: clusters of voxel-wise feature vectors inside the GTV, consistent across fractions.

Voxels of the ROI are described by a fixed set of feature maps, standardised with the reference
fraction's mean and SD (the fixed feature space), and clustered with k-means or a Gaussian mixture; k is
chosen within bounds by the silhouette score (k-means; Rousseeuw, J Comput Appl Math 1987,
doi:10.1016/0377-0427(87)90125-7) or by BIC (mixture; Schwarz, Ann Stat 1978, doi:10.1214/aos/1176344136).
A later fraction is clustered with the reference's k, starting from the reference centroids, and its
labels are matched to the reference by the Hungarian algorithm on centroid distances in that fixed
feature space (Kuhn, Nav Res Logist 1955, doi:10.1002/nav.3800020109), so habitat 2 today is habitat 2
at the reference fraction. Voxels take the label of the nearest centroid (for both methods). Label 0 is
outside the ROI.

Reference habitats are numbered by increasing mean of the first feature (by default the local mean
intensity), which makes the numbering reproducible.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from sarcart.errors import ConfigError, InvalidImageError
from sarcart.io.geometry import Volume
from sarcart.radiomics.maps.io import FeatureMaps

log = logging.getLogger(__name__)

DEFAULT_FEATURES = ("firstorder_Mean", "firstorder_Variance", "glcm_JointEntropy", "glrlm_RunEntropy",
                    "gldm_DependenceEntropy", "ngtdm_Busyness")


@dataclass(frozen=True)
class HabitatConfig:
    """Habitat clustering settings.

    Attributes:
        features: map names forming the feature vector (first = ordering feature of the labels).
        method: ``kmeans`` or ``gmm`` (full-covariance Gaussian mixture).
        k: fixed number of habitats, or None to choose within [k_min, k_max].
        k_min, k_max: bounds of the choice of k.
        max_voxels: voxels sampled (uniformly, seeded) to fit and to score each k.
        seed: random seed of sampling and clustering.
    """

    features: tuple[str, ...] = DEFAULT_FEATURES
    method: Literal["kmeans", "gmm"] = "kmeans"
    k: int | None = None
    k_min: int = 2
    k_max: int = 5
    max_voxels: int = 20000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in ("kmeans", "gmm"):
            raise ConfigError(f"method must be 'kmeans' or 'gmm', got {self.method!r}")
        if not 2 <= self.k_min <= self.k_max <= 12:
            raise ConfigError(f"need 2 <= k_min <= k_max <= 12, got k_min={self.k_min}, k_max={self.k_max}")
        if self.k is not None and not 1 <= self.k <= 12:
            raise ConfigError(f"k must be in 1..12 habitats, got {self.k}")
        if not self.features:
            raise ConfigError("features must name at least one feature map")
        if self.max_voxels < 100:
            raise ConfigError(f"max_voxels must be >= 100, got {self.max_voxels}")


@dataclass
class HabitatModel:
    """A fitted habitat model: scaler, centroids (standardised space) and the scores of each k tried."""

    config: HabitatConfig
    mean: np.ndarray
    scale: np.ndarray
    centroids: np.ndarray
    scores: dict[int, float] = field(default_factory=dict)
    _estimator: object | None = None

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    def to_json(self) -> str:
        return json.dumps({"config": asdict(self.config), "k": self.k, "mean": self.mean.tolist(),
                           "scale": self.scale.tolist(), "centroids": self.centroids.tolist(),
                           "scores": {str(k): v for k, v in self.scores.items()}}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> HabitatModel:
        """Inverse of :meth:`to_json` (a ``habitats.json`` file's content)."""
        try:
            raw = json.loads(text)
            cfg = dict(raw["config"])
            cfg["features"] = tuple(cfg["features"])
            return cls(HabitatConfig(**cfg), np.asarray(raw["mean"], float), np.asarray(raw["scale"], float),
                       np.asarray(raw["centroids"], float), {int(k): float(v) for k, v in raw.get("scores", {}).items()})
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a habitats.json written by sarcart: {exc}") from exc


def _matrix(fmaps: FeatureMaps, config: HabitatConfig) -> np.ndarray:
    missing = [f for f in config.features if f not in fmaps.maps]
    if missing:
        raise InvalidImageError(f"habitat features {missing} are not among the maps; compute them first "
                                "(sarcart radiomics maps --features ...)")
    x, _ = fmaps.stack(list(config.features))
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(1).sum())
        log.warning("%d ROI voxels have non-finite features; they are set to the feature median", bad)
        med = np.nanmedian(np.where(np.isfinite(x), x, np.nan), axis=0)
        x = np.where(np.isfinite(x), x, med)
    return x


def _sample(n: int, size: int, seed: int) -> np.ndarray:
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def _cluster(z: np.ndarray, k: int, config: HabitatConfig, *, init: np.ndarray | None = None) -> tuple[object, np.ndarray]:
    """k-means or Gaussian mixture on standardised features; ``init`` warm-starts from given centroids."""
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    if config.method == "kmeans":
        km = (KMeans(n_clusters=k, n_init=4, random_state=config.seed) if init is None
              else KMeans(n_clusters=k, init=init, n_init=1, random_state=config.seed))
        est = km.fit(z)
        return est, est.cluster_centers_
    gm = GaussianMixture(n_components=k, covariance_type="full", n_init=2 if init is None else 1,
                         random_state=config.seed, means_init=init)
    est = gm.fit(z)
    return est, est.means_


def _choose_k(z: np.ndarray, config: HabitatConfig) -> tuple[int, dict[int, float]]:
    from sklearn.metrics import silhouette_score

    scores: dict[int, float] = {}
    for k in range(config.k_min, config.k_max + 1):
        est, _ = _cluster(z, k, config)
        if config.method == "kmeans":
            labels = est.predict(z)  # type: ignore[attr-defined]
            scores[k] = float(silhouette_score(z, labels, sample_size=min(len(z), 5000), random_state=config.seed))
        else:
            scores[k] = -float(est.bic(z))  # type: ignore[attr-defined]  # higher is better
    best = max(scores, key=lambda kk: scores[kk])
    return best, scores


def fit_habitats(fmaps: FeatureMaps, config: HabitatConfig = HabitatConfig()) -> HabitatModel:
    """Fit the habitat model on one fraction's maps (the reference fraction of a patient).

    Returns:
        :class:`HabitatModel` with centroids ordered by increasing first feature.
    """
    x = _matrix(fmaps, config)
    if x.shape[0] < 10 * config.k_max:
        raise InvalidImageError(f"the ROI has {x.shape[0]} voxels; habitats need at least {10 * config.k_max}")
    mean = x.mean(0)
    scale = x.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    z = (x - mean) / scale
    zs = z[_sample(len(z), config.max_voxels, config.seed)]
    if config.k is not None:
        k, scores = config.k, dict[int, float]()
    else:
        k, scores = _choose_k(zs, config)
    _, centroids = _cluster(zs, k, config)
    order = np.argsort(centroids[:, 0], kind="stable")
    model = HabitatModel(config, mean, scale, np.asarray(centroids)[order], scores)
    log.info("habitats: k=%d (%s), scores %s", k, config.method, {kk: round(v, 3) for kk, v in scores.items()})
    return model


def assign(fmaps: FeatureMaps, model: HabitatModel) -> Volume:
    """Label every ROI voxel with its nearest centroid (1..k; 0 outside the ROI), in the model's space."""
    z = (_matrix(fmaps, model.config) - model.mean) / model.scale
    d = ((z[:, None, :] - model.centroids[None, :, :]) ** 2).sum(-1)
    labels = np.zeros(fmaps.roi.array.shape, dtype=np.uint8)
    labels[fmaps.roi.array] = (np.argmin(d, axis=1) + 1).astype(np.uint8)
    return fmaps.roi.with_array(labels)


def match_to_reference(reference: HabitatModel, model: HabitatModel) -> HabitatModel:
    """Re-order ``model``'s centroids so that habitat i is closest to reference habitat i (Hungarian).

    Both models must use the same features; distances are measured in the reference's standardised space.

    Raises:
        ConfigError: different features or a different k.
    """
    from scipy.optimize import linear_sum_assignment

    if reference.config.features != model.config.features or reference.k != model.k:
        raise ConfigError("habitat models differ in features or k; fit later fractions with the reference's k")
    cents = (model.centroids * model.scale + model.mean - reference.mean) / reference.scale
    cost = ((reference.centroids[:, None, :] - cents[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    perm = cols[np.argsort(rows)]
    return HabitatModel(model.config, reference.mean, reference.scale, cents[perm], model.scores)


def habitats_for_course(maps_per_fraction: list[FeatureMaps], config: HabitatConfig = HabitatConfig()
                        ) -> tuple[list[Volume], list[HabitatModel]]:
    """Habitats of every fraction of a patient, labels matched to the first (reference) fraction.

    The reference fraction chooses k; each later fraction is clustered with that k in the reference's
    standardised feature space and its clusters are matched to the reference centroids.
    """
    if not maps_per_fraction:
        raise ConfigError("maps_per_fraction is empty; pass the reference fraction's maps first")
    ref = fit_habitats(maps_per_fraction[0], config)
    models, labels = [ref], [assign(maps_per_fraction[0], ref)]
    for fm in maps_per_fraction[1:]:
        matched = refit_to_reference(fm, ref)
        models.append(matched)
        labels.append(assign(fm, matched))
    return labels, models


def refit_to_reference(fmaps: FeatureMaps, reference: HabitatModel) -> HabitatModel:
    """Cluster a later fraction with the reference's k in the reference's standardised feature space,
    starting from the reference centroids (the day's clusters adapt to the day's data), and number its
    clusters like the reference's (Hungarian matching of centroids). On the phantom's habitat cohort the
    warm start keeps habitats markedly more stable than independent re-clustering (docs/radiomics.md)."""
    config = reference.config
    z = (_matrix(fmaps, config) - reference.mean) / reference.scale
    zs = z[_sample(len(z), config.max_voxels, config.seed)]
    _, cents = _cluster(zs, reference.k, config, init=reference.centroids)
    return match_to_reference(reference, HabitatModel(config, reference.mean, reference.scale, np.asarray(cents)))
