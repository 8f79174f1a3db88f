"""Train, evaluate and (``--save``) ship the adapt stage's risk model (``adapt-risk``).

The cohorts are frozen in ``configs/radiomics/adapt_risk.yaml`` (train and test differ in seeds; three grids:
6 mm as in the demo, 3 mm, and the clinical 1.5 x 1.5 x 3 mm). Every fraction (fx00-fx02) of every patient
is one case, seen exactly as the adapt stage sees it (:func:`sarcart.adapt.risk.stage_case`: the stage's
maps of ``PaintingSettings()`` on the GTV box, plus depth / relative depth / distance to necrosis).
Training and evaluation ROI: the viable tumour (GTV minus NECROSIS), where the phantom's HYPOXIA lives.

Compared on the held-out patients, per grid (voxel AUROC pooled over cases, patient-bootstrap 95 % CI;
at most ``--max-voxels`` seeded random voxels per case; Dice of the boost region with HYPOXIA):

* ``adapt-risk``: standardised L2 logistic regression on the stage's maps + the anatomical prior;
* ``geometry``: the same on the anatomical prior only (what the image must add to);
* ``darkest habitat``: the stage's rule without a model (k-means habitats, the darkest is boosted).

    .venv/bin/python benchmarks/bench_adapt_risk.py [--work /tmp/sarcart-adapt-risk] [--save] [--store DIR]

``--save`` writes ``sarcart/models/weights/adapt-risk.skops`` (+ ``.json``) and logs/registers the model
in MLflow (``--store``; default sarcart.tracking's) as ``sarcart-adapt-risk``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "configs" / "radiomics" / "adapt_risk.yaml"


def synthesise(entry: dict, work: Path) -> Path:
    """The cohort of one spec entry in ``work/<name>`` (generated once with ``sarcart synth``)."""
    import yaml

    spec = dict(entry)
    out = work / spec.pop("name")
    if not (out / "cohort.csv").is_file():
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
            yaml.safe_dump(spec, fh)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "sarcart.cli", "synth", "--spec", fh.name, "--out", str(out),
                        "--no-progress"], check=True, capture_output=True)
        os.unlink(fh.name)
        print(f"synthesised {out.name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return out


def load_cases(entries: list[dict], work: Path) -> dict[str, list]:
    """Grid name -> the stage cases of every fraction of every patient of that cohort."""
    from sarcart.adapt.config import PaintingSettings
    from sarcart.adapt.risk import stage_case
    from sarcart.progress import progress

    out = {}
    for entry in entries:
        cohort = synthesise(entry, work)
        dirs = sorted(cohort.glob("*/fx[0-9][0-9]"))
        out[entry["name"]] = [stage_case(d, PaintingSettings()) for d in progress(dirs, f"maps {entry['name']}")]
    return out


def viable(case, max_voxels: int | None = None, seed: int = 0):
    """The case as a RiskCase on its viable tumour (optionally a seeded random subset of its voxels)."""
    from sarcart.radiomics.maps.io import FeatureMaps
    from sarcart.radiomics.risk import RiskCase

    roi = case.fmaps.roi.array & ~case.necrosis
    if max_voxels and roi.sum() > max_voxels:
        idx = np.flatnonzero(roi)
        keep = np.random.default_rng(seed).choice(idx, max_voxels, replace=False)
        roi = np.zeros(roi.shape, bool)
        roi.flat[keep] = True
    return RiskCase(FeatureMaps(case.fmaps.maps, case.fmaps.roi.with_array(roi), case.fmaps.info), case.hypoxia, {},
                    case.case_id)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(int(a.sum() + b.sum()), 1))


def evaluate(models: dict, test: list, max_voxels: int, n_boot: int) -> dict:
    """AUROC (CI), mean Dice of the boost region, and paired differences for one grid's test cases."""
    from sarcart.adapt.config import PaintingSettings
    from sarcart.adapt.risk import darkest_habitat_risk
    from sarcart.radiomics.risk import auroc_with_ci, paired_auroc_difference, predict_risk

    scores: dict[str, list] = {k: [] for k in (*models, "darkest habitat")}
    dices: dict[str, list] = {k: [] for k in scores}
    labels = []
    for i, case in enumerate(test):
        sub = viable(case, max_voxels, seed=i)
        roi, y = sub.fmaps.roi.array, case.hypoxia[sub.fmaps.roi.array]
        labels.append(y)
        risks = {name: predict_risk(m, sub.fmaps).array for name, m in models.items()}
        risks["darkest habitat"] = darkest_habitat_risk(case, PaintingSettings())
        for name, r in risks.items():
            scores[name].append(r[roi])
            dices[name].append(dice(r[roi] >= 0.5, y))
    res = {name: {**auroc_with_ci(scores[name], labels, n_boot=n_boot), "dice": float(np.mean(dices[name]))}
           for name in scores}
    res["vs geometry"] = paired_auroc_difference(scores["adapt-risk"], scores["geometry"], labels, n_boot=n_boot)
    res["vs darkest"] = paired_auroc_difference(scores["adapt-risk"], scores["darkest habitat"], labels,
                                                n_boot=n_boot)
    return res


def main() -> None:
    import torch
    import yaml

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/sarcart-adapt-risk"))
    ap.add_argument("--save", action="store_true", help="ship the model (sarcart/models/weights) and log it to MLflow")
    ap.add_argument("--store", default=None, help="MLflow store (default: sarcart.tracking's)")
    ap.add_argument("--max-voxels", type=int, default=20000, help="evaluation voxels per case (seeded random)")
    ap.add_argument("--boot", type=int, default=500, help="bootstrap resamples of the CIs")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from sarcart.adapt.config import PaintingSettings
    from sarcart.radiomics.risk import GEOMETRY_FEATURES, RiskConfig, train_risk_model

    spec = yaml.safe_load(SPEC.read_text())
    t0 = time.perf_counter()
    train = load_cases(spec["train"], args.work)
    test = load_cases(spec["test"], args.work)
    t_maps = time.perf_counter() - t0
    train_cases = [viable(c) for cases in train.values() for c in cases]
    cfgs = {"adapt-risk": RiskConfig(features=PaintingSettings().features + GEOMETRY_FEATURES),
            "geometry": RiskConfig(features=GEOMETRY_FEATURES)}
    t1 = time.perf_counter()
    models = {name: train_risk_model(train_cases, cfg) for name, cfg in cfgs.items()}
    t_fit = time.perf_counter() - t1
    rows = {name: evaluate(models, cases, args.max_voxels, args.boot) for name, cases in test.items()}
    print(f"\nmaps of {sum(map(len, train.values())) + sum(map(len, test.values()))} fractions {t_maps:.0f} s, "
          f"fit {t_fit:.1f} s, load {os.getloadavg()[0]:.1f}; train: {len(train_cases)} fractions of "
          f"{sum(e['patients'] for e in spec['train'])} patients\n")
    print("| test grid | fractions / voxels | prevalence | AUROC adapt-risk (95 % CI) | AUROC geometry | "
          "AUROC darkest habitat | adapt-risk - geometry | adapt-risk - darkest | Dice boost: adapt-risk / "
          "geometry / darkest |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        f = {k: f"{r[k]['auroc']:.3f} ({r[k]['auroc_ci_low']:.3f}-{r[k]['auroc_ci_high']:.3f})"
             for k in ("adapt-risk", "geometry", "darkest habitat")}
        d = {k: f"{r[k]['delta_auroc']:+.3f} ({r[k]['delta_ci_low']:+.3f} to {r[k]['delta_ci_high']:+.3f})"
             for k in ("vs geometry", "vs darkest")}
        print(f"| {name} | {r['adapt-risk']['n_cases']} / {r['adapt-risk']['n_voxels']} | "
              f"{r['adapt-risk']['prevalence']:.2f} | {f['adapt-risk']} | {f['geometry']} | {f['darkest habitat']} | "
              f"{d['vs geometry']} | {d['vs darkest']} | {r['adapt-risk']['dice']:.2f} / {r['geometry']['dice']:.2f} "
              f"/ {r['darkest habitat']['dice']:.2f} |")
    if args.save:
        ids = ([c.case_id for c in train_cases], [c.case_id for cases in test.values() for c in cases])
        ship(models["adapt-risk"], cfgs["adapt-risk"], rows, args.store, ids)


def ship(model, cfg, rows: dict, store: str | None, ids: tuple[list, list]) -> None:
    """Save the shipped file and log/register the model in MLflow."""
    from sarcart.adapt.risk import WEIGHTS_DIR
    from sarcart.radiomics.registry import log_risk_model
    from sarcart.radiomics.risk import save_model

    path = WEIGHTS_DIR / "adapt-risk.skops"
    save_model(model, path, cfg)
    metrics = {f"{grid}_{k}": float(v) for grid, r in rows.items() for k, v in r["adapt-risk"].items()
               if isinstance(v, float)}
    info = log_risk_model(model, cfg, metrics, train_cases=ids[0], test_cases=ids[1], store=store,
                          extra_params={"cohort_spec": SPEC.name, "roi": "viable tumour (GTV - NECROSIS)",
                                        "stage": "sarcart.adapt.painting (PaintingSettings defaults)"},
                          registered_name="sarcart-adapt-risk", experiment="sarcart-adapt-risk")
    print(f"saved {path} ({path.stat().st_size / 1024:.0f} KiB); MLflow run {info['run_id']}, "
          f"registered sarcart-adapt-risk version {info['version']}")


if __name__ == "__main__":
    main()
