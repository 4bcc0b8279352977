"""Small helpers every layer needs: one-line error text, atomic file writes, missing values.

They live in `primitives`, the bottom layer, so that `evaluators` and `search` share one
version of each without importing upwards. Nothing here knows about layers.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .errors import UnwritableError


def one_line(err: BaseException, limit: int | None = 300, kind: bool = True) -> str:
    """An exception as one line: its message with white space folded (a multi-line
    message joins up rather than losing its tail), after its type name when `kind`,
    cut to `limit` characters with "...". An empty message gives the type name."""
    text = " ".join(str(err).split())
    if not text:
        text = type(err).__name__
    elif kind:
        text = f"{type(err).__name__}: {text}"
    return text if limit is None or len(text) <= limit else text[:limit - 3] + "..."


def write_atomic(path, content) -> None:
    """Write `content` (bytes, str, or a function that writes to a binary file object) to
    `path` through a hidden temporary file next to it, flushed to disk and renamed over
    it, so a reader, a crash or a full disk sees the old file or the new one, never half
    of one. On any failure nothing at `path` changes and the temporary file is gone; an
    OSError (a missing or read-only directory, a full disk) becomes an `UnwritableError`
    naming the path, any other exception goes on unchanged. Every output of the package is
    written through here."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(err, OSError) and not isinstance(err, UnwritableError):
            raise UnwritableError(f"cannot write {path}: {err.strerror or type(err).__name__}") from err
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (best effort: some file systems refuse a directory fsync)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def finite_or_none(value) -> float | None:
    """A record cell as a finite float, or None (missing, not a number, NaN or infinite)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def json_cell(value):
    """A json column's cell as its value: parsed from a string, as it is when already parsed,
    None when missing or unreadable."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def is_missing(value) -> bool:
    """True for an empty cell of a record: None, a NaN of any float type, pandas' NA or
    NaT. Strings, lists and other containers are never missing."""
    if value is None:
        return True
    import pandas as pd

    return bool(pd.api.types.is_scalar(value) and not isinstance(value, str) and pd.isna(value))


def source_commit() -> str | None:
    """The git commit this package runs from, with "-dirty" when its tracked files have
    changes; None outside a git checkout (an installed wheel) or without git. A result
    records it so that it can be tied to the code that made it."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
