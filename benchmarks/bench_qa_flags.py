"""QA flags benchmark: does the calibrated confidence separate bad contours (HD95 > 5 mm) from good ones?

    python benchmarks/bench_qa_flags.py --model mlruns/train/trufi/all/bundle.pt \
        --weak /work/runs/qa/ckpts/ckpt_A.ckpt --weak /work/runs/qa/ckpts/ckpt_B.ckpt \
        --data mlruns/datasets/trufi_test --ood ../shared/data/sts_mr_t1 --out /work/runs/qa/qa_flags \
        [--per-condition 4] [--n-ood 8] [--threads 1] [--figures docs/figures]

Contours come from the frozen `trufi` test cohort (fx01 of every patient of every sub-cohort, resampled
to a 3 mm grid to keep the CPU cost small; references resampled as fractions, threshold 0.5):

* ``clean``: the model on the unchanged images (mostly good contours);
* input corruptions, each on ``--per-condition`` images (the images rotate between corruptions):
  ``noise`` (Gaussian, 3x the image's own noise sigma), ``bias`` (smooth multiplicative field, x0.35 to
  x1.65), ``banding`` (bSSFP dark bands from a smooth off-resonance map), ``fov`` (field of view cut to
  the central 55 % left-right and 60 % head-feet; references cut alike), ``gamma`` (intensity scaling
  I -> I^2.5, contrast between tissues changes);
* weaker models: early training checkpoints (``--weak``, Lightning ``.ckpt`` or bundles) on
  ``--per-condition`` clean images each;
* out of distribution: real T1 sarcoma MRs (``--ood``, GTV only; cropped 5 cm around the tumour).

Per contour: Dice and HD95 against the reference (MONAI, mm) and the QA output of
:func:`sarcart.inference.qa.structure_qa` (raw soft-Dice confidence from the probabilities, flags).
TTA cannot help here: the `trufi` plan allows no mirroring, so the probabilities are a single pass.
The logistic calibration (:meth:`QACalibration.fit`) is fitted on the contours of the calibration
patients (``--calibration-patient``, SYN-RP-001 of every sub-cohort) and the AUROC of
1 - P(good) for "bad" is reported on the other contours (and on all), with a bootstrap 95 % CI that
resamples whole images (contours of one image are not independent). Rows are appended to
``OUT/rows.csv`` after every image, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GRID_MM = (3.0, 3.0, 3.0)
BAD_HD95_MM = 5.0
CORRUPTIONS = ("noise", "bias", "banding", "fov", "gamma")


# ----------------------------------------------------------------------------------------- models
def load_model(path: str | os.PathLike[str], tag: str) -> Any:
    """A :class:`ModelBundle` from a bundle, a shipped name/URI, or a Lightning checkpoint (``net.*`` weights)."""
    import torch

    from sarcart.models.bundle import ModelBundle, load_bundle, resolve_model
    from sarcart.models.plan import Plan

    if str(path).endswith(".ckpt"):
        ck = torch.load(path, map_location="cpu", weights_only=False)
        plan = ck["hyper_parameters"]["plan"]
        plan = plan if isinstance(plan, Plan) else Plan.model_validate(plan)
        sd = {k[4:]: v for k, v in ck["state_dict"].items() if k.startswith("net.")}
        return ModelBundle(plan, sd, {"name": "trufi", "version": f"epoch{int(ck['epoch']) + 1}", "tag": tag})
    b = load_bundle(resolve_model(path))
    b.meta["tag"] = tag
    return b


# ------------------------------------------------------------------------------------------- data
def test_cases(data_root: Path, fraction: str = "fx01") -> list[dict]:
    """Entries ``{sub, case, patient, image, label}`` of one fraction of every sub-cohort (absolute paths)."""
    out = []
    for dl in sorted(data_root.glob("*/datalist.json")):
        d = json.loads(dl.read_text())
        for e in d["training"]:
            if e["case"].endswith(fraction):
                out.append({"sub": dl.parent.name, "case": e["case"], "patient": e["case"].rsplit("_", 1)[0],
                            "image": str(dl.parent / e["image"]), "label": str(dl.parent / e["label"])})
    return sorted(out, key=lambda c: (c["patient"], c["sub"]))  # a partial run covers every sub-cohort


def on_grid(image_path: str, label_path: str | None, structures: list[str], *, grid_mm: tuple | None = GRID_MM
            ) -> tuple[Any, dict[str, np.ndarray]]:
    """The image (linear) and reference masks (fraction >= 0.5) on a ``grid_mm`` grid (own grid when None)."""
    from sarcart.io.geometry import Volume
    from sarcart.io.nifti import read_mask, read_nifti
    from sarcart.training.evaluation import reference_masks
    from sarcart.training.preprocess import grid_for, resample

    img = read_nifti(image_path)
    if label_path is None:
        refs: dict[str, np.ndarray] = {}
    elif label_path.endswith("gtv.nii.gz"):
        refs = {"GTV": np.asarray(read_mask(label_path).array, bool)}
    else:
        refs, _ = reference_masks(label_path, structures)
    if grid_mm is None:
        return img, refs
    g = grid_for(img.geometry, grid_mm)
    out = {s: resample(Volume(m.astype(np.float32), img.geometry), g) >= 0.5 for s, m in refs.items()}
    return Volume(resample(img, g), g), out


def noise_sigma_of(arr: np.ndarray) -> float:
    from sarcart.training.metrics import noise_sigma

    return noise_sigma(arr, arr > 0.05 * np.percentile(arr, 99))


def _smooth_field(shape: tuple[int, ...], rng: np.random.Generator, degree: int = 2) -> np.ndarray:
    """A random polynomial of ``degree`` in normalised coordinates, scaled to [-1, 1]."""
    ax = [np.linspace(-1, 1, n) for n in shape]
    x, y, z = np.meshgrid(*ax, indexing="ij")
    f = np.zeros(shape)
    for i in range(degree + 1):
        for j in range(degree + 1 - i):
            for k in range(degree + 1 - i - j):
                f += rng.normal() * x**i * y**j * z**k
    f -= f.mean()
    return f / max(np.abs(f).max(), 1e-9)


def corrupt(kind: str, image: Any, refs: dict[str, np.ndarray], seed: int) -> tuple[Any, dict[str, np.ndarray]]:
    """Apply one corruption (see the module docstring); returns the new image and references."""
    rng = np.random.default_rng(seed)
    a = image.array.astype(np.float32)
    if kind == "noise":
        return image.with_array(a + rng.normal(0, 3.0 * noise_sigma_of(a), a.shape).astype(np.float32)), refs
    if kind == "bias":
        return image.with_array(a * (1 + 0.65 * _smooth_field(a.shape, rng)).astype(np.float32)), refs
    if kind == "banding":
        df_hz = 450.0 * (_smooth_field(a.shape, rng, degree=2) + 1.0)  # off-resonance map, 0-900 Hz
        tr_s = 3.4e-3
        factor = 0.1 + 0.9 * np.abs(np.cos(np.pi * df_hz * tr_s))  # dark bands where df*TR = 1/2 + k
        return image.with_array((a * factor).astype(np.float32)), refs
    if kind == "gamma":
        top = float(np.percentile(a, 99.5))
        return image.with_array((top * np.clip(a / top, 0, None) ** 2.5).astype(np.float32)), refs
    if kind == "fov":
        return crop_fov(image, refs, keep=(0.55, 1.0, 0.60))
    raise ValueError(f"unknown corruption {kind!r}; choose from {CORRUPTIONS}")


def crop_fov(image: Any, refs: dict[str, np.ndarray], *, keep: tuple[float, float, float]) -> tuple[Any, dict]:
    """Keep the central fraction ``keep`` of each axis (a smaller field of view; references cut alike)."""
    from sarcart.io.geometry import Geometry, Volume

    g = image.geometry
    lo = [round(n * (1 - f) / 2) for n, f in zip(g.shape, keep)]
    hi = [n - l for n, l in zip(g.shape, lo)]
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    origin = g.index_to_world(np.asarray(lo, float))
    ng = Geometry(tuple(b - a for a, b in zip(lo, hi)), g.spacing_mm, tuple(float(v) for v in origin), g.direction)
    return Volume(np.ascontiguousarray(image.array[sl]), ng), {s: m[sl] for s, m in refs.items()}


# ------------------------------------------------------------------------------------------ score
def score_image(bundle: Any, net: Any, image: Any, refs: dict[str, np.ndarray]) -> tuple[list[dict], Any]:
    """Segment one image and score every structure that has a non-empty reference."""
    from sarcart.inference.predictor import PredictorConfig, segment_image
    from sarcart.inference.qa import input_check, structure_qa
    from sarcart.training.metrics import mask_metrics

    seg = segment_image(image, bundle, net, config=PredictorConfig(keep_probabilities=True, device="cpu"))
    prof = bundle.plan.training_profile or {}
    inp = input_check(image, train_spacings_mm=[prof["median_spacing_mm"]] if "median_spacing_mm" in prof else None,
                      train_intensity=prof.get("intensity"))
    rows = []
    for k, s in enumerate(seg.structures, 1):
        if s not in refs or not refs[s].any():
            continue
        mask = seg.labels.with_array(seg.labels.array == k)
        prob, prob_mask = seg.confidence_inputs(s)
        q = structure_qa(s, mask, prob=prob, prob_mask=prob_mask)
        m = mask_metrics(mask.array, refs[s], image.geometry.spacing_mm)
        rows.append({"structure": s, "dice": m["dice"], "hd95_mm": m["hd95_mm"], "confidence_raw": q["confidence_raw"],
                     "volume_cc": q["volume_cc"], "flags": "; ".join(q["flags"]),
                     "input_flags": "; ".join(inp["flags"]), "seconds": round(seg.seconds, 1)})
    return rows, seg


def evaluation_rows(job: dict, image: Any, refs: dict[str, np.ndarray], seg: Any) -> list[dict]:
    """The rows ``sarcart evaluate`` writes (same functions: Dice, HD95, MSD, surface Dice, ring, CNR)."""
    from sarcart.tracking import hash_id
    from sarcart.training.metrics import contrast_to_noise, noise_sigma, score_case

    arr = image.array.astype(np.float32)
    sigma = noise_sigma(arr, arr > 0.05 * np.percentile(arr, 99))
    sp = image.geometry.spacing_mm
    cnr = {s: contrast_to_noise(arr, m, sp, sigma=sigma) for s, m in refs.items()}
    pred = {s: seg.labels.array == k for k, s in enumerate(seg.structures, 1)}
    return [{"sub": job["sub"], "case": hash_id(job["case"]), **r, "cnr": cnr.get(r["structure"], float("nan"))}
            for r in score_case(pred, refs, sp)]


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append dict rows to a CSV (header written with the first rows)."""
    if not rows:
        return
    new = not path.is_file()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            w.writeheader()
        w.writerows(rows)


def write_evaluation(out: Path, model: str) -> None:
    """``OUT/eval/<sub>/`` and ``OUT/eval/all/``: metrics.csv, summary.json, boxplot.png; Dice vs CNR figure."""
    import pandas as pd

    from sarcart.training.evaluation import write_report

    path = out / "eval_rows.csv"
    if not path.is_file():
        return
    table = pd.read_csv(path)
    table["case"] = table["sub"] + "/" + table["case"].astype(str)  # patient names repeat across sub-cohorts
    for sub, t in [*table.groupby("sub"), ("all", table)]:
        write_report(t.drop(columns="sub"), out / "eval" / str(sub),
                     meta={"model": model, "grid_mm": GRID_MM, "tta": False, "postprocessing": True,
                           "sub_cohort": str(sub)})
    dice_vs_cnr(table, out / "eval" / "dice_vs_cnr.png")


def dice_vs_cnr(table: Any, path: Path) -> None:
    """Dice against the structure's contrast-to-noise ratio, one colour per structure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = table[table.region == "all"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for s, g in t.groupby("structure"):
        ax.scatter(g["cnr"], g["dice"], s=16, label=s)
    ax.set(xscale="log", xlabel="contrast-to-noise ratio", ylabel="Dice", title="trufi test cohort, 3 mm grid")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save_prediction(path: Path, seg: Any) -> None:
    """Labels, geometry and raw confidences of one segmentation (``.npz``)."""
    from sarcart.inference.qa import structure_confidences

    path.parent.mkdir(parents=True, exist_ok=True)
    conf = structure_confidences(seg.probabilities, seg.labels.array, seg.structures)
    np.savez_compressed(path, labels=seg.labels.array, geometry=json.dumps(seg.labels.geometry.to_dict()),
                        structures=json.dumps(seg.structures), confidence_raw=json.dumps(conf),
                        model=f"{seg.model} v{seg.version}", seconds=seg.seconds)


def jobs(cases: list[dict], ood: list[dict], weak: list[str], per_condition: int, *,
         extra: list[dict] | None = None, corruption_model: str = "final") -> list[dict]:
    """Every (condition, model, image) to run, in a deterministic order (``extra``: clean, evaluation only)."""
    out = [{"condition": "clean", "model": "final", **c} for c in cases]
    n = len(cases)
    for i, kind in enumerate(CORRUPTIONS):
        for j in range(per_condition):
            out.append({"condition": kind, "model": corruption_model, **cases[(i * per_condition + j) * 7 % n]})
    for i, w in enumerate(weak):
        for j in range(per_condition):
            out.append({"condition": "weak", "model": f"weak{i}", **cases[(i * per_condition + j) * 7 % n]})
    out += [{"condition": "ood_t1", "model": "final", **c} for c in ood]
    return out + [{"condition": "clean", "model": "final", **c} for c in extra or []]


def job_id(j: dict) -> str:
    return f"{j['condition']}|{j['model']}|{j['sub']}|{j['case']}"


def run_jobs(todo: list[dict], models: dict[str, Callable[[], Any]], out_csv: Path) -> None:
    """Run every job not yet in ``out_csv`` and append its rows."""
    from sarcart.progress import progress

    done = set()
    if out_csv.is_file():
        with out_csv.open() as f:
            done = {r["job"] for r in csv.DictReader(f)}
    cache: dict[str, tuple] = {}
    structures = ["GTV", "BOWEL", "KIDNEY_L", "KIDNEY_R"]
    for j in progress([j for j in todo if job_id(j) not in done], "qa jobs"):
        if j["model"] not in cache:
            b = models[j["model"]]()
            cache[j["model"]] = (b, b.network("cpu"))
        bundle, net = cache[j["model"]]
        ood = j["condition"] == "ood_t1"
        image, refs = on_grid(j["image"], j["label"], structures, grid_mm=None if ood else GRID_MM)
        if j["condition"] in CORRUPTIONS:
            image, refs = corrupt(j["condition"], image, refs, seed=zlib.crc32(job_id(j).encode()))
        rows, seg = score_image(bundle, net, image, refs)
        if j["condition"] == "clean":  # reused by bench_propagation_vs_network.py (--network-cache)
            save_prediction(out_csv.parent / "cache" / f"{j['sub']}_{j['case']}.npz", seg)
            append_rows(out_csv.parent / "eval_rows.csv", evaluation_rows(j, image, refs, seg))
        append_rows(out_csv, [{"job": job_id(j), "condition": j["condition"], "model": j["model"], "sub": j["sub"],
                               "case": j["case"], "patient": j["patient"], **r} for r in rows])


# --------------------------------------------------------------------------------------- analysis
def analyse(rows: list[dict], calibration_patient: str, *, n_boot: int = 2000) -> dict:
    """Calibrate on the calibration patient's contours; AUROC (bad vs good) with image-cluster bootstrap CIs."""
    from sarcart.inference.qa import QACalibration, auroc, auroc_ci

    rows = list({(r["job"], r["structure"]): r for r in rows}.values())  # a job run twice counts once
    for r in rows:
        r["bad"] = not (float(r["hd95_mm"]) <= BAD_HD95_MM)  # NaN/inf HD95 (empty) is bad
        r["calib"] = r["patient"] == calibration_patient and r["condition"] != "ood_t1"
    cal_rows = [r for r in rows if r["calib"]]
    cal = QACalibration.fit([float(r["confidence_raw"]) for r in cal_rows], [not r["bad"] for r in cal_rows])
    for r in rows:
        r["p_good"] = cal(float(r["confidence_raw"]))
        r["flagged_confidence"] = r["p_good"] < 0.5
        r["flagged"] = r["p_good"] < 0.5 or bool(r["flags"])  # any flag of structure_qa

    def block(sel: list[dict]) -> dict:
        if not sel:
            return {"n": 0}
        score = np.array([1 - r["p_good"] for r in sel])
        bad = np.array([r["bad"] for r in sel])
        groups = [r["job"] for r in sel]
        out = {"n": len(sel), "n_bad": int(bad.sum()), "n_good": int((~bad).sum()),
               "auroc": auroc(score, bad), "auroc_ci95": auroc_ci(score, bad, groups=groups, n_boot=n_boot)}
        for key in ("flagged_confidence", "flagged"):
            flag = np.array([r[key] for r in sel])
            out[f"{key}_sensitivity"] = float(flag[bad].mean()) if bad.any() else float("nan")
            out[f"{key}_specificity"] = float((~flag[~bad]).mean()) if (~bad).any() else float("nan")
        return out

    held = [r for r in rows if not r["calib"]]
    result: dict[str, Any] = {"calibration": {"a": cal.a, "b": cal.b, "n": len(cal_rows),
                                              "n_bad": sum(r["bad"] for r in cal_rows)}, "held_out": {}, "all": {}}
    for name, sel in (("held_out", held), ("all", rows)):
        result[name]["ALL"] = block(sel)
        for s in ("GTV", "BOWEL", "KIDNEY_L", "KIDNEY_R"):
            result[name][s] = block([r for r in sel if r["structure"] == s])
    result["by_condition"] = {c: {"n": sum(r["condition"] == c for r in rows),
                                  "n_bad": sum(r["bad"] for r in rows if r["condition"] == c),
                                  "median_confidence_raw": float(np.median([float(r["confidence_raw"]) for r in rows
                                                                            if r["condition"] == c]))}
                              for c in sorted({r["condition"] for r in rows})}
    return result


def figures(rows: list[dict], folder: Path) -> list[Path]:
    """``qa_roc.png`` (ROC per structure, held-out contours) and ``qa_confidence_vs_hd95.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    held = [r for r in rows if not r["calib"]]
    for s in ("ALL", "GTV", "BOWEL", "KIDNEY_L", "KIDNEY_R"):
        sel = [r for r in held if s == "ALL" or r["structure"] == s]
        bad = np.array([r["bad"] for r in sel])
        if bad.all() or not bad.any():
            continue
        fpr, tpr, _ = roc_curve(bad, [1 - r["p_good"] for r in sel])
        ax.plot(fpr, tpr, lw=2.5 if s == "ALL" else 1.2, label=f"{s} (n={len(sel)}, bad={bad.sum()})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="1 - specificity (good contours flagged)", ylabel="sensitivity (bad contours flagged)",
           title="QA confidence: bad = HD95 > 5 mm")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    p1 = folder / "qa_roc.png"
    fig.savefig(p1, dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for c in sorted({r["condition"] for r in rows}):
        sel = [r for r in rows if r["condition"] == c]
        ax.scatter([float(r["confidence_raw"]) for r in sel],
                   [min(float(r["hd95_mm"]) if np.isfinite(float(r["hd95_mm"])) else 300.0, 300.0) for r in sel],
                   s=14, label=c, alpha=0.75)
    ax.axhline(BAD_HD95_MM, color="k", lw=0.8, ls=":")
    ax.set(yscale="log", xlabel="raw soft-Dice confidence", ylabel="HD95 (mm, capped at 300)",
           title="contours of the trufi test cohort and their corruptions")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    p2 = folder / "qa_confidence_vs_hd95.png"
    fig.savefig(p2, dpi=120)
    plt.close(fig)
    return [p1, p2]


def print_table(result: dict) -> None:
    """Markdown table of the held-out and pooled AUROCs, with the load average."""
    fmt = (lambda v: "nan" if v is None or not np.isfinite(v) else f"{v:.3f}")
    print(f"\nload average (1, 5, 15 min): {tuple(round(x, 2) for x in os.getloadavg())}")
    c = result["calibration"]
    print(f"calibration: P(good) = 1/(1+exp(-({c['a']:.2f}*conf {c['b']:+.2f}))), fitted on {c['n']} contours "
          f"({c['n_bad']} bad)\n")
    print("| contours | structure | n | bad | good | AUROC [95 % CI] | P(good) < 0.5: sens. / spec. "
          "| any flag: sens. / spec. |")
    print("|---|---|---|---|---|---|---|---|")
    for part in ("held_out", "all"):
        for s, b in result[part].items():
            if not b.get("n"):
                continue
            lo, hi = b["auroc_ci95"]
            print(f"| {part} | {s} | {b['n']} | {b['n_bad']} | {b['n_good']} | {fmt(b['auroc'])} "
                  f"[{fmt(lo)}, {fmt(hi)}] | {fmt(b['flagged_confidence_sensitivity'])} / "
                  f"{fmt(b['flagged_confidence_specificity'])} | {fmt(b['flagged_sensitivity'])} / "
                  f"{fmt(b['flagged_specificity'])} |")
    print("\n| condition | contours | bad | median raw confidence |\n|---|---|---|---|")
    for cnd, b in result["by_condition"].items():
        print(f"| {cnd} | {b['n']} | {b['n_bad']} | {b['median_confidence_raw']:.3f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "mlruns/train/trufi/all/bundle.pt"))
    ap.add_argument("--weak", action="append", default=[], help="weaker model (.ckpt or bundle); repeatable")
    ap.add_argument("--data", type=Path, default=ROOT / "mlruns/datasets/trufi_test")
    ap.add_argument("--ood", type=Path, default=ROOT.parent / "shared/data/sts_mr_t1")
    ap.add_argument("--n-ood", type=int, default=8)
    ap.add_argument("--corruption-model", help="model for the corrupted inputs (default: --model), e.g. a "
                    "mid-training checkpoint when CPU time does not allow the final model on every corruption")
    ap.add_argument("--per-condition", type=int, default=4)
    ap.add_argument("--calibration-patient", default="SYN-RP-001")
    ap.add_argument("--out", type=Path, default=Path("/work/runs/qa/qa_flags"))
    ap.add_argument("--figures", type=Path, default=None, help="folder for qa_*.png (default: OUT)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", help="run only the jobs whose condition is in this comma-separated list")
    ap.add_argument("--patients", help="only the test-cohort jobs of these patients (comma-separated)")
    ap.add_argument("--only-model", help="only the jobs of this model tag (final, mid, weak0, weak1 ...)")
    ap.add_argument("--analyse-only", action="store_true")
    ap.add_argument("--merge", type=Path, action="append", default=[],
                    help="also analyse OUT2/rows.csv of another run of this script (repeatable)")
    ap.add_argument("--eval-fractions", default="fx01",
                    help="fractions the clean pass evaluates (fx01 always; e.g. fx01,fx00 adds fx00 at the end)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    cases = test_cases(args.data)
    ood = [{"sub": "sts_mr_t1", "case": p.name, "patient": p.name, "image": str(p / "image.nii.gz"),
            "label": str(p / "gtv.nii.gz")} for p in sorted(args.ood.glob("STS_*"))[:args.n_ood]]
    models: dict[str, Callable[[], Any]] = {"final": lambda: load_model(args.model, "final")}
    for i, w in enumerate(args.weak):
        models[f"weak{i}"] = (lambda w=w, i=i: load_model(w, f"weak{i}"))
    extra = [c for f in args.eval_fractions.split(",") if f and f != "fx01" for c in test_cases(args.data, f)]
    cm = "final"
    if args.corruption_model:
        cm = "mid"
        models["mid"] = lambda: load_model(args.corruption_model, "mid")
    todo = jobs(cases, ood, args.weak, args.per_condition, extra=extra, corruption_model=cm)
    if args.only:
        todo = [j for j in todo if j["condition"] in args.only.split(",")]
    if args.only_model:
        todo = [j for j in todo if j["model"] == args.only_model]
    if args.patients:
        todo = [j for j in todo if j["patient"] in args.patients.split(",") or j["condition"] == "ood_t1"]
    out_csv = args.out / "rows.csv"
    t0 = time.perf_counter()
    if not args.analyse_only:
        run_jobs(todo, models, out_csv)
    write_evaluation(args.out, str(args.model))
    rows = []
    for path in [out_csv, *(d / "rows.csv" for d in args.merge)]:
        with path.open() as f:
            rows += list(csv.DictReader(f))
    result = analyse(rows, args.calibration_patient)
    rows = list({(r["job"], r["structure"]): r for r in rows}.values())
    result["models"] = {"final": str(args.model), **{f"weak{i}": w for i, w in enumerate(args.weak)},
                        **({"mid": args.corruption_model} if args.corruption_model else {})}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    (args.out / "result.json").write_text(json.dumps(result, indent=1, default=float))
    with (args.out / "rows_scored.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    figures(rows, args.figures or args.out)
    print_table(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
