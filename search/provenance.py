"""Which trainer made a result: run.json's "trainer" (and "trainer_changes"), the retrain
journal's header lines and retrain.parquet's metadata record `evaluators.trainer.trainer_fingerprint()`.

A run or retrain recorded by one trainer is not continued by another silently: `evonorm resume`
and `evonorm retrain` refuse (a `TrainerChangeError`, one line, exit 2) when the recorded
version differs from `TRAINER_VERSION`, and so when none is recorded (a result from before
versioning). `--allow-trainer-change` (`allow_trainer_change=True`) goes on and records both:
run.json gains {"from_id", "trainer"} in "trainer_changes" (the records from that id on are
the new trainer's), the retrain journal a second header line, and retrain.parquet a
`trainer_version` per row.
"""
from __future__ import annotations

from search.errors import TrainerChangeError

FLAG = "--allow-trainer-change"


def fingerprint() -> dict:
    """The running trainer's fingerprint (evaluators.trainer.trainer_fingerprint)."""
    from evaluators.trainer import trainer_fingerprint

    return trainer_fingerprint()


def running_version() -> int:
    from evaluators.trainer import TRAINER_VERSION

    return TRAINER_VERSION


def version_of(trainer) -> int | None:
    """The version in a recorded fingerprint (None: none recorded, before versioning)."""
    if isinstance(trainer, dict) and isinstance(trainer.get("version"), int):
        return trainer["version"]
    return None


def run_trainer_version(info: dict) -> int | None:
    """The version of the trainer a run's last records were made by: its last recorded
    change's, else run.json's "trainer" (None for a run from before versioning)."""
    changes = info.get("trainer_changes") if isinstance(info.get("trainer_changes"), list) else []
    if changes and isinstance(changes[-1], dict):
        return version_of(changes[-1].get("trainer"))
    return version_of(info.get("trainer"))


def describe(version: int | None) -> str:
    return "a trainer from before versioning" if version is None else f"trainer {version}"


def check(recorded: int | None, where, allow: bool, command: str) -> bool:
    """Whether `recorded` (the version `where` was made by) differs from the running trainer;
    a TrainerChangeError when it does and `allow` is false. `command` is what the message
    tells a person to run again with the flag."""
    running = running_version()
    if recorded == running:
        return False
    if allow:
        return True
    raise TrainerChangeError(f"{where} was made by {describe(recorded)} and this is trainer {running}: "
                             f"their numbers would mix; {command} with {FLAG} to go on and record the change")
