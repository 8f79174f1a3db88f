"""Atomic file writes: nothing half-written is ever seen under the final name.

Every writer of the project that does not need ``fsync`` (DICOM instances do:
:func:`sarcart.io.dicom_write.save_dataset`, the service's storage SCP) goes through :func:`atomic_write`.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object], *,
                 suffix: str | None = None) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    The parent folder is created. A failing ``write`` leaves ``path`` as it was and no temporary file
    behind. The temporary name ends in ``suffix`` (default: the suffix of ``path``) so writers that pick the
    format from the extension (SimpleITK, pandas, torch) see the right one; it is created by ``write``
    itself, so the file gets the usual permissions (umask).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".tmp-{uuid.uuid4().hex[:12]}{p.suffix if suffix is None else suffix}")
    try:
        write(tmp)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text file."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
