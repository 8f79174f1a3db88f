"""Leaf sequencing: exact decomposition, the double-stack rule, and dose from segments."""

from __future__ import annotations

import numpy as np
import pytest

from sarcart.dose.engine import BixelGrid
from sarcart.dose.machine import MachineConfig
from sarcart.dose.sequencing import double_stack, sequence_beam, sweep_intervals


@pytest.mark.parametrize("profile", [[0, 3, 1, 4, 0, 2], [5, 5, 5], [1, 0, 1, 0, 1], [0, 0, 0]])
def test_sweep_reproduces_the_profile_with_minimal_monitor_units(profile):
    iv = sweep_intervals(np.array(profile))
    total = np.zeros(len(profile), int)
    for a, b in iv:
        assert a < b
        total[a:b] += 1
    assert total.tolist() == list(profile)
    # Bortfeld's unidirectional sweep needs exactly the sum of the positive steps (the optimum for a row)
    assert len(iv) == int(np.clip(np.diff(np.concatenate([[0], profile])), 0, None).sum())


def test_double_stack_keeps_wanted_openings_and_opens_only_notches():
    left = np.array([-20.0, -20.0, -20.0, -20.0])
    right = np.array([20.0, 20.0, 20.0, 20.0])
    el, er, _up, _lo = double_stack(left, right, 0)
    assert np.allclose(el, left) and np.allclose(er, right)
    # row 2 narrower than both neighbours on the left: the layers cannot close it further than them
    left2 = np.array([-20.0, -20.0, -5.0, -20.0])
    el, er, _, _ = double_stack(left2, right, 0)
    assert el[2] == -20.0 and np.allclose(el[[0, 1, 3]], -20.0)
    # a notch on one side only is deliverable (row 1 shares its upper leaf with row 0, lower with row 2)
    left3 = np.array([-5.0, -5.0, -20.0, -20.0])
    el, _, _, _ = double_stack(left3, right, 0)
    assert np.allclose(el, left3)
    # a closed row between two open rows opens to their overlap
    el, er, _, _ = double_stack(np.array([-10.0, np.nan, -6.0]), np.array([10.0, np.nan, 4.0]), 1)
    assert (el[1], er[1]) == (-6.0, 4.0)


def test_segments_sum_to_the_quantised_fluence():
    grid = BixelGrid(tuple(np.arange(0.0, 40.1, 5.0)), tuple(np.arange(0.0, 41.6, 8.3)))
    machine = MachineConfig(double_stacked=False, leaf_width_mm=8.3, min_segment_area_cm2=0.0)
    rng = np.random.default_rng(0)
    fluence = rng.uniform(0, 10, size=grid.shape)
    segs = sequence_beam(fluence, grid, machine, levels=5)
    uc = 0.5 * (np.asarray(grid.u_edges[1:]) + np.asarray(grid.u_edges[:-1]))
    total = np.zeros(grid.shape)
    for s in segs:
        total += s.mu * ((uc[None, :] > s.left_mm[:, None]) & (uc[None, :] < s.right_mm[:, None]))
    unit = fluence.max() / 5
    assert np.allclose(total, np.rint(fluence / unit) * unit)


def test_minimum_segment_area_is_respected():
    grid = BixelGrid(tuple(np.arange(0.0, 40.1, 4.0)), tuple(np.arange(0.0, 16.7, 4.15)))
    fluence = np.zeros(grid.shape)
    fluence[1, 3] = 10.0  # a single 4 x 4.15 mm beamlet: 0.17 cm2
    fluence[:, :] += 2.0
    machine = MachineConfig(min_segment_area_cm2=1.0)
    segs = sequence_beam(fluence, grid, machine, levels=5)
    assert segs and all(s.area_cm2(machine.row_width_mm) >= 1.0 for s in segs)
