"""The exception family: every failure a user can fix is a ``CytoprofileError``.

The CLI turns these into a one-line message and exit status 1; anything else is a
bug, reported with exit status 3 and a traceback in the log. Argument and input
errors are also ``ValueError``s, so scripts that catch ``ValueError`` around the
Python API (as they would for pycytominer) keep working.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "AccountingError",
    "CytoprofileError",
    "InputError",
    "ConfigError",
    "MetadataError",
    "OutputError",
    "QuarantineError",
    "RemoteError",
    "about",
]


class CytoprofileError(Exception):
    """Base class of every error a user can act on."""


class InputError(CytoprofileError, ValueError):
    """An input file or folder is missing, unreadable or malformed."""


class ConfigError(CytoprofileError, ValueError):
    """A config file or option is wrong (the message names the key's path)."""


class MetadataError(InputError):
    """A plate map, barcode map or external metadata file fails validation."""


class QuarantineError(CytoprofileError):
    """A plate had quarantined sites and ``strict`` was asked for."""


class RemoteError(CytoprofileError):
    """Object storage (S3 or another fsspec URL) could not be reached or written."""


class OutputError(CytoprofileError):
    """An output folder cannot be written (disk full, read-only, no permission)."""


class AccountingError(CytoprofileError):
    """Rows read and rows written disagree: the plate lost data, so it fails and nothing is published."""


@contextmanager
def about(path: str) -> Iterator[None]:
    """Name the input file ``path`` in a user error that does not already."""
    try:
        yield
    except CytoprofileError as exc:
        if os.path.basename(str(path)) in str(exc):
            raise
        raise type(exc)(f"{path}: {exc}") from exc
