"""What every dataset shares: its error type and the download cache."""
from __future__ import annotations

import os
from pathlib import Path

from primitives.errors import EvonormError


class DatasetError(EvonormError, ValueError):
    """Bad dataset name, or data files that are missing, truncated or corrupt."""


def cache_dir() -> Path:
    return Path(os.environ.get("EVONORM_CACHE") or Path.home() / ".cache" / "evonorm")
