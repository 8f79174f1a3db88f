"""Two (or more) segmentation models on the same images, scored as `sarcart evaluate` scores them, paired.

    python benchmarks/bench_model_compare.py \
        --model v1=trufi --model v2=mlruns/train/trufi/all/bundle.pt \
        --data mlruns/datasets/trufi_test --out /work/runs/trufi-compare [--threads 2] [--fractions fx00,fx01]

``--model NAME=A+B`` is an ensemble (the members' class probabilities averaged, as ``sarcart segment --model A
--model B`` does); a member may be an earlier ``--model`` NAME. Each model runs once per image, and an
ensemble combines the passes its members already made (``sarcart.inference.predictor.predict_member`` /
``combine_members``), so ``--model v3=A --model s1=B --model ens=v3+s1`` costs two passes per image, not four.
The ``seconds`` column counts the passes an entry had to make itself.

``--data`` is a datalist or a folder of sub-cohort folders that each hold one (the frozen ``trufi`` test
cohort: ``snr06 snr10 snr20 snr40 band20``). Every image is segmented at its own resolution by the deployed
predictor (post-processing on, TTA as the plan allows; sub-voxel phases for the models named by ``--subvoxel``,
a single pass for the others, whatever their bundles recommend) and scored by
:func:`sarcart.training.evaluation.evaluate_cases` — MONAI Dice, HD95, mean surface distance, surface Dice at
2 mm, organs at risk also inside the 3 cm ring around PTV = GTV + 3 mm. Rows go to ``OUT/rows.csv`` after
every image, so an interrupted run resumes where it stopped.

Output: per model ``OUT/<name>/`` (``metrics.csv``, ``summary.json``, ``boxplot.png``, as ``sarcart
evaluate`` writes them); ``OUT/compare.md`` with, per structure and region, each model's mean Dice and HD95
and the paired difference against the first model (mean over images with a 2000-resample percentile
bootstrap 95 % interval that resamples patients, so two fractions of one patient are not counted as
independent evidence; the same images, so the difference is not confounded by which images were drawn),
per sub-cohort mean Dice (``--by-case-prefix``: also per case-name prefix, for a datalist built from several
cohorts), and Dice against the structure's contrast-to-noise (Spearman ρ, tercile means;
``OUT/dice_vs_cnr.png``).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
KEY = ("case", "structure", "region")


def datalists(data: Path) -> list[tuple[str, Path]]:
    """``(sub-cohort name, datalist)`` pairs for a datalist file or a folder of sub-cohort folders."""
    if data.is_file():
        return [(data.parent.name, data)]
    found = sorted((p.parent.name, p) for p in data.glob("*/datalist.json"))
    if not found and (data / "datalist.json").is_file():
        found = [(data.name, data / "datalist.json")]
    if not found:
        raise SystemExit(f"--data {data}: no datalist.json in it or in its sub-folders; pass a datalist or "
                         "a folder of sub-cohorts built by 'sarcart dataset build'")
    return found


def entries_of(path: Path, fractions: set[str] | None) -> tuple[list[dict], list[str]]:
    from sarcart.training.dataset import load_datalist

    data = load_datalist(path)
    ents = [e for e in data["training"] if not fractions or any(e["case"].endswith(f) for f in fractions)]
    return ents, list(data["structures"])


def patient_of(sub: str, case: str) -> str:
    """The patient of an image: its case name without the ``_fxNN`` fraction suffix, within its sub-cohort."""
    return sub + "/" + re.sub(r"_fx\d+$", "", case)


def _mean_ci(v: np.ndarray, nd: int) -> str:
    """``mean [lo, hi]`` with the bootstrap interval over images."""
    from sarcart.training.metrics import bootstrap_ci

    lo, hi = bootstrap_ci(v)
    return f"{np.nanmean(v):.{nd}f} [{lo:.{nd}f}, {hi:.{nd}f}]"


def _difference_ci(model: np.ndarray, ref: np.ndarray, patients: np.ndarray, nd: int) -> str:
    """``model - ref`` as ``mean [lo, hi]``, the interval resampling patients."""
    from sarcart.training.metrics import paired_difference_ci

    m, lo, hi = paired_difference_ci(model, ref, groups=patients)
    return f"{m:+.{nd}f} [{lo:+.{nd}f}, {hi:+.{nd}f}]"


def compare_table(rows: pd.DataFrame, names: list[str]) -> str:
    """Markdown: per structure/region the models' means and the paired difference against the first."""
    ref = names[0]
    out = ["| structure | region | n | " + " | ".join(f"{n} Dice" for n in names) + " | "
           + " | ".join(f"{n} − {ref} Dice [95 % CI]" for n in names[1:]) + " | "
           + " | ".join(f"{n} HD95 mm" for n in names) + " | "
           + " | ".join(f"{n} − {ref} HD95 [95 % CI]" for n in names[1:]) + " |"]
    out.append("|" + "---|" * (3 + 2 * len(names) + 2 * (len(names) - 1)))
    for (s, reg), g in rows.groupby(["structure", "region"], sort=True):
        wide = {m: g[g.model == m].set_index(["sub", "case"]) for m in names}
        common = sorted(set.intersection(*(set(w.index) for w in wide.values())))
        if not common:
            continue
        dice = {m: wide[m].loc[common, "dice"].to_numpy(float) for m in names}
        hd = {m: wide[m].loc[common, "hd95_mm"].to_numpy(float) for m in names}
        # images where the structure was scored by every model (ring rows are empty where the organ
        # stays farther than the ring from the PTV)
        both = np.logical_and.reduce([np.isfinite(dice[m]) for m in names])
        if not both.any():
            continue
        dice = {m: v[both] for m, v in dice.items()}
        hd = {m: v[both] for m, v in hd.items()}
        patients = np.array([patient_of(sub, case) for sub, case in common])[both]

        out.append(f"| {s} | {reg} | {int(both.sum())} | " + " | ".join(_mean_ci(dice[m], 3) for m in names) + " | "
                   + " | ".join(_difference_ci(dice[m], dice[ref], patients, 3) for m in names[1:]) + " | "
                   + " | ".join(_mean_ci(hd[m], 1) for m in names) + " | "
                   + " | ".join(_difference_ci(hd[m], hd[ref], patients, 1) for m in names[1:]) + " |")
    return "\n".join(line.replace(" |  |", " |") for line in out)  # one model: no difference columns


def per_sub_table(rows: pd.DataFrame, names: list[str], *, by_case_prefix: bool = False) -> str:
    """Markdown: mean Dice per sub-cohort, model and structure (region ``all``).

    ``by_case_prefix``: also split each sub-cohort by the case name's prefix before its first ``_`` (``sarcart
    dataset build`` with several ``--dicom-root`` names the cases ``a_...``, ``b_...``), so one datalist built
    from several cohorts (the ``trufi`` validation cohort) is reported per cohort.
    """
    allr = rows[rows.region == "all"]
    if by_case_prefix:
        allr = allr.assign(sub=allr["sub"] + "/" + allr.case.str.split("_", n=1).str[0])
    structures = sorted(allr.structure.unique())
    out = ["| sub-cohort | model | n images | " + " | ".join(structures) + " |",
           "|" + "---|" * (3 + len(structures))]
    for sub in sorted(allr["sub"].unique()):
        for m in names:
            g = allr[(allr["sub"] == sub) & (allr.model == m)]
            vals = [f"{g[g.structure == s].dice.mean():.3f}" for s in structures]
            out.append(f"| {sub} | {m} | {g.case.nunique()} | " + " | ".join(vals) + " |")
    return "\n".join(out)


def cnr_table(rows: pd.DataFrame, names: list[str]) -> str:
    """Markdown: per model and structure, Spearman rho of Dice against contrast-to-noise and tercile means."""
    from scipy.stats import spearmanr

    allr = rows[(rows.region == "all") & np.isfinite(rows.cnr)]
    out = ["| structure | model | CNR range | Spearman ρ | low tercile | middle | high |", "|---|---|---|---|---|---|---|"]
    for s in sorted(allr.structure.unique()):
        for m in names:
            g = allr[(allr.structure == s) & (allr.model == m)].sort_values("cnr")
            if len(g) < 3:
                continue
            rho = spearmanr(g.cnr, g.dice).statistic
            cells = []
            for t in np.array_split(np.arange(len(g)), 3):
                part = g.iloc[t]
                cells.append(f"{part.dice.mean():.3f} (CNR {part.cnr.min():.1f}–{part.cnr.max():.1f})")
            out.append(f"| {s} | {m} | {g.cnr.min():.1f}–{g.cnr.max():.1f} | {rho:+.2f} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def cnr_figure(rows: pd.DataFrame, names: list[str], path: Path) -> Path:
    """Dice against contrast-to-noise, one panel per structure, one colour per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    allr = rows[rows.region == "all"]
    structures = sorted(allr.structure.unique())
    fig, axes = plt.subplots(1, len(structures), figsize=(3.4 * len(structures), 3.2), squeeze=False)
    for ax, s in zip(axes[0], structures):
        for m in names:
            g = allr[(allr.structure == s) & (allr.model == m)]
            ax.scatter(g.cnr, g.dice, s=18, label=m, alpha=0.8)
        ax.set_title(s)
        ax.set_xlabel("contrast-to-noise")
        ax.set_ylim(-0.02, 1.0)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("Dice")
    axes[0][-1].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class SharedPasses:
    """Each model's pass over the current image, made once and combined for every entry that uses it."""

    def __init__(self) -> None:
        self.passes: dict[tuple[str, bool, bool], object] = {}

    def segmenter(self, pred):
        """``image -> {structure: mask}`` of ``pred`` (a Predictor, one model or an ensemble)."""
        from sarcart.inference.predictor import combine_members, predict_member

        cfg = pred.config

        def masks(image):
            members = []
            for src, bundle, net in zip(pred.sources, pred.bundles, pred.networks):
                key = (src, bool(cfg.subvoxel), cfg.tta)
                if key not in self.passes:
                    self.passes[key] = predict_member(image, bundle, net, config=cfg)
                members.append(self.passes[key])
            seg = combine_members(image, members, config=cfg)
            return {s: seg.labels.array == k for k, s in enumerate(seg.structures, 1)}
        return masks


def parse_models(specs: list[str]) -> list[tuple[str, list[str]]]:
    """``NAME=MODEL`` or ``NAME=A+B+...`` (an ensemble) -> ``(name, member sources)``; a member may name an
    earlier ``--model`` entry, whose source it then uses."""
    models: list[tuple[str, list[str]]] = []
    for spec in specs:
        if "=" not in spec:
            raise SystemExit(f"--model {spec!r}: write NAME=MODEL (e.g. v1=trufi) or NAME=A+B for an ensemble")
        name, src = spec.split("=", 1)
        if not name or not src or name in dict(models):
            raise SystemExit(f"--model {spec!r}: every model needs its own non-empty NAME and a MODEL")
        known = dict(models)
        members: list[str] = []
        for part in src.split("+"):
            if not part:
                raise SystemExit(f"--model {spec!r}: an empty ensemble member; write NAME=A+B")
            members += known.get(part, [part])
        models.append((name, members))
    return models


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True,
                    help="NAME=MODEL (shipped name, bundle path or models:/ URI), or NAME=A+B an ensemble whose "
                         "members are models or earlier NAMEs; repeatable, the first is the reference")
    ap.add_argument("--data", type=Path, default=ROOT / "mlruns/datasets/trufi_test")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--fractions", help="only cases ending in one of these (comma-separated, e.g. fx01)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tta", action="store_true", help="mirroring TTA where the plan allows it")
    ap.add_argument("--subvoxel", action="append", default=[], metavar="NAME",
                    help="the model NAME averages over the plan grid's half-voxel phases (repeatable)")
    ap.add_argument("--by-case-prefix", action="store_true",
                    help="per sub-cohort table: also split by the case-name prefix (a_, b_, ... of a datalist "
                         "built from several --dicom-root folders)")
    args = ap.parse_args()

    import torch

    from sarcart.inference.predictor import Predictor, PredictorConfig
    from sarcart.training.evaluation import evaluate_cases, write_report

    torch.set_num_threads(args.threads)
    models = parse_models(args.model)
    unknown = set(args.subvoxel) - {n for n, _ in models}
    if unknown:
        raise SystemExit(f"--subvoxel {sorted(unknown)}: no --model of that name")
    names = [n for n, _ in models]
    fractions = set(args.fractions.split(",")) if args.fractions else None
    args.out.mkdir(parents=True, exist_ok=True)
    rows_path = args.out / "rows.csv"
    done: set[tuple[str, str, str]] = set()
    if rows_path.exists():
        prev = pd.read_csv(rows_path)
        done = set(zip(prev.model, prev["sub"], prev.case))
    print(f"load average before: {os.getloadavg()[0]:.1f}; {len(done)} (model, image) pairs already scored")
    preds = {n: Predictor(src, config=PredictorConfig(tta=args.tta, subvoxel=n in args.subvoxel)) for n, src in models}
    for sub, dl in datalists(args.data):
        ents, data_structures = entries_of(dl, fractions)
        for e in ents:  # load_datalist made the paths absolute
            passes = SharedPasses()  # one pass per model and image, shared by every entry it is a member of
            for name in names:
                if (name, sub, e["case"]) in done:
                    continue
                structures = [s for s in preds[name].structures if s in data_structures]
                t0 = time.perf_counter()
                table = evaluate_cases(passes.segmenter(preds[name]), [e], structures, show_progress=False)
                table.insert(0, "sub", sub)
                table.insert(0, "model", name)
                table["seconds"] = round(time.perf_counter() - t0, 1)
                new = not rows_path.exists()
                table.to_csv(rows_path, mode="a", header=new, index=False, quoting=csv.QUOTE_MINIMAL)
                g = table[table.region == "all"]
                print(f"{name} {sub} {e['case']}: " + ", ".join(f"{r.structure} {r.dice:.3f}" for r in g.itertuples())
                      + f" ({table['seconds'].iloc[0]:.0f} s)", flush=True)
    rows = pd.read_csv(rows_path)
    rows = rows[rows.model.isin(names)]
    for name, src in models:
        sel = rows[rows.model == name].drop(columns=["model", "seconds"])
        sel = sel.assign(case=sel["sub"] + "/" + sel["case"]).drop(columns=["sub"])
        write_report(sel, args.out / name, meta={"model": f"{name} ({' + '.join(Path(m).name for m in src)})",
                                                 "source": " + ".join(src),
                                                 "data": str(args.data), "fractions": args.fractions})
    text = ("## Paired comparison (difference against " + names[0] + ")\n\n" + compare_table(rows, names)
            + "\n\n## Mean Dice per sub-cohort\n\n" + per_sub_table(rows, names, by_case_prefix=args.by_case_prefix)
            + "\n\n## Dice against contrast-to-noise (`cnr` column; figure dice_vs_cnr.png)\n\n"
            + cnr_table(rows, names) + "\n")
    cnr_figure(rows, names, args.out / "dice_vs_cnr.png")
    (args.out / "compare.md").write_text(text)
    print(text)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
