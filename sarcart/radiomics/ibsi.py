"""IBSI chapter 1 feature names, the IBSI definitions sarcart adds where pyradiomics deviates, and compliance.

Reference: Zwanenburg A. et al., "The Image Biomarker Standardization Initiative", Radiology 2020;295:328-338,
doi:10.1148/radiol.2020191145, and the IBSI reference manual (arXiv:1612.07003).

The mapping :data:`PYRADIOMICS_TO_IBSI` pairs each pyradiomics feature (class, name) with its IBSI tag
on the 3D digital phantom: GLCM and GLRLM as pyradiomics computes them (one matrix per direction, feature
averaged over the 13 directions) match IBSI's ``3D_avg`` aggregation; GLSZM, NGTDM and GLDM (IBSI's NGLDM)
are single 3D matrices (``3D``). Features without an IBSI counterpart (``TotalEnergy``, ``MCC``, the 2D
maximum diameters) are absent from the mapping.

pyradiomics deviates from IBSI in two places that :func:`ibsi_variants` corrects with extra columns:

* ``firstorder_Kurtosis`` is Pearson's kurtosis mu4/sigma^4; IBSI ``stat_kurt`` is the excess kurtosis
  mu4/sigma^4 - 3 -> column ``<filter>_firstorder_ExcessKurtosis``.
* ``shape_Major/Minor/LeastAxisLength`` are 4 sqrt(lambda) with lambda the eigenvalues of the covariance of
  the ROI voxel positions normalised by N; IBSI (``morph_pca_*_axis``) normalises by N - 1 ->
  ``shape_<Axis>LengthIBSI`` = pyradiomics value x sqrt(N / (N - 1)) (N = ROI voxels used for shape).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_FO = {
    "Energy": "stat_energy", "Entropy": "ih_entropy", "Minimum": "stat_min", "10Percentile": "stat_p10",
    "90Percentile": "stat_p90", "Maximum": "stat_max", "Mean": "stat_mean", "Median": "stat_median",
    "InterquartileRange": "stat_iqr", "Range": "stat_range", "MeanAbsoluteDeviation": "stat_mad",
    "RobustMeanAbsoluteDeviation": "stat_rmad", "RootMeanSquared": "stat_rms", "Skewness": "stat_skew",
    "Kurtosis": "stat_kurt", "Variance": "stat_var", "Uniformity": "ih_uniformity",
}
_CM = {
    "Autocorrelation": "auto_corr", "JointAverage": "joint_avg", "ClusterProminence": "clust_prom",
    "ClusterShade": "clust_shade", "ClusterTendency": "clust_tend", "Contrast": "contrast",
    "Correlation": "corr", "DifferenceAverage": "diff_avg", "DifferenceEntropy": "diff_entr",
    "DifferenceVariance": "diff_var", "JointEnergy": "energy", "JointEntropy": "joint_entr",
    "Imc1": "info_corr1", "Imc2": "info_corr2", "Idm": "inv_diff_mom", "Idmn": "inv_diff_mom_norm",
    "Id": "inv_diff", "Idn": "inv_diff_norm", "InverseVariance": "inv_var", "MaximumProbability": "joint_max",
    "SumAverage": "sum_avg", "SumEntropy": "sum_entr", "SumSquares": "joint_var",
}
_RLM = {
    "ShortRunEmphasis": "sre", "LongRunEmphasis": "lre", "GrayLevelNonUniformity": "glnu",
    "GrayLevelNonUniformityNormalized": "glnu_norm", "RunLengthNonUniformity": "rlnu",
    "RunLengthNonUniformityNormalized": "rlnu_norm", "RunPercentage": "r_perc", "GrayLevelVariance": "gl_var",
    "RunVariance": "rl_var", "RunEntropy": "rl_entr", "LowGrayLevelRunEmphasis": "lgre",
    "HighGrayLevelRunEmphasis": "hgre", "ShortRunLowGrayLevelEmphasis": "srlge",
    "ShortRunHighGrayLevelEmphasis": "srhge", "LongRunLowGrayLevelEmphasis": "lrlge",
    "LongRunHighGrayLevelEmphasis": "lrhge",
}
_SZM = {
    "SmallAreaEmphasis": "sze", "LargeAreaEmphasis": "lze", "GrayLevelNonUniformity": "glnu",
    "GrayLevelNonUniformityNormalized": "glnu_norm", "SizeZoneNonUniformity": "zsnu",
    "SizeZoneNonUniformityNormalized": "zsnu_norm", "ZonePercentage": "z_perc", "GrayLevelVariance": "gl_var",
    "ZoneVariance": "zs_var", "ZoneEntropy": "zs_entr", "LowGrayLevelZoneEmphasis": "lgze",
    "HighGrayLevelZoneEmphasis": "hgze", "SmallAreaLowGrayLevelEmphasis": "szlge",
    "SmallAreaHighGrayLevelEmphasis": "szhge", "LargeAreaLowGrayLevelEmphasis": "lzlge",
    "LargeAreaHighGrayLevelEmphasis": "lzhge",
}
_NGL = {
    "SmallDependenceEmphasis": "lde", "LargeDependenceEmphasis": "hde", "GrayLevelNonUniformity": "glnu",
    "DependenceNonUniformity": "dcnu", "DependenceNonUniformityNormalized": "dcnu_norm",
    "GrayLevelVariance": "gl_var", "DependenceVariance": "dc_var", "DependenceEntropy": "dc_entr",
    "LowGrayLevelEmphasis": "lgce", "HighGrayLevelEmphasis": "hgce",
    "SmallDependenceLowGrayLevelEmphasis": "ldlge", "SmallDependenceHighGrayLevelEmphasis": "ldhge",
    "LargeDependenceLowGrayLevelEmphasis": "hdlge", "LargeDependenceHighGrayLevelEmphasis": "hdhge",
}
_NGT = {"Coarseness": "coarseness", "Contrast": "contrast", "Busyness": "busyness", "Complexity": "complexity",
        "Strength": "strength"}
_SHAPE = {
    "MeshVolume": "morph_volume", "VoxelVolume": "morph_vol_approx", "SurfaceArea": "morph_area_mesh",
    "SurfaceVolumeRatio": "morph_av", "Sphericity": "morph_sphericity", "Maximum3DDiameter": "morph_diam",
    "MajorAxisLength": "morph_pca_maj_axis", "MinorAxisLength": "morph_pca_min_axis",
    "LeastAxisLength": "morph_pca_least_axis", "Elongation": "morph_pca_elongation",
    "Flatness": "morph_pca_flatness",
}

#: (pyradiomics class, feature) -> IBSI tag of the 3D digital phantom reference table
PYRADIOMICS_TO_IBSI: dict[tuple[str, str], str] = {
    **{("shape", k): v for k, v in _SHAPE.items()},
    **{("firstorder", k): v for k, v in _FO.items()},
    **{("glcm", k): f"cm_{v}_3D_avg" for k, v in _CM.items()},
    **{("glrlm", k): f"rlm_{v}_3D_avg" for k, v in _RLM.items()},
    **{("glszm", k): f"szm_{v}_3D" for k, v in _SZM.items()},
    **{("gldm", k): f"ngl_{v}_3D" for k, v in _NGL.items()},
    **{("ngtdm", k): f"ngt_{v}_3D" for k, v in _NGT.items()},
}

#: sarcart's IBSI-definition columns: (class, column) -> (IBSI tag, how it is computed)
IBSI_VARIANTS: dict[tuple[str, str], tuple[str, str]] = {
    ("firstorder", "ExcessKurtosis"): ("stat_kurt", "Kurtosis - 3"),
    ("shape", "MajorAxisLengthIBSI"): ("morph_pca_maj_axis", "MajorAxisLength * sqrt(N / (N - 1))"),
    ("shape", "MinorAxisLengthIBSI"): ("morph_pca_min_axis", "MinorAxisLength * sqrt(N / (N - 1))"),
    ("shape", "LeastAxisLengthIBSI"): ("morph_pca_least_axis", "LeastAxisLength * sqrt(N / (N - 1))"),
}

_N_KEYS = ("diagnostics_Mask-interpolated_VoxelNum", "diagnostics_Mask-corrected_VoxelNum",
           "diagnostics_Mask-original_VoxelNum")


def ibsi_variants(result: Mapping[str, Any]) -> dict[str, float]:
    """IBSI-definition values for features where pyradiomics deviates (see the module docstring).

    Args:
        result: pyradiomics output ``{"<filter>_<class>_<feature>": value}``; the shape axes need the
            ``diagnostics_Mask-*_VoxelNum`` entry pyradiomics adds when ``additionalInfo`` is on.

    Returns:
        ``{"<filter>_firstorder_ExcessKurtosis": ..., "original_shape_MajorAxisLengthIBSI": ..., ...}``.
    """
    out: dict[str, float] = {}
    for key, value in result.items():
        if key.endswith("_firstorder_Kurtosis"):
            out[key[: -len("Kurtosis")] + "ExcessKurtosis"] = float(value) - 3.0
    n = next((int(result[k]) for k in _N_KEYS if k in result), None)
    if n is not None and n > 1:
        scale = math.sqrt(n / (n - 1))
        for axis in ("Major", "Minor", "Least"):
            key = f"original_shape_{axis}AxisLength"
            if key in result:
                out[f"{key}IBSI"] = float(result[key]) * scale
    return out


@dataclass(frozen=True)
class ComplianceRow:
    """One feature's comparison with the IBSI reference."""

    column: str
    ibsi_tag: str
    value: float
    reference: float | None
    tolerance: float
    status: str  # "match", "deviates", "no reference"


def read_reference(path: str | Path) -> dict[str, tuple[float, float]]:
    """IBSI ``reference_values.csv`` (``value;tolerance;tag``) -> {tag: (value, tolerance)} (blank rows skipped)."""
    out: dict[str, tuple[float, float]] = {}
    for line in Path(path).read_text().splitlines()[1:]:
        parts = line.strip().split(";")
        if len(parts) == 3 and parts[0] and parts[1]:
            out[parts[2]] = (float(parts[0]), float(parts[1]))
    return out


def allowed_deviation(reference: float, tolerance: float) -> float:
    """Tolerance of a comparison: the stated tolerance, at least half a unit of the 3rd significant digit.

    IBSI reports consensus values to 3 significant digits; a tolerance of 0 means "exact at that precision".
    """
    if reference == 0:
        return max(tolerance, 5e-4)
    rounding = 0.5 * 10 ** (math.floor(math.log10(abs(reference))) - 2)
    return max(tolerance, rounding)


def compare(features: Mapping[str, float], reference: Mapping[str, tuple[float, float]]) -> list[ComplianceRow]:
    """Compare ``original_<class>_<feature>`` values (and sarcart's IBSI variants) with the IBSI references."""
    table = dict(PYRADIOMICS_TO_IBSI)
    table.update({k: v[0] for k, v in IBSI_VARIANTS.items()})
    rows = []
    for column, value in features.items():
        parts = column.split("_", 2)
        if len(parts) != 3 or parts[0] != "original":
            continue
        tag = table.get((parts[1], parts[2]))
        if tag is None or tag not in reference:
            rows.append(ComplianceRow(column, tag or "-", float(value), None, 0.0, "no reference"))
            continue
        ref, tol = reference[tag]
        allowed = allowed_deviation(ref, tol)
        status = "match" if abs(float(value) - ref) <= allowed else "deviates"
        rows.append(ComplianceRow(column, tag, float(value), ref, allowed, status))
    return rows


BEGIN_MARK = "<!-- BEGIN GENERATED: tests/radiomics/test_ibsi.py -->"
END_MARK = "<!-- END GENERATED -->"


def compliance_markdown(rows: list[ComplianceRow]) -> str:
    """Counts and one table row per feature (status, value, reference, allowed deviation)."""
    mapped = [r for r in rows if r.status != "no reference"]
    native = [r for r in mapped if not _is_variant(r.column)]
    variants = [r for r in mapped if _is_variant(r.column)]
    dev = ", ".join(r.column.split("_", 2)[2] for r in native if r.status == "deviates") or "none"
    unref = [r.column.split("_", 2)[2] for r in rows if r.status == "no reference"]
    lines = [
        (f"- pyradiomics features with an IBSI reference: **{len(native)}**; match: "
         f"**{sum(r.status == 'match' for r in native)}**; deviate: "
         f"**{sum(r.status == 'deviates' for r in native)}** ({dev})"),
        f"- sarcart IBSI-definition columns: **{len(variants)}**; match: **{sum(r.status == 'match' for r in variants)}**",
        f"- reported features without an IBSI reference: **{len(unref)}** ({', '.join(unref)})",
        "",
        "| column | IBSI tag | value | reference | allowed deviation | status |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda x: (x.status != "deviates", x.column)):
        ref = "-" if r.reference is None else f"{r.reference:.4g}"
        tol = "-" if r.reference is None else f"{r.tolerance:.3g}"
        lines.append(f"| `{r.column}` | {r.ibsi_tag} | {r.value:.5g} | {ref} | {tol} | {r.status} |")
    return "\n".join(lines) + "\n"


def _is_variant(column: str) -> bool:
    parts = column.split("_", 2)
    return len(parts) == 3 and (parts[1], parts[2]) in IBSI_VARIANTS


def update_doc(path: str | Path, generated: str) -> None:
    """Replace the text between the generated-section markers of a Markdown file (appended if absent)."""
    p = Path(path)
    text = p.read_text() if p.is_file() else ""
    block = f"{BEGIN_MARK}\n{generated}{END_MARK}"
    if BEGIN_MARK in text and END_MARK in text:
        head, rest = text.split(BEGIN_MARK, 1)
        tail = rest.split(END_MARK, 1)[1]
        text = head + block + tail
    else:
        text = text + ("\n" if text and not text.endswith("\n") else "") + block + "\n"
    p.write_text(text)
