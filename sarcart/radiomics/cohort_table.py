"""Feature tables of a cohort: assembly with provenance, Parquet output and reading back.

Column order of a cohort table: ``patient, fraction, fraction_index``, the manifest's carried columns
(outcomes, covariates), the identifiers and provenance (:data:`PROVENANCE`), then the features
(``<filter>_<class>_<feature>``). The Parquet file's schema metadata holds, under the key
``sarcart.cohort``, the resolved parameter set, its settings hash, the manifest's SHA-256 and the counts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sarcart.errors import ConfigError
from sarcart.io.atomic import atomic_write
from sarcart.radiomics.extract import META_COLUMNS
from sarcart.radiomics.manifest import ManifestCase, file_sha256
from sarcart.radiomics.params import RadiomicsParams

PROVENANCE = ("image_id", "roi", "label", "mask_source", "image_sha256", "mask_sha256", "case_key",
              "normalisation", "settings_hash", "pyradiomics_version", "sarcart_version", "numpy_version",
              "simpleitk_version")
ID_COLUMNS = ("patient", "fraction", "fraction_index")
METADATA_KEY = b"sarcart.cohort"
FAILURE_COLUMNS = ("patient", "fraction", "image", "mask", "reason", "message")


def feature_columns(table: Any) -> list[str]:
    """Numeric feature columns of a cohort or extraction table (``<filter>_<class>_<feature>``)."""
    skip = set(PROVENANCE) | set(ID_COLUMNS) | set(META_COLUMNS)
    prefixes = ("original_", "wavelet", "log-sigma", "square", "squareroot", "logarithm", "exponential",
                "gradient", "lbp-")
    return [c for c in table.columns if c not in skip and str(c).startswith(prefixes)
            and str(table[c].dtype) != "object"]


def assemble(rows: Sequence[dict[str, Any]], failures: Sequence[dict[str, Any]], cases: Sequence[ManifestCase],
             normalisation: str) -> tuple[Any, Any]:
    """(feature table, failure table) as pandas DataFrames; rows are cache entries or worker results."""
    import pandas as pd

    by_row = {c.row: c for c in cases}
    records = []
    extra_cols: list[str] = list(cases[0].extra) if cases else []
    for r in rows:
        case = by_row[r["row"]]
        feat = r["features"]
        rec: dict[str, Any] = {"patient": case.patient, "fraction": case.fraction, "fraction_index": case.order}
        rec.update({c: case.extra.get(c) for c in extra_cols})
        rec.update({k: feat.get(k) for k in PROVENANCE})
        rec.update({k: v for k, v in feat.items() if k not in rec and k not in PROVENANCE})
        records.append(rec)
    table = pd.DataFrame.from_records(records)
    if table.empty:
        table = pd.DataFrame(columns=[*ID_COLUMNS, *extra_cols, *PROVENANCE])
    fail = pd.DataFrame([{k: f[k] for k in FAILURE_COLUMNS} for f in sorted(failures, key=lambda f: f["row"])],
                        columns=list(FAILURE_COLUMNS))
    return table, fail


def write_outputs(table: Any, failures: Any, out: Path, params: RadiomicsParams, *, manifest: Path) -> None:
    """Write ``out`` (Parquet with provenance metadata), ``<out>.params.yaml`` and ``<out>.failures.csv``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = {"settings_hash": params.settings_hash, "params": json.loads(json.dumps(dict(params.data), default=str)),
            "manifest_sha256": file_sha256(manifest), "n_cases": len(table),
            "n_failed": len(failures), "source": params.source}
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), METADATA_KEY: json.dumps(meta).encode()})
    atomic_write(out, lambda tmp: pq.write_table(arrow, tmp))
    out.with_name(out.stem + ".params.yaml").write_text(params.to_yaml())
    atomic_write(out.with_name(out.stem + ".failures.csv"), lambda tmp: failures.to_csv(tmp, index=False))


def read_cohort_table(path: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """A cohort table and its provenance metadata (empty dict for a Parquet file written elsewhere).

    Raises:
        ConfigError: missing file, not Parquet, or no ``patient``/``fraction`` columns.
    """
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.is_file() or p.suffix.lower() != ".parquet":
        raise ConfigError(f"features must be an existing .parquet file (sarcart cohort extract), got {p}")
    arrow = pq.read_table(p)
    raw = (arrow.schema.metadata or {}).get(METADATA_KEY)
    table = arrow.to_pandas()
    missing = [c for c in ("patient", "fraction") if c not in table.columns]
    if missing:
        raise ConfigError(f"{p} lacks the columns {missing}; write it with sarcart cohort extract")
    return table, (json.loads(raw) if raw else {})
