"""HTML report of a response study: ROC and calibration curves, Kaplan-Meier curves by predicted risk
group, feature-correlation heatmap, ICC table, and - when the study ran one - the permutation test
(p-value and the null distribution of the AUROC / C-index); every figure also as ``figures/<name>.png``.

The HTML file is self-contained (PNGs embedded as base64) and lists no patient identifiers: only
cohort-level figures, metrics and feature names.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

FIGURE_DPI = 110


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path, name: str) -> tuple[str, str]:
    """Write ``figures/<name>.png``; return (name, base64 PNG)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    _plt().close(fig)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "figures" / f"{name}.png").write_bytes(buf.getvalue())
    return name, base64.b64encode(buf.getvalue()).decode()


def roc_figure(res: dict[str, Any], out: Path) -> tuple[str, str]:
    from sklearn.metrics import roc_curve

    plt = _plt()
    m = res["metrics"]
    fpr, tpr, _ = roc_curve(np.asarray(res["y"]), np.asarray(res["prediction"]))
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot(fpr, tpr, lw=2, label=f"AUROC {m['auroc']:.2f} ({m['auroc_ci_low']:.2f}-{m['auroc_ci_high']:.2f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", label="chance")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC, out-of-fold predictions")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, out, "roc")


def calibration_figure(res: dict[str, Any], out: Path) -> tuple[str, str]:
    plt = _plt()
    m = res["metrics"]
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], ls="--", c="grey", label="ideal")
    ax.plot(m["curve_predicted"], m["curve_observed"], "o-", label=f"slope {m['calibration_slope']:.2f}, "
            f"Brier {m['brier']:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted probability", ylabel="observed rate",
           title="calibration (quantile bins)")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, out, "calibration")


def km_figure(res: dict[str, Any], out: Path) -> tuple[str, str]:
    plt = _plt()
    m = res["metrics"]
    fig, ax = plt.subplots(figsize=(5.0, 4.0))
    for name, g in m["groups"].items():
        ax.step(g["time"], g["survival"], where="post", label=f"{name} (n={g['n']}, events {g['events']})")
    ax.set(ylim=(0, 1.02), xlabel="time", ylabel="event-free probability",
           title=f"Kaplan-Meier by predicted risk (log-rank p = {m['logrank_p']:.3g})")
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, out, "kaplan_meier")


def permutation_figure(results: dict[str, Any], out: Path) -> tuple[str, str]:
    """Histogram of each model's permutation null distribution with the observed statistic."""
    plt = _plt()
    tests = [(task, res["metrics"]["permutation"]) for task, res in results.items() if "permutation" in res["metrics"]]
    fig, axes = plt.subplots(1, len(tests), figsize=(4.4 * len(tests), 3.4), squeeze=False)
    for ax, (task, pt) in zip(axes[0], tests):
        null = np.asarray([v for v in pt["null"] if np.isfinite(v)])
        name = "AUROC" if pt["statistic"] == "auroc" else "C-index"
        ax.hist(null, bins=min(30, max(5, null.size // 4)), color="#999", label=f"{pt['n_permutations']} permutations")
        ax.axvline(0.5, c="grey", ls="--", lw=0.8)
        ax.axvline(pt["observed"], c="red", lw=2, label=f"observed {pt['observed']:.3f}, p = {pt['p_value']:.3g}")
        ax.set(xlabel=f"out-of-fold {name}", ylabel="permutations", title=f"{task}: {name} under permuted outcomes")
        ax.legend(fontsize=7, loc="upper left")
    return _save(fig, out, "permutation")


def _heatmap_features(results: dict[str, Any], x: Any, limit: int = 20) -> list[str]:
    counts: dict[str, int] = {}
    for res in results.values():
        for f in res["folds"]:
            for name in f["selected"]:
                counts[name] = counts.get(name, 0) + 1
    ranked = [n for n, _ in sorted(counts.items(), key=lambda kv: -kv[1]) if n in x.columns]
    numeric = [c for c in x.columns if str(x[c].dtype) != "object"]
    extra = [c for c in numeric if c not in ranked]
    return (ranked + extra)[:max(2, min(limit, len(ranked) if len(ranked) >= 2 else limit))]


def correlation_figure(results: dict[str, Any], x: Any, out: Path) -> tuple[str, str]:
    plt = _plt()
    feats = _heatmap_features(results, x)
    corr = x[feats].astype(float).corr(method="spearman").to_numpy()
    fig, ax = plt.subplots(figsize=(1.2 + 0.32 * len(feats), 0.9 + 0.32 * len(feats)))
    im = ax.imshow(corr, vmin=-1, vmax=1, cmap="RdBu_r")
    short = [f.replace("original_", "") for f in feats]
    ax.set_xticks(range(len(feats)), short, rotation=90, fontsize=6)
    ax.set_yticks(range(len(feats)), short, fontsize=6)
    ax.set_title("Spearman correlation of the selected features", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.7)
    return _save(fig, out, "feature_correlation")


def icc_figure(icc: Any, out: Path) -> tuple[str, str]:
    plt = _plt()
    t = icc.sort_values("icc21")
    fig, ax = plt.subplots(figsize=(6.0, 3.2))
    pos = np.arange(len(t))
    ax.errorbar(pos, t["icc21"], yerr=[t["icc21"] - t["icc21_low"], t["icc21_high"] - t["icc21"]],
                fmt=".", ms=3, lw=0.6)
    ax.axhline(0.75, c="red", ls="--", lw=0.8, label="0.75")
    ax.set(ylim=(min(-0.05, float(t["icc21_low"].min())), 1.02), xlabel="features (sorted)",
           ylabel="ICC(2,1) with 95 % CI", title=f"feature reproducibility ({len(t)} features)")
    ax.legend(fontsize=8)
    return _save(fig, out, "icc")


def _table(rows: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows) + "</table>"


def _metric_rows(res: dict[str, Any]) -> list[tuple[str, str]]:
    m = res["metrics"]
    rows = [("patients / events", f"{m['n_patients']} / {m['n_events']}")]
    if res["task"] == "binary":
        rows += [("AUROC (95 % CI)", f"{m['auroc']:.3f} ({m['auroc_ci_low']:.3f}-{m['auroc_ci_high']:.3f})"),
                 ("calibration slope / in the large", f"{m['calibration_slope']:.2f} / {m['calibration_in_the_large']:+.3f}"),
                 ("Brier score", f"{m['brier']:.3f}")]
    else:
        rows += [("C-index (95 % CI)", f"{m['c_index']:.3f} ({m['c_index_ci_low']:.3f}-{m['c_index_ci_high']:.3f})"),
                 ("log-rank p (median split)", f"{m['logrank_p']:.3g}")]
    if "permutation" in m:
        pt = m["permutation"]
        rows.append(("permutation test (better than chance?)",
                     (f"p = {pt['p_value']:.3g} ({pt['n_permutations']} outcome permutations, whole nested CV "
                      f"refitted each time); chance level: mean {pt['null_mean']:.3f}, 95 % of permutations "
                      f"{pt['null_q025']:.3f}-{pt['null_q975']:.3f}; below chance? p = {pt['p_lower']:.3g}")))
    chosen: dict[str, int] = {}
    for f in res["folds"]:
        for name in f["selected"]:
            chosen[name] = chosen.get(name, 0) + 1
    top = ", ".join(f"{k} ({v})" for k, v in sorted(chosen.items(), key=lambda kv: -kv[1])[:8])
    rows += [("features chosen in outer folds (count)", top), ("final model (all patients)",
             ", ".join(res["final_features"]) + f"; {res['final_params']}")]
    return rows


def _icc_html(icc: Any, threshold: float) -> str:
    robust = int((icc["icc21_low"] >= threshold).sum())
    head = (f"<p>{robust} of {len(icc)} features robust (lower 95 % bound of ICC(2,1) &ge; {threshold}).</p>"
            "<table><tr><th>feature</th><th>ICC(2,1) [95 % CI]</th><th>ICC(3,1) [95 % CI]</th></tr>")
    body = "".join(f"<tr><td>{html.escape(str(f))}</td><td>{r.icc21:.3f} [{r.icc21_low:.3f}, {r.icc21_high:.3f}]"
                   f"</td><td>{r.icc31:.3f} [{r.icc31_low:.3f}, {r.icc31_high:.3f}]</td></tr>"
                   for f, r in icc.sort_values("icc21", ascending=False).iterrows())
    return head + body + "</table>"


def write_report(results: dict[str, Any], x: Any, out: Path, *, icc: Any = None, config: Any = None) -> Path:
    """Write ``out/report.html`` and ``out/figures/*.png``; returns the HTML path."""
    sections, figures = [], []
    if "binary" in results:
        figures += [roc_figure(results["binary"], out), calibration_figure(results["binary"], out)]
        sections.append(f"<h2>Binary outcome: logistic model</h2>{_table(_metric_rows(results['binary']))}")
    if "survival" in results:
        figures.append(km_figure(results["survival"], out))
        sections.append(f"<h2>Time to event: Cox model</h2>{_table(_metric_rows(results['survival']))}")
    if any("permutation" in res["metrics"] for res in results.values()):
        figures.append(permutation_figure(results, out))
    figures.append(correlation_figure(results, x, out))
    if icc is not None and len(icc):
        figures.append(icc_figure(icc, out))
        threshold = getattr(config, "robust_threshold", 0.75)
        sections.append(f"<h2>Feature reproducibility (ICC)</h2>{_icc_html(icc, threshold)}")
    imgs = "".join(f'<figure><img alt="{n}" src="data:image/png;base64,{b}"><figcaption>{n}.png</figcaption></figure>'
                   for n, b in figures)
    cfg = html.escape(config.model_dump_json(indent=1)) if config is not None else ""
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>sarcart response study</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;font-size:13px}"
        "th,td{border:1px solid #ccc;padding:3px 6px;text-align:left}figure{display:inline-block;margin:6px}"
        "img{max-width:520px}</style></head><body><h1>Response study</h1>"
        "<p><b>Research software - not for clinical use.</b> Performance figures are out-of-fold (nested "
        "cross-validation: selection, harmonisation and tuning fitted on outer-training folds only); CIs are "
        "patient bootstrap percentiles of the fixed out-of-fold predictions and ignore the variability of "
        "model fitting. Whether a result differs from chance is judged by the permutation test (when run): "
        "the outcomes are permuted across patients and the whole nested CV is refitted.</p>"
        + "".join(sections) + "<h2>Figures</h2>" + imgs
        + f"<h2>Configuration</h2><pre>{cfg}</pre></body></html>")
    path = out / "report.html"
    path.write_text(page)
    return path
