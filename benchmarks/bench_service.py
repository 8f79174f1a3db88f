"""Benchmark: the per-fraction service — latency and load (issue 4).

1. **Latency**: one 267 x 267 x 144 TRUFI series (a phantom fraction's ``mr/`` folder) sent by dcmtk
   ``storescu`` to a running ``Service`` with the real segmenter (``--model``, default the shipped ``trufi``);
   latency = RTSTRUCT delivered to the destination (dcmtk ``storescp``) minus the last instance received.
   It includes the series idle timeout (``--idle``, reported) — the service cannot know earlier that a
   series is complete. Median of ``--repeats`` sends (each a new series: the UIDs are rewritten).
2. **Load**: ``--senders`` concurrent ``storescu`` processes send ``--series`` series; all must be processed,
   none mixed (every RTSTRUCT references the series it was made from and holds its instance count), p50/p95
   latency reported.

Run: .venv/bin/python benchmarks/bench_service.py --data mlruns/datasets/trufi_test_raw [--model trufi]
     [--repeats 3] [--senders 4] [--series 20] [--tta] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def _copy_series(src: Path, dst: Path, tag: str) -> tuple[str, int]:
    """Copy a series with new Study/Series/SOP UIDs (so every copy is a new series); returns (series UID, n)."""
    from sarcart.io.dicom_write import make_uid

    dst.mkdir(parents=True)
    files = sorted(src.glob("*.dcm"))
    series_uid = make_uid("bench-series", tag)
    study_uid = make_uid("bench-study", tag)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID, ds.StudyInstanceUID = series_uid, study_uid
        ds.SOPInstanceUID = make_uid("bench-sop", tag, f.name)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(dst / f.name, enforce_file_format=True)
    return series_uid, len(files)


def _series_sources(root: Path) -> list[Path]:
    out = sorted(p for p in root.rglob("mr") if p.is_dir() and any(p.glob("*.dcm")))
    if not out:
        raise SystemExit(f"no phantom mr/ series under {root}; generate the trufi test cohort first "
                         "(configs/cohorts/trufi_test.yaml)")
    return out


def _send(storescu: str, port: int, folder: Path) -> None:
    r = subprocess.run([storescu, "-aet", "CONSOLE", "-aec", "SARCART", "+sd", "+r", "127.0.0.1", str(port),
                        str(folder)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"storescu failed: {r.stderr[-500:]}")


def _latencies(db, series_uids: list[str], timeout_s: float) -> dict[str, float]:
    """Wait until every series' RTSTRUCT was sent; latency = sent_at - last instance received."""
    t0 = time.time()
    marks = ",".join("?" * len(series_uids))
    while time.time() - t0 < timeout_s:
        rows = db.query(f"SELECT j.series_uid, j.state, j.error, j.last_instance_at, s.sent_at FROM jobs j "
                        f"LEFT JOIN sends s ON s.job_id = j.id WHERE j.series_uid IN ({marks})", tuple(series_uids))
        failed = [r for r in rows if r["state"] == "failed"]
        if failed:
            raise RuntimeError(f"job failed: {failed[0]['error']}")
        done = {r["series_uid"]: r["sent_at"] - r["last_instance_at"] for r in rows if r["sent_at"]}
        if len(done) == len(series_uids):
            return done
        time.sleep(0.2)
    raise TimeoutError(f"only {len(done)} of {len(series_uids)} series done after {timeout_s} s")


def _check_not_mixed(pacs: Path, expected: dict[str, int]) -> int:
    """Every received RTSTRUCT references one of our series and that series' instance count."""
    seen = 0
    for f in pacs.rglob("*"):
        if not f.is_file():
            continue
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        if ds.Modality != "RTSTRUCT":
            continue
        ref = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
        uid, n = ref.SeriesInstanceUID, len(ref.ContourImageSequence)
        if uid not in expected or n != expected[uid]:
            raise RuntimeError(f"RTSTRUCT {f.name} references {uid} with {n} images: mixed series")
        seen += 1
    return seen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO / "mlruns/datasets/trufi_test_raw")
    ap.add_argument("--model", default="trufi")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tta", action="store_true")
    ap.add_argument("--idle", type=float, default=2.0, help="series idle timeout (s)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--series", type=int, default=20)
    args = ap.parse_args()

    from sarcart.service.config import ServiceConfig
    from sarcart.service.server import Service
    from svc_support import free_port, start_storescp

    storescu, storescp = shutil.which("storescu"), shutil.which("storescp")
    if not (storescu and storescp):
        raise SystemExit("dcmtk storescu/storescp missing: make system-deps")
    sources = _series_sources(args.data)
    work = Path(tempfile.mkdtemp(prefix="sarcart-bench-svc-"))
    pacs_port, port = free_port(), free_port()
    pacs = start_storescp(storescp, work / "pacs", pacs_port)
    cfg = ServiceConfig.model_validate(dict(
        ae_title="SARCART", port=port, http_port=free_port(), storage=work / "svc", allowed_aets=["CONSOLE"],
        token="bench-token", series_idle_s=args.idle, destinations=[f"PACS@127.0.0.1:{pacs_port}"],
        model=args.model, device=args.device, tta=args.tta))
    t0 = time.perf_counter()
    svc = Service(cfg)
    load_s = time.perf_counter() - t0
    svc.start(http=False)
    expected: dict[str, int] = {}
    try:
        lat = []
        for r in range(args.repeats):
            uid, n = _copy_series(sources[r % len(sources)], work / f"lat{r}", f"lat{r}")
            expected[uid] = n
            _send(storescu, port, work / f"lat{r}")
            lat.append(_latencies(svc.db, [uid], 900)[uid])
        folders = []
        for s in range(args.series):
            uid, n = _copy_series(sources[s % len(sources)], work / f"load{s}", f"load{s}")
            expected[uid] = n
            folders.append((uid, work / f"load{s}"))
        t1 = time.time()
        with ThreadPoolExecutor(args.senders) as pool:
            list(pool.map(lambda f: _send(storescu, port, f[1]), folders))
        load = _latencies(svc.db, [u for u, _ in folders], 3600)
        wall = time.time() - t1
        n_rs = _check_not_mixed(work / "pacs", expected)
    finally:
        svc.stop()
        pacs.terminate()
    vals = np.array(list(load.values()))
    print(f"\n# sarcart service benchmark - {os.cpu_count()} CPU(s), load avg {os.getloadavg()[0]:.1f}, "
          f"model {args.model}, device {args.device}, TTA {'on' if args.tta else 'off'}, idle timeout {args.idle} s, "
          f"model load {load_s:.1f} s")
    print("| measure | value |\n|---|---|")
    print(f"| single-series latency, median of {args.repeats} (s) | {np.median(lat):.1f} "
          f"(runs {', '.join(f'{v:.1f}' for v in lat)}) |")
    print(f"| load: {args.series} series from {args.senders} concurrent senders, all processed | "
          f"{len(load)}/{args.series} in {wall:.0f} s |")
    print(f"| load: latency p50 / p95 (s) | {np.percentile(vals, 50):.1f} / {np.percentile(vals, 95):.1f} |")
    print(f"| RTSTRUCTs received, each referencing its own series (none mixed) | {n_rs} |")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
