"""Configuration of the per-fraction service (`sarcart serve`): one pydantic model, YAML or flags.

See ``configs/service.example.yaml`` for a documented example. Flags of ``sarcart serve`` override
the file, so the service can also be started without one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sarcart.config import load_model
from sarcart.errors import ConfigError

_AET = re.compile(r"^[ -~]{1,16}$")
_DEST = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d{1,5})$")


def _check_aet(value: str, what: str) -> str:
    if not _AET.fullmatch(value) or "\\" in value or not value.strip():
        raise ValueError(f"{what} must be 1-16 printable ASCII characters without backslash, got {value!r}")
    return value.strip()


class Destination(BaseModel):
    """A DICOM node results are sent to (C-STORE)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)

    @field_validator("ae_title")
    @classmethod
    def _aet(cls, v: str) -> str:
        return _check_aet(v, "destination ae_title")

    @classmethod
    def parse(cls, text: str) -> "Destination":
        """Parse ``AET@HOST:PORT``."""
        m = _DEST.fullmatch(text.strip())
        if not m:
            raise ConfigError(f"destination must look like AET@HOST:PORT (e.g. PACS@127.0.0.1:4242), got {text!r}")
        return cls(ae_title=m["aet"], host=m["host"], port=int(m["port"]))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class ServiceConfig(BaseModel):
    """Everything `sarcart serve` needs. Unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    ae_title: str = Field(default="SARCART", description="our AE title (called AE of the SCP)")
    port: int = Field(default=11112, ge=1, le=65535, description="DICOM port of the storage SCP")
    http_host: str = Field(default="127.0.0.1", description="address the HTTP API binds to")
    http_port: int = Field(default=8080, ge=1, le=65535)
    storage: Path = Field(default=Path("sarcart-service"), description="folder for instances, results and the queue")
    destinations: list[Destination] = Field(default_factory=list, description="where results are sent")
    allowed_aets: list[str] = Field(default_factory=list, description="calling AE titles allowed to send")
    token: str = Field(default="", description="bearer token of the HTTP API (/health is open)")
    series_idle_s: float = Field(default=5.0, gt=0, le=3600, description="a series is complete after this idle time")
    model: str = Field(default="trufi", description="segmentation model: shipped name, path or models:/ URI")
    tta: bool = Field(default=False, description="test-time augmentation (slower, gives a confidence score)")
    subvoxel: bool | None = Field(default=None, description="average over the plan grid's half-voxel phases "
                                  "(4 passes for trufi); null = what the model's bundle recommends")
    device: str = Field(default="cpu", description="torch device for inference")
    send_attempts: int = Field(default=5, ge=1, le=100, description="C-STORE attempts before a dead letter")
    send_backoff_s: float = Field(default=2.0, ge=0, le=600, description="first retry delay, doubled each time")
    workers: int = Field(default=1, ge=1, le=8, description="jobs processed in parallel")
    courses: Path | None = Field(default=None, description="folder of patient courses: a series whose PatientID has "
                                 "a set-up course there runs the whole adaptive pipeline (RTSTRUCT+RTPLAN+RTDOSE)")
    adapt_config: Path | None = Field(default=None, description="adapt configuration YAML for those series "
                                      "(default: configs/adapt/default.yaml values)")

    @field_validator("ae_title")
    @classmethod
    def _our_aet(cls, v: str) -> str:
        return _check_aet(v, "ae_title")

    @field_validator("allowed_aets")
    @classmethod
    def _allowed(cls, v: list[str]) -> list[str]:
        return [_check_aet(a, "allowed_aets entry") for a in v]

    @field_validator("destinations", mode="before")
    @classmethod
    def _dests(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [Destination.parse(d) if isinstance(d, str) else d for d in v]
        return v

    @model_validator(mode="after")
    def _usable(self) -> "ServiceConfig":
        if not self.allowed_aets:
            raise ValueError("allowed_aets is empty, so every sender would be refused: pass --allow-aet AET "
                             "(repeatable) or list them in the config file")
        if len(self.token) < 8:
            raise ValueError("token must be at least 8 characters (the HTTP API is protected by it): pass --token")
        return self


def load_service_config(path: str | Path | None = None, **overrides: Any) -> ServiceConfig:
    """Read a YAML config (optional) and apply flag overrides (``None`` and empty lists are ignored)."""
    overrides = {k: v for k, v in overrides.items() if v != []}
    return load_model(ServiceConfig, path, what="service configuration", hint="see configs/service.example.yaml",
                      **overrides)
