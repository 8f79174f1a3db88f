"""``sarcart serve``: the per-fraction DICOM + HTTP service."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "serve", help="run the per-fraction service (DICOM storage SCP, job queue, HTTP API, review page)",
        description="Flags override the values of --config, so the service can start without a file. "
        "See configs/service.example.yaml.",
    )
    p.add_argument("--config", type=Path, help="YAML service configuration")
    p.add_argument("--ae-title", help="our AE title")
    p.add_argument("--port", type=int, help="DICOM port")
    p.add_argument("--http-port", type=int, help="HTTP port of the API and review page")
    p.add_argument("--http-host", help="address the HTTP API binds to (default 127.0.0.1)")
    p.add_argument("--storage", type=Path, help="folder for received instances, results and the queue")
    p.add_argument("--dest", action="append", default=[], metavar="AET@HOST:PORT",
                   help="destination for results (repeatable)")
    p.add_argument("--allow-aet", action="append", default=[], metavar="AET",
                   help="calling AE title allowed to send (repeatable)")
    p.add_argument("--token", help="bearer token protecting the HTTP API")
    p.add_argument("--model", help="segmentation model: shipped name, path or models:/ URI")
    p.add_argument("--device", help="torch device (cpu, cuda)")
    p.add_argument("--tta", action="store_true", default=None, help="test-time augmentation")
    p.add_argument("--subvoxel", action=argparse.BooleanOptionalAction, default=None,
                   help="average over the plan grid's half-voxel phases (default: what the model's bundle recommends)")
    p.add_argument("--series-idle-s", type=float, help="seconds without new instances before a series is complete")
    p.add_argument("--courses", type=Path, help="folder of patient courses: series of those patients run the whole "
                   "adaptive pipeline (sarcart adapt) and RTSTRUCT, RTPLAN and RTDOSE are sent")
    p.add_argument("--adapt-config", type=Path, help="adapt configuration YAML for those series")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from sarcart.service.config import load_service_config
    from sarcart.service.server import Service

    config = load_service_config(
        args.config, ae_title=args.ae_title, port=args.port, http_port=args.http_port, http_host=args.http_host,
        storage=args.storage, destinations=args.dest, allowed_aets=args.allow_aet, token=args.token,
        model=args.model, device=args.device, tta=args.tta, subvoxel=args.subvoxel, series_idle_s=args.series_idle_s,
        courses=args.courses, adapt_config=args.adapt_config,
    )
    Service(config).serve_forever()
    return 0
