"""One exception hierarchy for sarcart.

Every message names the argument or input, the rule it broke, the value seen and a fix, e.g.
``spacing_mm must be positive, got (0.0, 1.5, 3.0); pass the voxel size in millimetres``.
"""

from __future__ import annotations


class SarcartError(Exception):
    """Base class of every error sarcart raises on purpose."""


class ConfigError(SarcartError, ValueError):
    """A configuration value or file is invalid (unknown key, wrong type, out of range)."""


class GeometryMismatchError(SarcartError, ValueError):
    """Two volumes, a mask and an image, or a contour and a grid do not share the required geometry."""


class InvalidDicomError(SarcartError, ValueError):
    """A DICOM file or series cannot be used (unreadable, wrong object type, missing slices...)."""


class InvalidImageError(SarcartError, ValueError):
    """An image or mask array is unusable (wrong shape, dtype, empty mask, non-finite values)."""


class CourseLayoutError(SarcartError, ValueError):
    """A patient folder does not follow the course layout (see docs/course.md)."""
