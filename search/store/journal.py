"""A journal of finished trainings, so that hours of `evonorm retrain` survive a stop.

Every training lands as one JSON line, appended and flushed the moment it finishes;
a retrain stopped part-way (Ctrl-C, a crash, the end of a sitting) is resumed by
running the same command again: a training whose settings are already in the
journal is replayed from it, not repeated. Its lr study is seeded, so given the same
scores it proposes the same rates in the same order and replays too. The key is every
setting that decides a training's outcome, so a changed flag (more steps, another
batch size, another device) trains afresh.

Header lines ({"header": {"trainer": fingerprint, "from_entry": n}}) say which trainer
(evaluators.trainer.trainer_fingerprint) made the entries after them: `begin` writes one
when a journal starts and again when an allowed trainer change continues it (`evonorm retrain
--allow-trainer-change`), so a journal never mixes trainers silently; every entry read back
carries the `trainer_version` of the header before it (None: no header, before versioning).

Appends of one short line are atomic on a local file system, so worker processes share
one journal; a line torn by a crash is skipped when read. The command removes the
journal once its table is written: it guards work in progress, it is not a cache.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


def key(**settings) -> str:
    """The journal key of a training: its settings, as canonical JSON."""
    return json.dumps(settings, sort_keys=True, separators=(",", ":"))


class Journal:
    def __init__(self, path):
        self.path = Path(path)
        self.done: dict[str, dict] = {}
        self.headers: list[dict] = []       # {"trainer": fingerprint, "from_entry": entries before it}

    def load(self) -> "Journal":
        """Read what an earlier, stopped run left (nothing when there is no journal)."""
        if self.path.is_file():
            text = self.path.read_text(encoding="utf-8", errors="replace")
            if text and not text.endswith("\n"):   # a torn last line: end it, or the next append joins it
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write("\n")
            version = None
            for line in text.splitlines():
                try:
                    entry = json.loads(line)
                    if "header" in entry:
                        self.headers.append(dict(entry["header"]))
                        trainer = entry["header"].get("trainer")
                        version = trainer.get("version") if isinstance(trainer, dict) else None
                        continue
                    result = dict(entry["result"])
                    if "trainer_version" not in result and version is not None:
                        result["trainer_version"] = version
                    self.done[entry["key"]] = result
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue    # a line torn by a crash
        return self

    def trainer_version(self) -> int | None:
        """The version of the trainer the last header names (None: no header, before versioning)."""
        trainer = self.headers[-1].get("trainer") if self.headers else None
        return trainer.get("version") if isinstance(trainer, dict) else None

    def begin(self, trainer: dict) -> None:
        """Say that the entries from here on are `trainer`'s (its fingerprint): a header line,
        unless the last one names the same version already."""
        if self.headers and self.trainer_version() == trainer.get("version"):
            return
        header = {"trainer": trainer, "from_entry": len(self.done)}
        self.headers.append(header)
        self._append({"header": header})

    def get(self, k: str) -> dict | None:
        return self.done.get(k)

    def add(self, k: str, result: dict) -> None:
        """Append one finished training, on disk before this returns."""
        self.done[k] = result
        self._append({"key": k, "result": result})

    def _append(self, entry: dict) -> None:
        line = json.dumps(entry) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
