"""Tissue classes of the synthetic TRUFI phantom: label values, structures and relaxation at 0.35 T.

One table serves the anatomy builders (which write the label values), the renderer (which turns
each value into a bSSFP signal) and the documentation (``docs/phantom.md`` is generated from the same
rows by :func:`tissue_table_markdown`).

Label values are mutually exclusive (one per voxel); structures are unions of values and are written
to ``labels.json`` (see :mod:`sarcart.io.labels`). ``HYPOXIA`` is not a label value: it overlaps the
viable tumour and is stored in its own mask (``hypoxia.nii.gz``).

Relaxation times are estimates at 0.35 T taken from ``FACTS.md`` section 2 (sources there). T2 is
taken as field independent (Bottomley et al., Med Phys 1984;11:425, doi 10.1118/1.595535). Rows
without a source are marked UNVERIFIED: they are tunable assumptions, not measurements.
"""

from __future__ import annotations

from dataclasses import dataclass

from sarcart.io.labels import LabelSpec


@dataclass(frozen=True)
class Tissue:
    """One exclusive tissue class.

    Attributes:
        value: label value in ``labels.nii.gz`` (uint8).
        name: upper-case class name written to ``labels.json``.
        t1_ms: longitudinal relaxation time at 0.35 T (ms).
        t2_ms: transverse relaxation time (ms).
        pd: proton density relative to pure water (0-1).
        source: where the numbers come from (``UNVERIFIED`` when no source was found).
    """

    value: int
    name: str
    t1_ms: float
    t2_ms: float
    pd: float
    source: str

    @property
    def verified(self) -> bool:
        return "UNVERIFIED" not in self.source


MUSCLE, FAT, BONE_CORTEX, BONE_MARROW = 1, 2, 3, 4
BOWEL_WALL, BOWEL_CONTENT, GAS = 5, 6, 7
KIDNEY_L, KIDNEY_R, LIVER, SPINAL_CANAL, VESSEL = 8, 9, 10, 11, 12
TUMOUR, NECROSIS, EDEMA, SKIN = 13, 14, 15, 16

TISSUES: tuple[Tissue, ...] = (
    Tissue(MUSCLE, "MUSCLE", 455.0, 28.0, 0.80,
           "FACTS.md s2: 1.5 T 856/27 scaled by (0.35/1.5)^0.4203 (Bottomley exponent) -> T1 450-465; PD 80 %"),
    Tissue(FAT, "FAT", 180.0, 93.0, 0.70,
           "FACTS.md s2: T1 130-225 (derived; 183/130 measured at 0.55 T), T2 93 measured at 0.55 T; PD 70 %"),
    Tissue(BONE_CORTEX, "BONE_CORTEX", 138.0, 2.0, 0.05,
           "FACTS.md s2: Keskin fit T1 138 (derived); T2 1-3; PD 5 %"),
    Tissue(BONE_MARROW, "BONE_MARROW", 112.0, 50.0, 0.70,
           "FACTS.md s2: fatty marrow T1 112 (Keskin fit); T2 46-49 (1.5/3 T); PD UNVERIFIED (set as fat)"),
    Tissue(BOWEL_WALL, "BOWEL_WALL", 500.0, 110.0, 0.80,
           "UNVERIFIED: 3 T phantom values 500/100-120 (FACTS.md s2); PD assumed"),
    Tissue(BOWEL_CONTENT, "BOWEL_CONTENT", 3000.0, 800.0, 1.00,
           "FACTS.md s2: simulator value 3000/800 for bowel fluid contents; PD 100 %"),
    Tissue(GAS, "GAS", 1000.0, 1.0, 0.0,
           "no protons: PD 0 (T1/T2 irrelevant)"),
    Tissue(KIDNEY_L, "KIDNEY_L", 500.0, 80.0, 0.85,
           "FACTS.md s2: kidney at 0.5 T 500/80; PD UNVERIFIED"),
    Tissue(KIDNEY_R, "KIDNEY_R", 500.0, 80.0, 0.85,
           "FACTS.md s2: kidney at 0.5 T 500/80; PD UNVERIFIED"),
    Tissue(LIVER, "LIVER", 300.0, 46.0, 0.90,
           "T1 UNVERIFIED (power law through 1.5/3 T, FACTS.md s2); T2 46 (1.5 T, field independent); PD 90 %"),
    Tissue(SPINAL_CANAL, "SPINAL_CANAL", 4200.0, 2050.0, 1.00,
           "FACTS.md s2: CSF 4280/2030 (1.5 T), 4160/2100 (3 T), T1 field independent; PD 100 %"),
    Tissue(VESSEL, "VESSEL", 1000.0, 260.0, 0.95,
           "FACTS.md s2: blood Keskin fit T1 954, 0.55 T 1122/263; PD 95 %"),
    Tissue(TUMOUR, "TUMOUR", 600.0, 80.0, 0.85,
           "UNVERIFIED: no 0.35 T sarcoma value found; tunable assumption (PhantomConfig.tumour_t1_ms/t2_ms)"),
    Tissue(NECROSIS, "NECROSIS", 3000.0, 700.0, 0.95,
           "UNVERIFIED: fluid-like necrotic core, chosen between bowel fluid and CSF"),
    Tissue(EDEMA, "EDEMA", 900.0, 150.0, 0.90,
           "UNVERIFIED: peritumoural oedema, long T2 (assumption)"),
    Tissue(SKIN, "SKIN", 300.0, 41.0, 0.70,
           "UNVERIFIED: 3 T phantom value 300/41 (FACTS.md s2); PD assumed"),
)

BY_VALUE: dict[int, Tissue] = {t.value: t for t in TISSUES}
BY_NAME: dict[str, Tissue] = {t.name: t for t in TISSUES}
#: number of label values including background 0 (lookup tables are indexed by label value)
N_LABELS = max(BY_VALUE) + 1

#: structures written to labels.json (union of label values)
STRUCTURES: dict[str, tuple[int, ...]] = {
    "BODY": tuple(sorted(BY_VALUE)),
    "BONE": (BONE_CORTEX, BONE_MARROW),
    "BOWEL": (BOWEL_WALL, BOWEL_CONTENT, GAS),
    "GAS": (GAS,),
    "KIDNEY_L": (KIDNEY_L,),
    "KIDNEY_R": (KIDNEY_R,),
    "GTV": (TUMOUR, NECROSIS),
    "NECROSIS": (NECROSIS,),
    "EDEMA": (EDEMA,),
}

#: ROIs of the ground-truth RTSTRUCT, in this order (HYPOXIA comes from hypoxia.nii.gz)
RTSTRUCT_ROIS: tuple[str, ...] = (
    "GTV", "BOWEL", "KIDNEY_L", "KIDNEY_R", "BODY", "BONE", "GAS", "NECROSIS", "HYPOXIA", "EDEMA",
)

LABEL_SPEC = LabelSpec(values={t.value: t.name for t in TISSUES}, structures=dict(STRUCTURES))


def tissue_table_markdown() -> str:
    """The tissue table (value, name, T1, T2, PD, source) as a Markdown table for the docs."""
    rows = ["| value | class | T1 (ms) | T2 (ms) | PD | source |", "|---|---|---|---|---|---|"]
    for t in TISSUES:
        rows.append(f"| {t.value} | {t.name} | {t.t1_ms:g} | {t.t2_ms:g} | {t.pd:g} | {t.source} |")
    return "\n".join(rows)
