"""``sarcart radiomics extract|maps|habitats|risk``: ROI features, voxel-wise maps, habitats, risk and dose painting."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from sarcart.errors import ConfigError

_DEVICES = ("cpu", "cuda")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("radiomics", help="radiomics: ROI features, voxel-wise maps, habitats, risk map + dose painting")
    rsub = p.add_subparsers(dest="radiomics_command", metavar="SUBCOMMAND")
    rsub.required = True

    e = rsub.add_parser("extract", help="ROI features (pyradiomics) -> tidy table (.csv or .parquet)")
    e.add_argument("--image", required=True, type=Path, help="image file (NIfTI, NRRD...)")
    e.add_argument("--mask", required=True, type=Path, help="ROI mask on the image grid")
    e.add_argument("--params", help="pyradiomics parameter YAML (may hold `base: mr_default`); default mr_default")
    e.add_argument("--label", type=int, help="ROI label value in the mask (default: the params' label, 1)")
    e.add_argument("--id", dest="image_id", help="pseudonymous image id for the table (default: hash of the path)")
    e.add_argument("--roi", default="GTV", help="ROI name for the table (default GTV)")
    e.add_argument("--out", required=True, type=Path, help="output table, .csv or .parquet")
    e.set_defaults(func=_extract)

    m = rsub.add_parser("maps", help="voxel-wise feature maps (PyTorch) -> DIR/<class>_<Feature>.nii.gz")
    m.add_argument("--image", required=True, type=Path, help="image file")
    m.add_argument("--mask", required=True, type=Path, help="ROI mask on the image grid")
    m.add_argument("--params", help="pyradiomics parameter YAML (setting, voxelSetting, featureClass)")
    m.add_argument("--radius", type=int, help="kernel radius in voxels (overrides voxelSetting.kernelRadius)")
    m.add_argument("--features", help="comma list of classes or class_Feature, e.g. glcm,firstorder_Mean")
    m.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1...")
    m.add_argument("--threads", type=int, help="CPU threads of torch (default: torch's; 1 is faster on a busy machine)")
    m.add_argument("--out", required=True, type=Path, help="output folder")
    m.set_defaults(func=_maps)

    h = rsub.add_parser("habitats", help="cluster voxel features inside the ROI -> habitats.nii.gz (+ DICOM SEG)")
    h.add_argument("--maps", required=True, type=Path, help="folder written by `sarcart radiomics maps`")
    h.add_argument("--mask", required=True, type=Path, help="ROI mask (resampled onto the maps' grid if needed)")
    h.add_argument("--k", type=int, help="number of habitats (default: chosen within --k-min..--k-max)")
    h.add_argument("--k-min", type=int, default=2, help="smallest k tried (default 2)")
    h.add_argument("--k-max", type=int, default=5, help="largest k tried (default 5)")
    h.add_argument("--method", choices=("kmeans", "gmm"), default="kmeans", help="clustering (default kmeans)")
    h.add_argument("--features", help="comma list of map names forming the voxel feature vector "
                   "(default: firstorder_Mean,firstorder_Variance,glcm_JointEntropy,glrlm_RunEntropy,"
                   "gldm_DependenceEntropy,ngtdm_Busyness)")
    h.add_argument("--reference", type=Path, help="habitats.json of the reference fraction: match labels to it")
    h.add_argument("--series", type=Path, help="DICOM MR series of the image: also write habitats_seg.dcm")
    h.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    h.add_argument("--out", required=True, type=Path, help="output folder")
    h.set_defaults(func=_habitats)

    r = rsub.add_parser("risk", help="risk model on the maps -> risk.nii.gz and prescription.nii.gz (dose painting)")
    r.add_argument("--maps", required=True, type=Path, help="folder written by `sarcart radiomics maps`")
    r.add_argument("--mask", required=True, type=Path, help="ROI mask; outputs are written on its grid")
    r.add_argument("--model", required=True, help="risk model: .skops file, MLflow URI or registered name")
    r.add_argument("--covariates", help="JSON object of patient covariates the model needs, or a .json file")
    r.add_argument("--necrosis", type=Path, help="NECROSIS mask (no boost there)")
    r.add_argument("--painting", type=Path, help="painting YAML (base_dose_gy, boost_dose_gy, risk_low, ...)")
    r.add_argument("--base-dose", type=float, help="course base dose in Gy (overrides the YAML)")
    r.add_argument("--boost-dose", type=float, help="course boost dose in Gy (overrides the YAML)")
    r.add_argument("--store", help="MLflow store (folder or URI; default: MLFLOW_TRACKING_URI or ./mlruns)")
    r.add_argument("--out", required=True, type=Path, help="output folder")
    r.set_defaults(func=_risk)


def _extract(args: argparse.Namespace) -> int:
    import pandas as pd
    from rich.console import Console

    from sarcart.radiomics.extract import extract_features, write_table
    from sarcart.radiomics.params import load_params
    from sarcart.tracking import hash_id

    params = load_params(args.params)
    image_id = args.image_id or hash_id(str(args.image.resolve()))
    row = extract_features(args.image, args.mask, params, image_id=image_id, roi=args.roi, label=args.label)
    path = write_table(pd.DataFrame([row]), args.out, params)
    n = sum(1 for k in row if k.count("_") >= 2 and not k.endswith("_version"))
    Console().print(f"wrote {path}: {n} features, settings {params.settings_hash} ({params.source})")
    return 0


def _maps(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sarcart.radiomics.maps.io import feature_maps, write_maps
    from sarcart.radiomics.maps.settings import parse_feature_list
    from sarcart.radiomics.params import load_params

    if args.device.split(":")[0] not in _DEVICES:
        raise ConfigError(f"--device must be cpu or cuda[:N], got {args.device!r}")
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    params = load_params(args.params)
    feats = parse_feature_list(args.features) if args.features else None
    fm = feature_maps(args.image, args.mask, params, radius=args.radius, features=feats, device=args.device)
    out = write_maps(fm, args.out, params)
    secs = sum(fm.info["seconds"].values())
    Console().print(f"wrote {len(fm.maps)} maps of {fm.info['n_voxels']} ROI voxels to {out} in {secs:.1f} s "
                    f"(radius {fm.info['kernel_radius']}, {args.device})")
    return 0


def _habitats(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sarcart.radiomics.habitat_io import write_habitats
    from sarcart.radiomics.habitats import (
        HabitatConfig,
        HabitatModel,
        assign,
        fit_habitats,
        refit_to_reference,
    )
    from sarcart.radiomics.maps.io import read_maps

    fm = read_maps(args.maps, args.mask)
    cfg = HabitatConfig(method=args.method, k=args.k, k_min=args.k_min, k_max=args.k_max, seed=args.seed)
    if args.features:
        cfg = dataclasses.replace(cfg, features=tuple(f.strip() for f in args.features.split(",") if f.strip()))
    if args.reference:
        model = refit_to_reference(fm, HabitatModel.from_json(args.reference.read_text()))
    else:
        model = fit_habitats(fm, cfg)
    labels = assign(fm, model)
    paths = write_habitats(labels, model, args.out, series=args.series)
    Console().print(f"{model.k} habitats -> " + ", ".join(str(p) for p in paths))
    return 0


def _covariates(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    raw = Path(text).read_text() if text.endswith(".json") and Path(text).is_file() else text
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--covariates must be a JSON object or .json file, got {text!r}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"--covariates must be a JSON object of name: number, got {type(data).__name__}")
    return {str(k): float(v) for k, v in data.items()}


def _risk(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sarcart.radiomics.habitat_io import write_risk_outputs
    from sarcart.radiomics.maps.io import mask_on_grid, read_maps
    from sarcart.radiomics.prescription import load_painting
    from sarcart.radiomics.registry import resolve_model
    from sarcart.radiomics.risk import add_geometry_maps, predict_risk

    painting = load_painting(args.painting, base_dose_gy=args.base_dose, boost_dose_gy=args.boost_dose)
    model = resolve_model(args.model, store=args.store)
    fm = read_maps(args.maps, args.mask)
    if any(str(c).startswith("geo_") for c in model.feature_names_in_):  # anatomical-prior maps from the masks
        nec = mask_on_grid(args.necrosis, fm.roi.geometry).array if args.necrosis else None
        fm = add_geometry_maps(fm, fm.roi.array, nec)
    risk = predict_risk(model, fm, _covariates(args.covariates))
    paths = write_risk_outputs(risk, args.mask, painting, out_dir=args.out, necrosis=args.necrosis)
    Console().print("wrote " + ", ".join(str(p) for p in paths))
    return 0
