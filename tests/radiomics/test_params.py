"""Parameter sets: packaged default, base/override merging, validation, settings hash."""

from __future__ import annotations

import pytest

from sarcart.errors import ConfigError
from sarcart.radiomics.params import load_params


def test_default_is_the_documented_mr_configuration() -> None:
    p = load_params()
    s = p.settings
    assert p.source == "mr_default"
    assert s["resampledPixelSpacing"] == [1.5, 1.5, 1.5] and s["normalize"] is True
    assert s["binCount"] == 32 and "binWidth" not in s
    assert s["resegmentRange"] == [-3, 3] and s["resegmentMode"] == "sigma"
    assert set(p.feature_classes) == {"shape", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm"}
    assert p.voxel_settings["kernelRadius"] == 1


def test_override_merges_settings_and_switches_discretisation(tmp_path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("base: mr_default\nsetting:\n  binWidth: 0.5\n  resampledPixelSpacing: null\n")
    p = load_params(f)
    assert p.settings["binWidth"] == 0.5
    assert "binCount" not in p.settings  # a fixed bin width replaces the base's bin count
    assert "resampledPixelSpacing" not in p.settings  # null removes a key
    assert p.settings["normalize"] is True  # untouched keys come from the base
    assert p.settings_hash != load_params().settings_hash


def test_plain_pyradiomics_file_is_taken_as_is(tmp_path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("setting:\n  binWidth: 25\nimageType:\n  Original: {}\n")
    p = load_params(f)
    assert p.settings == {"binWidth": 25}


def test_hash_is_stable_and_yaml_round_trips(tmp_path) -> None:
    p = load_params(overrides={"setting": {"binCount": 16}})
    f = tmp_path / "resolved.yaml"
    f.write_text(p.to_yaml())
    assert load_params(f).settings_hash == p.settings_hash
    assert load_params(overrides={"setting": {"binCount": 16}}).settings_hash == p.settings_hash


@pytest.mark.parametrize("bad", [
    {"setting": {"binWidht": 3}},
    {"setting": {"binCount": -2}},
    {"featureClass": {"glcmm": None}},
    {"settings": {}},
    {"voxelSetting": {"kernelRadius": 0}},
])
def test_invalid_sets_are_rejected(bad: dict) -> None:
    with pytest.raises(ConfigError):
        load_params(bad)


def test_missing_file_and_bad_base(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="base"):
        load_params({"base": "ct_default"})
