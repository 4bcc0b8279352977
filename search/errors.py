"""The errors a user can cause, in one module that the library and the CLI both import.

Each is an `EvonormError` (defined in `primitives.errors`, the bottom layer, which the
evaluators' errors derive from too): bad input a person can fix (a flag, a config value, a run
directory, an output path, a cluster address). A Python caller catches them like any
exception; the CLI prints the message as one line on stderr and exits with status 2.
This module imports nothing from the package but the base, so the session, the config, the run
store and the commands can all raise these without importing the CLI (Optuna keeps
its errors apart the same way, in optuna/exceptions.py).
"""
from __future__ import annotations

from primitives.errors import EvonormError, UnwritableError  # noqa: F401  (defined at the bottom layer)


class UsageError(EvonormError):
    """Bad command-line input (a flag value, a formula on the command line)."""


class ConfigError(EvonormError, ValueError):
    """A bad search setting (flag, TOML key, seed formula, evaluation setting)."""


class RunDirError(EvonormError, ValueError):
    """A missing, unreadable or corrupt run directory; the message names the file."""


class ClusterError(EvonormError):
    """The Ray cluster asked for cannot be reached or cannot host the workers."""


class TrainerChangeError(EvonormError):
    """A result recorded by another trainer (evaluators.trainer.TRAINER_VERSION) than the one
    running: going on would mix two trainers' numbers unless the change is allowed and recorded."""
