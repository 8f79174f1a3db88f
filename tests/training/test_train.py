"""End to end on CPU: train a tiny config, MLflow (temporary store), registry + champion, resume, reload, segment."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest

from sarcart import tracking
from sarcart.cli import main
from sarcart.training.config import load_config
from sarcart.training.dataset import build_dataset
from sarcart.training.toy import toy_case, write_toy_dataset
from sarcart.training.train import train

TINY = "configs/train/tiny.yaml"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import torch

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("e2e")
    write_toy_dataset(root / "toy", 8, seed=0, shape=(32, 32, 16))
    rep = build_dataset(root / "toy", root / "set", structures=["GTV"], n_folds=4, seed=0)
    store = root / "mlruns"
    cfg = tracking.project_root() / TINY
    rc = main(["train", "--config", str(cfg), "--datalist", str(rep.datalist), "--output-dir", str(root / "runs"),
               "--store", str(store), "--fold", "0"])
    assert rc == 0
    return {"root": root, "store": store, "datalist": rep.datalist, "config": cfg,
            "run_dir": root / "runs" / "tiny" / "fold0"}


def _client(store):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking.tracking_uri(store))


def test_loss_falls_and_everything_is_logged_without_patient_names(setup):
    client = _client(setup["store"])
    run_id = (setup["run_dir"] / "mlflow_run_id").read_text().strip()
    run = client.get_run(run_id)
    losses = [m.value for m in sorted(client.get_metric_history(run_id, "train_loss"), key=lambda m: m.step)]
    plan = json.loads((setup["run_dir"] / "plan.json").read_text())
    assert len(losses) == plan["schedule"]["epochs"]
    assert np.mean(losses[-2:]) < 0.75 * np.mean(losses[:2])  # the loss falls
    assert run.data.params["budget.patch_size"] == "[32, 32, 16]"
    assert "val_dice" in run.data.metrics and "val_case_dice_mean" in run.data.metrics
    assert run.data.metrics["early_seconds_per_iteration"] > 0  # its value: test_plan_networks.py, pace tests
    arts = {a.path for a in client.list_artifacts(run_id)}
    assert {"plan.json", "config.json", "validation"} <= arts
    with open(client.download_artifacts(run_id, "validation/cases.json")) as f:
        table = json.load(f)
    cols = table["columns"]
    cases = [row[cols.index("case")] for row in table["data"]]
    val = [e["case"] for e in json.loads(setup["datalist"].read_text())["training"] if e["fold"] == 0]
    assert sorted(cases) == sorted(tracking.hash_id(c) for c in val)
    dumped = json.dumps(run.data.params) + json.dumps(run.data.tags) + json.dumps(table)
    assert "toy_0" not in dumped  # no case names in MLflow


def test_registered_champion_loads_back_and_segments_an_unseen_case(setup, monkeypatch, tmp_path):
    from sarcart.inference.predictor import Predictor

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking.tracking_uri(setup["store"]))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert str(tracking.alias_version("sarcart-tiny").version) == "1"
    pred = Predictor("models:/sarcart-tiny@champion")
    assert pred.bundle.version == "1"
    dices = []
    for seed in (4242, 4243, 4244):  # never seen in training
        image, masks = toy_case(seed, shape=(32, 32, 16))
        seg = pred(image)
        assert seg.labels.geometry == image.geometry
        got, ref = seg.labels.array == 1, masks["GTV"].array
        dices.append(2 * (got & ref).sum() / (got.sum() + ref.sum()))
    assert np.mean(dices) > 0.75, dices


def test_champion_moves_only_for_a_better_model_on_the_same_cases(setup):
    cfg = load_config(setup["config"]).with_updates(datalist=setup["datalist"], output_dir=setup["root"] / "runs2")
    budget = cfg.budget.model_copy(update={"epochs": 1}).model_dump()
    worse = train(cfg.with_updates(budget=budget), store=setup["store"], show_progress=False)
    assert worse.model_version == "2"
    assert worse.champion["promoted"] is False and "does not beat" in worse.champion["reason"]
    assert str(tracking.alias_version("sarcart-tiny", store=setup["store"]).version) == "1"
    # a champion validated on other cases is re-scored on the new version's cases by the callable
    d = tracking.promote_if_better("sarcart-tiny", "2", score=0.9, cases="other-cases",
                                   evaluate=lambda uri: 0.5 if uri == "models:/sarcart-tiny/1" else 1.0,
                                   store=setup["store"])
    assert d["promoted"] and d["previous_score"] == 0.5
    assert str(tracking.alias_version("sarcart-tiny", store=setup["store"]).version) == "2"
    d = tracking.promote_if_better("sarcart-tiny", "1", score=0.95, cases="third-set", store=setup["store"])
    assert not d["promoted"] and "cannot be re-scored" in d["reason"]


def test_a_killed_run_resumes_from_its_last_epoch_in_the_same_mlflow_run(setup, tmp_path):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    cfg = tmp_path / "resume.yaml"
    cfg.write_text(setup["config"].read_text().replace("  epochs: 8", "  epochs: 4"))
    out = tmp_path / "runs"
    exe = Path(sys.executable).with_name("sarcart")
    proc = subprocess.Popen([str(exe), "train", "--config", str(cfg), "--datalist", str(setup["datalist"]),
                             "--output-dir", str(out), "--store", str(setup["store"]), "--fold", "1", "--no-register"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = out / "tiny" / "fold1" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)  # a crash right after the first checkpoint
    proc.wait()
    assert last.exists()
    import torch

    done = torch.load(last, map_location="cpu", weights_only=False)["epoch"] + 1
    assert 1 <= done < 4
    run_id = (out / "tiny" / "fold1" / "mlflow_run_id").read_text().strip()
    client = _client(setup["store"])
    assert len(client.get_metric_history(run_id, "train_loss")) >= done  # nothing lost by the crash
    conf = load_config(cfg).with_updates(datalist=setup["datalist"], output_dir=out, fold=1, register_model=False)
    resumed = train(conf, store=setup["store"], resume=True, show_progress=False)
    assert resumed.run_id == run_id
    assert len(resumed.epoch_losses) == 4 - done  # only the missing epochs ran
    assert len({m.step for m in client.get_metric_history(run_id, "train_loss")}) == 4
    assert client.get_run(run_id).info.status == "FINISHED"


def test_each_epochs_loss_reaches_mlflow_before_its_checkpoint_is_written(setup, tmp_path, monkeypatch, caplog):
    """A crash right after a checkpoint must not lose that epoch's loss: resuming starts after the epoch.
    The logged value and the progress line's are the mean of the epoch's step losses, recorded here as the
    training steps return them."""
    from lightning.pytorch import Trainer

    from sarcart.training.module import SegmentationModule

    conf = load_config(setup["config"]).with_updates(datalist=setup["datalist"], output_dir=tmp_path / "runs",
                                                     fold=2, register_model=False)
    conf = conf.with_updates(budget=conf.budget.model_copy(update={"epochs": 3}).model_dump())
    client = _client(setup["store"])
    run_dir = tmp_path / "runs" / "tiny" / "fold2"
    seen, steps = [], {}
    save, step = Trainer.save_checkpoint, SegmentationModule.training_step

    def spy(trainer, *args, **kwargs):
        run_id = (run_dir / "mlflow_run_id").read_text().strip()
        logged = sorted(client.get_metric_history(run_id, "train_loss"), key=lambda m: m.step)
        seen.append((trainer.current_epoch, [m.value for m in logged]))
        return save(trainer, *args, **kwargs)

    def record(module, *args, **kwargs):
        loss = step(module, *args, **kwargs)
        steps.setdefault(module.current_epoch, []).append(float(loss.detach()))
        return loss

    monkeypatch.setattr(Trainer, "save_checkpoint", spy)
    monkeypatch.setattr(SegmentationModule, "training_step", record)
    with caplog.at_level(logging.INFO, logger="sarcart.training.module"):
        result = train(conf, store=setup["store"], show_progress=False)
    means = [sum(v) / len(v) for _, v in sorted(steps.items())]
    assert [epoch for epoch, _ in seen] == [0, 1, 2]  # one checkpoint per epoch
    for epoch, logged in seen:
        assert len(logged) == epoch + 1  # this epoch's loss is in MLflow already
        assert logged[-1] == pytest.approx(means[epoch], rel=1e-5)  # the mean of the epoch's step losses
    assert seen[-1][1] == pytest.approx(result.epoch_losses, rel=1e-6)
    shown = [float(m.group(1)) for r in caplog.records if (m := re.search(r"^epoch \d+/3 loss (\S+)", r.getMessage()))]
    assert shown == pytest.approx(means, abs=6e-5)  # the progress line (4 decimals) shows the same means


def test_init_from_continues_a_trained_model_with_its_plan_and_weights(setup, tmp_path):
    """Same seed and batches, the learning rate too small to move anything: the run started from the fold-0
    model keeps its weights, and its loss on the batches is that trained model's, far below a random start's."""
    from sarcart.models.bundle import load_bundle

    start_path = setup["run_dir"] / "bundle.pt"
    start = load_bundle(start_path)
    conf = load_config(setup["config"]).with_updates(datalist=setup["datalist"], fold=1, register_model=False)
    conf = conf.with_updates(optim=conf.optim.model_copy(update={"lr": 1e-12}).model_dump(),
                             budget=conf.budget.model_copy(update={"epochs": 1}).model_dump())
    still = train(conf.with_updates(init_from=str(start_path), output_dir=tmp_path / "still"), store=setup["store"],
                  show_progress=False)
    fresh = train(conf.with_updates(output_dir=tmp_path / "fresh"), store=setup["store"], show_progress=False)
    out = load_bundle(still.bundle_path)
    assert sorted(out.state_dict) == sorted(start.state_dict)
    assert max(float((out.state_dict[k] - v).abs().max()) for k, v in start.state_dict.items()) < 1e-6
    assert out.meta["init_from"]["weights_digest"] == start.weights_digest()
    assert (out.plan.patch_size, out.plan.target_spacing_mm, out.plan.network) == \
        (start.plan.patch_size, start.plan.target_spacing_mm, start.plan.network)
    assert out.plan.schedule.epochs == 1 and "continued from" in out.plan.decisions[-1]
    assert still.epoch_losses[0] < 0.75 * fresh.epoch_losses[0]


def test_init_from_refuses_what_it_cannot_continue_and_names_the_fix(setup, tmp_path, capsys):
    from sarcart.errors import ConfigError
    from sarcart.training.train import continued_plan

    start_path = setup["run_dir"] / "bundle.pt"
    conf = load_config(setup["config"]).with_updates(datalist=setup["datalist"], init_from=str(start_path))
    unplanned = conf.with_updates(budget=conf.budget.model_copy(update={"epochs": None}).model_dump())
    with pytest.raises(ConfigError, match="set budget.epochs"):
        continued_plan(unplanned)
    other = json.loads(setup["datalist"].read_text())
    other.update(labels={"0": "background", "1": "BOWEL"}, structures=["BOWEL"])
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ConfigError, match=r"segments \['GTV'\].*labels \['BOWEL'\]"):
        continued_plan(conf.with_updates(datalist=tmp_path / "other.json"))
    # the CLI flag: --plan-only prints the start model's plan with the config's schedule
    rc = main(["train", "--config", str(setup["config"]), "--datalist", str(setup["datalist"]),
               "--init-from", str(start_path), "--plan-only"])
    plan = json.loads(capsys.readouterr().out)
    assert rc == 0 and plan["patch_size"] == json.loads((setup["run_dir"] / "plan.json").read_text())["patch_size"]
    assert plan["decisions"][-1].startswith(f"continued from {start_path}")


def test_segment_cli_on_a_dicom_series_writes_labels_masks_and_rtstruct(setup, monkeypatch, tmp_path):
    from sarcart.io.dicom_series import read_dicom_series
    from sarcart.io.dicom_write import write_dicom_series
    from sarcart.io.labels import read_labels
    from sarcart.io.nifti import read_mask
    from sarcart.io.rtstruct import read_rtstruct

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking.tracking_uri(setup["store"]))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    image, masks = toy_case(4243, shape=(32, 32, 16))
    write_dicom_series(image, tmp_path / "dcm", uid_seed="toy-4243")
    out = tmp_path / "seg"
    assert main(["segment", "--image", str(tmp_path / "dcm"), "--model", "models:/sarcart-tiny/1", "--out", str(out)]) == 0
    labels, spec = read_labels(out / "labels.nii.gz")
    series = read_dicom_series(tmp_path / "dcm")
    assert labels.geometry.is_close(series.volume.geometry, tol_mm=1e-3)
    gtv = labels.array == spec.structures["GTV"][0]
    assert np.array_equal(read_mask(out / "masks" / "GTV.nii.gz").array, gtv)
    back = read_rtstruct(out / "rtstruct.dcm", series).masks["GTV"].array
    assert 2 * (back & gtv).sum() / (back.sum() + gtv.sum()) > 0.95  # contours round trip
    truth = masks["GTV"].array
    assert 2 * (gtv & truth).sum() / (gtv.sum() + truth.sum()) > 0.6
    info = json.loads((out / "segmentation.json").read_text())
    assert info["version"] == "1" and info["volumes_cc"]["GTV"] == pytest.approx(gtv.sum() * 2 * 2 * 3 / 1000)
    assert info["subvoxel"] is False  # the tiny bundle recommends no sub-voxel phases


def test_evaluate_cli_matches_a_direct_computation(setup, tmp_path):
    import pandas as pd

    from sarcart.inference.predictor import Predictor
    from sarcart.io.labels import read_labels
    from sarcart.io.nifti import read_nifti

    bundle = setup["run_dir"] / "bundle.pt"
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(bundle), "--data", str(setup["datalist"]), "--fold", "0",
                 "--out", str(out)]) == 0
    table = pd.read_csv(out / "metrics.csv")
    summary = json.loads((out / "summary.json").read_text())
    entries = [e for e in json.loads(setup["datalist"].read_text())["training"] if e["fold"] == 0]
    assert len(table) == len(entries) == summary["n_cases"]
    pred = Predictor(bundle)
    for e in entries:
        image = read_nifti(setup["datalist"].parent / e["image"])
        lab, _ = read_labels(setup["datalist"].parent / e["label"])
        got, ref = pred.masks(image)["GTV"], lab.array == 1
        dice = 2 * (got & ref).sum() / (got.sum() + ref.sum())
        row = table[table.case == tracking.hash_id(e["case"])]
        assert float(row.dice.iloc[0]) == pytest.approx(dice, abs=1e-4)
    assert (out / "boxplot.png").is_file()


def test_evaluate_cli_refuses_what_it_cannot_score_and_names_the_fix(setup, tmp_path, capsys):
    """An absent fold, a datalist of other structures and an --out that is a file: exit code 2 and a message
    naming the problem, no traceback and no empty report."""
    bundle, data = str(setup["run_dir"] / "bundle.pt"), setup["datalist"]
    folds = sorted({e["fold"] for e in json.loads(data.read_text())["training"]})
    assert main(["evaluate", "--model", bundle, "--data", str(data), "--fold", "9", "--out", str(tmp_path / "a")]) == 2
    assert f"its folds are {', '.join(map(str, folds))}" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "a").exists()
    other = json.loads(data.read_text())
    other["structures"] = ["BOWEL"]
    (data.parent / "bowel.json").write_text(json.dumps(other))
    assert main(["evaluate", "--model", bundle, "--data", str(data.parent / "bowel.json"), "--out",
                 str(tmp_path / "b")]) == 2
    assert "no structure to score" in " ".join(capsys.readouterr().err.split())
    (tmp_path / "file").write_text("")
    assert main(["evaluate", "--model", bundle, "--data", str(data), "--fold", "0", "--out",
                 str(tmp_path / "file")]) == 2
    said = " ".join(capsys.readouterr().err.split())
    assert str(tmp_path / "file") in said and "a file stands where a folder is needed" in said


def test_evaluate_and_segment_cli_run_an_ensemble_as_the_mean_of_its_models(setup, tmp_path, capsys):
    """Two --model: the scores are those of the argmax of the two models' mean probabilities, computed here from
    each model run alone; segment names the members; models of other structures are refused (exit 2)."""
    import pandas as pd
    import torch

    from sarcart.inference.predictor import Predictor, PredictorConfig
    from sarcart.io.labels import read_labels
    from sarcart.io.nifti import read_nifti, write_nifti
    from sarcart.models.bundle import ModelBundle, load_bundle, save_bundle

    a = setup["run_dir"] / "bundle.pt"
    base = load_bundle(a)
    gen = torch.Generator().manual_seed(0)
    noisy = {k: v + 0.05 * v.std() * torch.randn(v.shape, generator=gen) if v.is_floating_point() and v.numel() > 1
             else v for k, v in base.state_dict.items()}
    b = save_bundle(ModelBundle(base.plan, noisy, {**base.meta, "version": "noisy"}), tmp_path / "b.pt")
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(a), "--model", str(b), "--data", str(setup["datalist"]), "--fold", "0",
                 "--no-postprocess", "--out", str(out)]) == 0
    table = pd.read_csv(out / "metrics.csv")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["model"].startswith("ensemble of 2: ") and "vnoisy" in summary["meta"]["model"]
    cfg = PredictorConfig(postprocess=False, keep_probabilities=True, device="cpu")
    alone = [Predictor(m, config=cfg) for m in (a, b)]
    entries = [e for e in json.loads(setup["datalist"].read_text())["training"] if e["fold"] == 0]
    moved = 0
    for e in entries:
        image = read_nifti(setup["datalist"].parent / e["image"])
        ref = read_labels(setup["datalist"].parent / e["label"])[0].array == 1
        pa, pb = (p(image).probabilities[1].astype(float) for p in alone)
        got = (pa + pb) / 2 > 0.5
        dice = 2 * (got & ref).sum() / (got.sum() + ref.sum())
        row = table[(table.case == tracking.hash_id(e["case"])) & (table.region == "all")]
        assert float(row.dice.iloc[0]) == pytest.approx(dice, abs=2e-3)
        moved += int(((pa > 0.5) != (pb > 0.5)).sum())
    assert moved > 0  # the two models disagree somewhere, so the mean is not either model
    image = tmp_path / "case.nii.gz"
    write_nifti(read_nifti(setup["datalist"].parent / entries[0]["image"]), image)
    assert main(["segment", "--image", str(image), "--model", str(a), "--model", str(b), "--out", str(tmp_path / "s")]) == 0
    info = json.loads((tmp_path / "s" / "segmentation.json").read_text())
    assert info["members"] == [f"tiny v{base.version}", "tiny vnoisy"] and info["version"] == f"{base.version}+noisy"
    other = ModelBundle(base.plan.model_copy(update={"structures": ["BOWEL"]}), base.state_dict, base.meta)
    c = save_bundle(other, tmp_path / "c.pt")
    capsys.readouterr()
    assert main(["segment", "--image", str(image), "--model", str(a), "--model", str(c), "--out", str(tmp_path / "x")]) == 2
    assert f"{c} segments BOWEL" in " ".join(capsys.readouterr().err.split())


def test_a_registry_uri_is_fetched_from_the_store_named_by_store_not_the_default(setup, monkeypatch, tmp_path):
    """--store wins over MLFLOW_TRACKING_URI: the same scores as the run's own bundle file."""
    import pandas as pd
    import torch

    from sarcart.models.bundle import load_bundle, resolve_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking.tracking_uri(tmp_path / "empty-store"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fetched = load_bundle(resolve_model("models:/sarcart-tiny/1", store=setup["store"]))
    local = load_bundle(setup["run_dir"] / "bundle.pt")
    assert all(torch.equal(fetched.state_dict[k], local.state_dict[k]) for k in local.state_dict)
    with pytest.raises(Exception, match="sarcart-tiny"):  # the default store has no such model
        resolve_model("models:/sarcart-tiny/1")
    outs = {}
    for name, extra in (("uri", ["--model", "models:/sarcart-tiny/1", "--store", str(setup["store"])]),
                        ("file", ["--model", str(setup["run_dir"] / "bundle.pt")])):
        outs[name] = tmp_path / name
        assert main(["evaluate", *extra, "--data", str(setup["datalist"]), "--fold", "0",
                     "--out", str(outs[name])]) == 0
    a, b = (pd.read_csv(outs[n] / "metrics.csv") for n in ("uri", "file"))
    assert a.dice.tolist() == pytest.approx(b.dice.tolist(), abs=1e-6)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_shards_the_cache(setup, tmp_path):
    """Lightning DDP (gloo) through the real CLI: each rank caches only its share of the cases."""
    import subprocess
    import sys
    from pathlib import Path

    cfg = tmp_path / "ddp.yaml"
    text = setup["config"].read_text().replace("  epochs: 8", "  epochs: 2")
    cfg.write_text(text)
    exe = Path(sys.executable).with_name("sarcart")
    out = subprocess.run([str(exe), "-v", "train", "--config", str(cfg), "--datalist", str(setup["datalist"]),
                          "--output-dir", str(tmp_path / "runs"), "--store", str(tmp_path / "ml"), "--devices", "2",
                          "--no-register"], check=False, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    n_train = sum(1 for e in json.loads(setup["datalist"].read_text())["training"] if e["fold"] != 0)
    for rank in (0, 1):
        assert f"rank {rank}/2 caches {n_train // 2} training case(s)" in " ".join(out.stderr.split())
    assert (tmp_path / "runs" / "tiny" / "fold0" / "bundle.pt").is_file()
    run_id = (tmp_path / "runs" / "tiny" / "fold0" / "mlflow_run_id").read_text().strip()
    history = _client(tmp_path / "ml").get_metric_history(run_id, "train_loss")
    assert sorted(m.step for m in history) == [5, 10]  # one loss per epoch, logged by rank 0 only


def test_cross_validation_report_pools_the_folds(setup, tmp_path):
    import pandas as pd

    assert main(["evaluate", "--from-cv", str(setup["root"] / "runs" / "tiny"), "--out", str(tmp_path)]) == 0
    pooled = pd.read_csv(tmp_path / "metrics.csv")
    fold0 = pd.read_csv(setup["run_dir"] / "validation.csv")
    assert len(pooled) == len(fold0) and np.allclose(pooled.dice, fold0.dice)
    summary = json.loads((tmp_path / "summary.json").read_text())
    dice = next(m for m in summary["metrics"] if m["metric"] == "dice" and m["region"] == "all")
    assert dice["mean"] == pytest.approx(fold0.dice.mean(), abs=1e-4)


def test_a_config_s_inference_block_reaches_the_bundle_and_the_validation_scores(tmp_path):
    """`inference: {subvoxel: true}`: the bundle recommends the phases (so the registry's model runs as the
    shipped trufi 3.1 does) and the run's validation table is the phase-averaged network's Dice, computed
    here directly; images at 1 x 1 x 3 mm under the tiny plan's 2 x 2 x 3 mm grid, so there are 4 phases."""
    import pandas as pd
    import torch

    from sarcart.io.labels import read_labels
    from sarcart.io.nifti import read_nifti
    from sarcart.models.bundle import load_bundle
    from sarcart.training.predict import predict_volume, subvoxel_shifts

    torch.set_num_threads(2)
    write_toy_dataset(tmp_path / "toy", 6, seed=5, shape=(64, 64, 16), spacing_mm=(1.0, 1.0, 3.0))
    rep = build_dataset(tmp_path / "toy", tmp_path / "set", structures=["GTV"], n_folds=3, seed=0)
    cfg = tmp_path / "sv.yaml"
    cfg.write_text((tracking.project_root() / TINY).read_text() + "inference:\n  subvoxel: true\n")
    assert main(["train", "--config", str(cfg), "--datalist", str(rep.datalist), "--output-dir", str(tmp_path / "r"),
                 "--store", str(tmp_path / "mlruns"), "--fold", "0", "--no-register"]) == 0
    run = tmp_path / "r" / "tiny" / "fold0"
    bundle = load_bundle(run / "bundle.pt")
    assert bundle.meta["inference"] == {"subvoxel": True}
    table = pd.read_csv(run / "validation.csv").query("region == 'all'")
    net = bundle.network("cpu")
    entries = [e for e in json.loads(rep.datalist.read_text())["training"] if e["fold"] == 0]
    one_pass_differs = False
    for e in entries:
        image = read_nifti(rep.datalist.parent / e["image"])
        ref = read_labels(rep.datalist.parent / e["label"])[0].array == 1
        assert len(subvoxel_shifts(image.geometry, bundle.plan.target_spacing_mm)) == 4
        dices = {}
        for sv in (True, False):
            got = np.argmax(predict_volume(net, image, bundle.plan, subvoxel=sv)[0], axis=0) == 1
            dices[sv] = 2 * (got & ref).sum() / (got.sum() + ref.sum())
        row = table[table.case == tracking.hash_id(e["case"])]
        assert float(row.dice.iloc[0]) == pytest.approx(dices[True], abs=1e-4)
        one_pass_differs |= abs(dices[True] - dices[False]) > 1e-4
    assert one_pass_differs  # the table is the phases' score, not one pass's


def test_a_2p5d_config_trains_and_its_bundle_segments_unseen_cases(tmp_path):
    """`budget: {context_slices: 3}` trains a 2D network on axial slices with their neighbours as channels;
    the loss falls, and the saved bundle (rebuilt from its plan as the service does) finds the GTV of
    unseen toy cases against their known masks."""
    import torch

    from sarcart.inference.predictor import Predictor
    from sarcart.models.networks import SliceStack

    torch.set_num_threads(2)
    write_toy_dataset(tmp_path / "toy", 8, seed=0, shape=(32, 32, 16))
    rep = build_dataset(tmp_path / "toy", tmp_path / "set", structures=["GTV"], n_folds=4, seed=0)
    cfg = tmp_path / "2p5d.yaml"
    text = (tracking.project_root() / TINY).read_text()
    cfg.write_text(text.replace("  max_levels: 3\n", "  max_levels: 3\n  context_slices: 3\n"))
    assert main(["train", "--config", str(cfg), "--datalist", str(rep.datalist), "--output-dir", str(tmp_path / "r"),
                 "--store", str(tmp_path / "mlruns"), "--fold", "0", "--no-register"]) == 0
    run = tmp_path / "r" / "tiny" / "fold0"
    plan = json.loads((run / "plan.json").read_text())
    assert plan["network"]["context_slices"] == 3
    assert all(k[2] == 1 for k in plan["network"]["kernel_size"])
    client = _client(tmp_path / "mlruns")
    run_id = (run / "mlflow_run_id").read_text().strip()
    losses = [m.value for m in sorted(client.get_metric_history(run_id, "train_loss"), key=lambda m: m.step)]
    assert np.mean(losses[-2:]) < 0.75 * np.mean(losses[:2])
    pred = Predictor(run / "bundle.pt")
    assert isinstance(pred.bundle.network("cpu"), SliceStack)
    dices = []
    for seed in (4242, 4243, 4244):  # never seen in training
        image, masks = toy_case(seed, shape=(32, 32, 16))
        got, ref = pred(image).labels.array == 1, masks["GTV"].array
        dices.append(2 * (got & ref).sum() / (got.sum() + ref.sum()))
    assert np.mean(dices) > 0.75, dices
