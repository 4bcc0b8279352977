"""Writing the commands' outputs: atomically, and with one clear error where that cannot be done.

Every file goes to a hidden temporary name next to its target, is flushed to disk and
renamed over the target, so a reader, a crash or a full disk leaves the old file or
the new one, never half of one. A place that cannot be written (a missing or read-only
directory, /proc, a directory where a file should go) is an `UnwritableError`: one
line, which the CLI reports with exit status 2. The commands check their outputs
before they start work, so hours of training never end in a failed write.
"""
from __future__ import annotations

import uuid
from pathlib import Path

from primitives.errors import UnwritableError
from primitives.util import write_atomic  # noqa: F401  (the one atomic writer, part of this module's face)


def _why(err: OSError) -> str:
    return err.strerror or type(err).__name__


def check_writable_file(path) -> None:
    """Raise `UnwritableError` unless a file can be written at `path`: its directory exists
    and takes a new file, and `path` is not a directory. Leaves nothing behind."""
    path = Path(path)
    if path.is_dir():
        raise UnwritableError(f"cannot write {path}: it is a directory")
    directory = path.parent
    if not directory.is_dir():
        why = "not a directory" if directory.exists() else "no such directory"
        raise UnwritableError(f"cannot write {path}: {why}: {directory}")
    _probe(directory, path)


def check_writable_dir(path) -> None:
    """Raise `UnwritableError` unless files can be created in directory `path`, which is
    made (parents included) when missing. Directories made for the check are removed."""
    path = Path(path)
    made = []
    for parent in reversed([path, *path.parents]):
        if parent.is_dir():
            continue
        try:
            parent.mkdir()
        except OSError as err:
            _remove(made)
            why = "not a directory" if parent.exists() else _why(err)
            raise UnwritableError(f"cannot create {path}: " + (why if parent == path else f"{parent}: {why}")) from None
        made.append(parent)
    try:
        _probe(path, path)
    finally:
        _remove(made)


def _probe(directory: Path, target: Path) -> None:
    probe = directory / f".evonorm-probe-{uuid.uuid4().hex}"
    try:
        probe.open("xb").close()
        probe.unlink()
    except OSError as err:
        where = f"in {directory}" if target == directory else str(target)
        raise UnwritableError(f"cannot write {where}: {_why(err)}") from None


def _remove(made: list[Path]) -> None:
    for directory in reversed(made):
        try:
            directory.rmdir()
        except OSError:
            pass
