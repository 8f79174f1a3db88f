"""sarcart: MRI-guided online adaptive radiotherapy of soft-tissue sarcoma (0.35 T MR-linac).

Research software. Not for clinical use.
"""

from sarcart.errors import (
    ConfigError,
    GeometryMismatchError,
    InvalidDicomError,
    SarcartError,
)

__version__ = "0.1.0"
NOT_FOR_CLINICAL_USE = "sarcart research software - NOT FOR CLINICAL USE"

__all__ = [
    "ConfigError",
    "GeometryMismatchError",
    "InvalidDicomError",
    "NOT_FOR_CLINICAL_USE",
    "SarcartError",
    "__version__",
]
