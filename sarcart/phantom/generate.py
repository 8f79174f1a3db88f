"""Generate a synthetic patient in memory: reference anatomy, then one image per fraction.

Public API::

    from sarcart.phantom import PhantomConfig, generate_patient
    fractions = generate_patient(PhantomConfig(spacing_mm=(4, 4, 6)), site="retroperitoneum", seed=1,
                                 fractions=2)
    fractions[1].image, fractions[1].labels, fractions[1].deformation, fractions[1].truth
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sarcart.io.geometry import Volume
from sarcart.phantom import bowel
from sarcart.phantom import tissues as T
from sarcart.phantom.anatomy import Anatomy, State, structure_volumes_cc, unpack
from sarcart.phantom.config import CohortSpec, PhantomConfig, make_spec
from sarcart.phantom.fields import Grid, rng_for
from sarcart.phantom.motion import displacement_field, pull
from sarcart.phantom.patients import PatientParams, sample_patient
from sarcart.phantom.render import render


@dataclass
class FractionData:
    """One fraction in memory.

    Attributes:
        index: 0 = reference (fx00), 1..F daily.
        image: uint16 counts on the image grid. labels: uint8 exclusive classes.
        hypoxia: bool HYPOXIA ground truth.
        deformation: coarse displacement field ``(mx, my, mz, 3)`` float32 mm (LPS) to fx00, or None
            for fx00. See :mod:`sarcart.phantom.motion`.
        truth: generation parameters and measured figures (written as ``truth.json``).
    """

    index: int
    image: Volume
    labels: Volume
    hypoxia: Volume
    deformation: Volume | None
    truth: dict[str, Any] = field(default_factory=dict)


def build_anatomy(config: PhantomConfig, patient: PatientParams, *, real_root: str | os.PathLike[str] | None = None
                  ) -> Anatomy:
    """The reference anatomy of ``patient`` (synthetic site, or real T1 anatomy from ``real_root``)."""
    if real_root is not None and patient.real_case:
        from sarcart.phantom.real import build_from_real

        return build_from_real(config, patient, Path(real_root) / patient.real_case)
    if patient.site == "retroperitoneum":
        from sarcart.phantom.retroperitoneum import build_retroperitoneum

        return build_retroperitoneum(config, patient)
    from sarcart.phantom.limbs import build_limb

    return build_limb(config, patient)


def _regenerate_gas(anatomy: Anatomy, st: State, *, seed: int, index: int) -> None:
    """New gas pockets for this fraction inside the (warped) bowel lumen."""
    lumen = st.kind > 0
    if index == 0 or not lumen.any():
        return
    idx = [np.flatnonzero(lumen.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    sl = tuple(slice(int(i[0]), int(i[-1]) + 1) for i in idx)
    grid = Grid(anatomy.image_geometry)
    x, y, z = (grid.axis(a)[sl[a]] for a in range(3))
    fill = bowel.gas_fill(st.kind[sl], rng_for(seed, "gas", index),
                          axes=(x[:, None, None], y[None, :, None], z[None, None, :]))
    bowel.fill_gas(st.labels[sl], st.level[sl], kind=st.kind[sl], fill=fill)


def make_fraction(anatomy: Anatomy, config: PhantomConfig, patient: PatientParams, *, index: int,
                  state: np.ndarray | None = None) -> FractionData:
    """Fraction ``index`` of ``patient``: warp the reference, regenerate gas, render.

    Args:
        state: ``anatomy.packed()`` when already computed (saves time over many fractions).
    """
    packed = anatomy.packed() if state is None else state
    field_vol, mp = displacement_field(anatomy, config, seed=patient.seed, index=index)
    st = unpack(pull(anatomy, packed, field_vol if index > 0 else None))
    if config.regenerate_gas:
        _regenerate_gas(anatomy, st, seed=patient.seed, index=index)
    geom = anatomy.image_geometry
    hyp = st.hypoxia & (st.labels == T.TUMOUR)
    rendered = render(st.labels, hyp, st.texture, geometry=geom, config=config,
                      rng=rng_for(patient.seed, "render", index))
    u = field_vol.array
    truth: dict[str, Any] = {
        "patient": patient.name, "site": patient.site, "fraction": index, "patient_seed": patient.seed,
        **mp.to_dict(),
        "max_displacement_mm": float(np.linalg.norm(u, axis=-1).max()) if u.size else 0.0,
        "volumes_cc": structure_volumes_cc(st.labels, hyp, geom.voxel_volume_cc),
        **rendered.truth,
        "deformation": {
            "file": "deformation_to_ref.nii.gz" if index > 0 else None,
            "grid_factors": list(config.deformation_factors),
            "convention": "x (this fraction, LPS mm) -> x + u(x) in fx00; u is defined everywhere by "
                          "trilinear interpolation of the stored coarse field (SimpleITK "
                          "DisplacementFieldTransform, linear interpolator, reproduces it)",
        },
        "gas_regenerated": bool(config.regenerate_gas and index > 0 and anatomy.bowel_kind is not None),
    }
    return FractionData(
        index=index,
        image=Volume(rendered.counts, geom),
        labels=Volume(st.labels, geom),
        hypoxia=Volume(hyp, geom),
        deformation=field_vol if index > 0 else None,
        truth=truth,
    )


def patient_for(config: PhantomConfig, *, site: str, seed: int, fractions: int = 6, index: int = 0,
                genomic_link: float = 0.6) -> tuple[CohortSpec, PatientParams]:
    """The cohort spec and patient parameters behind :func:`generate_patient`."""
    spec = make_spec(**config.model_dump(), site=site, seed=seed, fractions=fractions,
                     patients=index + 1, genomic_link=genomic_link)
    return spec, sample_patient(spec, index)


def generate_patient(config: PhantomConfig, *, site: str, seed: int, fractions: int = 6, index: int = 0
                     ) -> list[FractionData]:
    """Generate fx00..fxF of one synthetic patient in memory (deterministic for (config, site, seed, index)).

    Args:
        config: phantom settings (grid, contrast, noise, motion).
        site: ``retroperitoneum``, ``upper_extremity`` or ``lower_extremity``.
        seed: cohort seed. fractions: number of daily fractions F. index: patient index in the cohort.

    Returns:
        ``F + 1`` :class:`FractionData`, fx00 first.
    """
    spec, patient = patient_for(config, site=site, seed=seed, fractions=fractions, index=index)
    anatomy = build_anatomy(spec.phantom(), patient)
    packed = anatomy.packed()
    return [make_fraction(anatomy, spec.phantom(), patient, index=i, state=packed) for i in range(fractions + 1)]
