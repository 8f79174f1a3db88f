"""Settings of the voxel-wise feature maps and the features each class offers (pyradiomics 3.0.1 names)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sarcart.errors import ConfigError

#: non-deprecated features of each pyradiomics class, in pyradiomics' (alphabetical) order
FEATURES: dict[str, tuple[str, ...]] = {
    "firstorder": (
        "10Percentile", "90Percentile", "Energy", "Entropy", "InterquartileRange", "Kurtosis", "Maximum",
        "Mean", "MeanAbsoluteDeviation", "Median", "Minimum", "Range", "RobustMeanAbsoluteDeviation",
        "RootMeanSquared", "Skewness", "TotalEnergy", "Uniformity", "Variance",
    ),
    "glcm": (
        "Autocorrelation", "ClusterProminence", "ClusterShade", "ClusterTendency", "Contrast", "Correlation",
        "DifferenceAverage", "DifferenceEntropy", "DifferenceVariance", "Id", "Idm", "Idmn", "Idn", "Imc1",
        "Imc2", "InverseVariance", "JointAverage", "JointEnergy", "JointEntropy", "MCC", "MaximumProbability",
        "SumAverage", "SumEntropy", "SumSquares",
    ),
    "glrlm": (
        "GrayLevelNonUniformity", "GrayLevelNonUniformityNormalized", "GrayLevelVariance",
        "HighGrayLevelRunEmphasis", "LongRunEmphasis", "LongRunHighGrayLevelEmphasis",
        "LongRunLowGrayLevelEmphasis", "LowGrayLevelRunEmphasis", "RunEntropy", "RunLengthNonUniformity",
        "RunLengthNonUniformityNormalized", "RunPercentage", "RunVariance", "ShortRunEmphasis",
        "ShortRunHighGrayLevelEmphasis", "ShortRunLowGrayLevelEmphasis",
    ),
    "glszm": (
        "GrayLevelNonUniformity", "GrayLevelNonUniformityNormalized", "GrayLevelVariance",
        "HighGrayLevelZoneEmphasis", "LargeAreaEmphasis", "LargeAreaHighGrayLevelEmphasis",
        "LargeAreaLowGrayLevelEmphasis", "LowGrayLevelZoneEmphasis", "SizeZoneNonUniformity",
        "SizeZoneNonUniformityNormalized", "SmallAreaEmphasis", "SmallAreaHighGrayLevelEmphasis",
        "SmallAreaLowGrayLevelEmphasis", "ZoneEntropy", "ZonePercentage", "ZoneVariance",
    ),
    "gldm": (
        "DependenceEntropy", "DependenceNonUniformity", "DependenceNonUniformityNormalized",
        "DependenceVariance", "GrayLevelNonUniformity", "GrayLevelVariance", "HighGrayLevelEmphasis",
        "LargeDependenceEmphasis", "LargeDependenceHighGrayLevelEmphasis", "LargeDependenceLowGrayLevelEmphasis",
        "LowGrayLevelEmphasis", "SmallDependenceEmphasis", "SmallDependenceHighGrayLevelEmphasis",
        "SmallDependenceLowGrayLevelEmphasis",
    ),
    "ngtdm": ("Busyness", "Coarseness", "Complexity", "Contrast", "Strength"),
}


@dataclass(frozen=True)
class MapSettings:
    """How voxel-wise maps are computed (the pyradiomics settings that matter, same meaning and defaults).

    Attributes:
        kernel_radius: kernel half-width r in voxels; the kernel is the (2r+1)^3 cube around a voxel.
        masked_kernel: only ROI voxels of the kernel count (pyradiomics ``maskedKernel``); when False the
            whole kernel counts and grey levels are binned over the cropped image, as pyradiomics does.
        init_value: value of the maps outside the ROI (pyradiomics ``initValue``).
        bin_width: fixed bin width (used when ``bin_count`` is None), pyradiomics default 25.
        bin_count: fixed bin number, or None.
        voxel_array_shift: intensity shift of Energy, TotalEnergy and RootMeanSquared.
        gldm_a: GLDM coarseness alpha (grey-level difference that still counts as dependent).
        label: ROI label value in the mask.
    """

    kernel_radius: int = 1
    masked_kernel: bool = True
    init_value: float = 0.0
    bin_width: float = 25.0
    bin_count: int | None = None
    voxel_array_shift: float = 0.0
    gldm_a: int = 0
    label: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.kernel_radius, int) or not 1 <= self.kernel_radius <= 5:
            raise ConfigError(f"kernel_radius must be an integer in 1..5 voxels, got {self.kernel_radius!r}")
        if self.bin_count is None and not self.bin_width > 0:
            raise ConfigError(f"bin_width must be positive, got {self.bin_width!r}")
        if self.bin_count is not None and self.bin_count < 1:
            raise ConfigError(f"bin_count must be a positive integer, got {self.bin_count!r}")
        if self.gldm_a < 0:
            raise ConfigError(f"gldm_a must be >= 0, got {self.gldm_a!r}")

    @classmethod
    def from_pyradiomics(cls, settings: Mapping[str, Any], *, kernel_radius: int | None = None) -> MapSettings:
        """From merged pyradiomics ``setting`` + ``voxelSetting`` values; rejects what the maps do not support.

        Raises:
            ConfigError: ``force2D``, distances other than [1], an asymmetric GLCM or a GLCM/GLRLM
                weighting norm (not implemented in the maps).
        """
        unsupported = []
        if settings.get("force2D", False):
            unsupported.append("force2D: true")
        if list(settings.get("distances", [1])) != [1]:
            unsupported.append(f"distances: {settings.get('distances')}")
        if not settings.get("symmetricalGLCM", True):
            unsupported.append("symmetricalGLCM: false")
        if settings.get("weightingNorm") not in (None, "no_weighting"):
            unsupported.append(f"weightingNorm: {settings.get('weightingNorm')}")
        if unsupported:
            raise ConfigError("voxel-wise maps do not support " + ", ".join(unsupported)
                              + "; remove these settings or use pyradiomics' voxel-based mode")
        count = settings.get("binCount")
        return cls(
            kernel_radius=int(kernel_radius if kernel_radius is not None else settings.get("kernelRadius", 1)),
            masked_kernel=bool(settings.get("maskedKernel", True)),
            init_value=float(settings.get("initValue", 0.0)),
            bin_width=float(settings.get("binWidth", 25.0)),
            bin_count=int(count) if count is not None else None,
            voxel_array_shift=float(settings.get("voxelArrayShift", 0)),
            gldm_a=int(settings.get("gldm_a", 0)),
            label=int(settings.get("label", 1)),
        )


def resolve_features(requested: Mapping[str, Any] | None) -> dict[str, tuple[str, ...]]:
    """Class -> features to compute; ``None`` (or a class mapped to None) means all non-deprecated features.

    Accepts the pyradiomics ``featureClass`` mapping; ``shape`` is skipped (no voxel-wise shape maps).

    Raises:
        ConfigError: unknown classes or features.
    """
    if not requested:
        return dict(FEATURES)
    out: dict[str, tuple[str, ...]] = {}
    for cls, names in requested.items():
        if cls in ("shape", "shape2D"):
            continue
        if cls not in FEATURES:
            raise ConfigError(f"feature class {cls!r} has no voxel-wise maps; available: {', '.join(FEATURES)}")
        if not names:
            out[cls] = FEATURES[cls]
            continue
        unknown = sorted(set(names) - set(FEATURES[cls]))
        if unknown:
            raise ConfigError(f"{cls} has no maps for {unknown} (deprecated or unknown); "
                              f"available: {', '.join(FEATURES[cls])}")
        out[cls] = tuple(n for n in FEATURES[cls] if n in names)
    return out


def parse_feature_list(text: str) -> dict[str, list[str] | None]:
    """``"glcm,firstorder_Mean,ngtdm_Busyness"`` -> ``{"glcm": None, "firstorder": ["Mean"], ...}``."""
    out: dict[str, list[str] | None] = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        cls, _, feat = item.partition("_")
        if not feat:
            out[cls] = None
        elif out.get(cls, []) is not None:
            out.setdefault(cls, [])
            out[cls].append(feat)  # type: ignore[union-attr]
    return out
