"""Density from MR structures / intensity / CT, and the painted prescription map."""

from __future__ import annotations

import numpy as np
import pytest
from phantoms import abdomen

from sarcart.dose.density import (
    DensityTable,
    density_from_ct,
    density_from_structures,
    gas_mask_from_intensity,
)
from sarcart.dose.plan import grow_mask, painting_from_spec, prepare_structures
from sarcart.dose.prescription import PaintingSpec, PlanPrescription
from sarcart.io.geometry import Geometry, Volume


def test_bulk_density_and_gas_from_low_signal():
    g = Geometry((30, 30, 10), (2.0, 2.0, 2.0))
    body = np.zeros(g.shape, bool)
    body[3:27, 3:27, :] = True
    img = np.where(body, 200.0, 0.0)
    img[10:14, 10:14, 3:7] = 4.0  # a dark 4x4x4 pocket: 0.512 cc of gas
    img[18:22, 18:22, 3:7] = 6.0  # dark too, but it is bone
    bone = np.zeros(g.shape, bool)
    bone[18:22, 18:22, 3:7] = True
    masks = {"BODY": Volume(body, g), "BONE": Volume(bone, g)}
    gas = gas_mask_from_intensity(Volume(img, g), masks["BODY"], exclude=masks["BONE"])
    assert gas.array.sum() == 64 and gas.array[10:14, 10:14, 3:7].all()
    red = density_from_structures(masks, image=Volume(img, g)).array
    assert red[0, 0, 0] == 0.0 and red[5, 5, 5] == 1.0 and red[19, 19, 4] == 1.5
    assert red[11, 11, 4] == pytest.approx(0.001)
    custom = density_from_structures(masks, table=DensityTable(values={"BODY": 1.04, "BONE": 1.8}))
    assert custom.array[5, 5, 5] == pytest.approx(1.04) and custom.array[19, 19, 4] == pytest.approx(1.8)


def test_ct_calibration_curve():
    g = Geometry((4, 1, 1), (1.0, 1.0, 1.0))
    ct = Volume(np.array([-1000.0, -500.0, 0.0, 1000.0]).reshape(4, 1, 1), g)
    assert np.allclose(density_from_ct(ct).array.ravel(), [0.0, 0.5, 1.0, 1.55])


def test_ptv_margin_and_painting_ramp():
    _image, masks = abdomen(6.0)
    p = PlanPrescription(name="t", dose_gy=48.0, fractions=6, ptv_margin_mm=6.0,
                         painting=PaintingSpec(boost_structure="HYPOXIA", boost_gy=60.0, grow_mm=0.0, ramp_mm=12.0))
    g = masks["GTV"].geometry
    hyp = np.zeros(g.shape, bool)
    c = tuple(np.argwhere(masks["GTV"].array).mean(axis=0).round().astype(int))
    hyp[c] = True
    masks["HYPOXIA"] = Volume(hyp, g)
    m = prepare_structures(masks, p)
    # PTV = GTV grown by one voxel (6 mm): a GTV voxel's face neighbours are all inside
    assert m["PTV"].array.sum() > m["GTV"].array.sum() and (m["PTV"].array >= m["GTV"].array).all()
    assert grow_mask(masks["GTV"], 0.0) is masks["GTV"]
    pmap = painting_from_spec(m, p).array
    assert pmap[c] == pytest.approx(60.0)
    one = (c[0] + 1, c[1], c[2])  # 6 mm away: half-way down the 12 mm ramp
    assert pmap[one] == pytest.approx(54.0)
    far = (c[0] + 3, c[1], c[2])  # 18 mm away, still in the PTV: base dose
    assert m["PTV"].array[far] and pmap[far] == pytest.approx(48.0)
    assert (pmap[~m["PTV"].array] == 0).all()
