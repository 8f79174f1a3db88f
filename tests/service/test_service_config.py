"""Service configuration: the shipped example, flag overrides and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from sarcart.errors import ConfigError
from sarcart.service.config import Destination, load_service_config

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "service.example.yaml"


def test_example_loads_and_flags_override() -> None:
    cfg = load_service_config(EXAMPLE)
    assert cfg.destinations == [Destination(ae_title="TPS", host="10.0.0.5", port=104)]
    cfg = load_service_config(EXAMPLE, port=4242, destinations=["PACS@127.0.0.1:11113"], allowed_aets=["CONSOLE"])
    assert (cfg.port, str(cfg.destinations[0]), cfg.allowed_aets) == (4242, "PACS@127.0.0.1:11113", ["CONSOLE"])


def test_without_a_file() -> None:
    cfg = load_service_config(None, allowed_aets=["A"], token="12345678", storage="/tmp/x")
    assert cfg.ae_title == "SARCART" and str(cfg.storage) == "/tmp/x"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(allowed_aets=["A"], token="short"), "token must be at least 8"),
        (dict(token="12345678"), "allowed_aets is empty"),
        (dict(allowed_aets=["A"], token="12345678", destinations=["nonsense"]), "AET@HOST:PORT"),
        (dict(allowed_aets=["WAY_TOO_LONG_AE_TITLE"], token="12345678"), "1-16 printable"),
        (dict(allowed_aets=["A"], token="12345678", port=70000), "port"),
    ],
)
def test_bad_settings(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_service_config(None, **overrides)


def test_unknown_key_in_file(tmp_path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("allowed_aets: [A]\ntoken: '12345678'\nmodle: trufi\n")
    with pytest.raises(ConfigError, match="modle"):
        load_service_config(f)
