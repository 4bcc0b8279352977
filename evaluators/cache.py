"""The cross-run training cache: a proxy training is paid for once, on this machine.

Every finished proxy training (search, resume, `evonorm eval`, `evonorm retrain`) can land
here as one small JSON file, and a later training with the same key is read back instead
of run. The key is everything that decides the training's numbers:

- the layer (its canonical graph hash), the proxy, the data it trains on (the image
  dataset's name, or the text of the text proxies) and the split it is scored on;
- the step it stopped at (a rung's training is its own entry) and the whole `TrainConfig`
  (the full budget's steps, whose schedule a rung follows, batch size, rate, seed,
  optimiser, warm-up, clipping, compile, mixed precision ...);
- the device kind (`cpu`, or `cuda:` and the GPU's name), the trainer's `TRAINER_VERSION`
  (bumped whenever its numbers move) and torch's version.

The thread count is not in the key: on CPU it moves a result in its last bits only.

Where: `$EVONORM_CACHE/trainings`, else `$XDG_CACHE_HOME/evonorm/trainings`, else
`~/.cache/evonorm/trainings` (`EVONORM_CACHE=off` turns it off everywhere); one file per training, `<first two hex digits>/<sha256 of the
key>.json`, holding the key and the result. A file is written under a temporary name and
renamed into place, so Ray workers on one machine share the folder safely (two that train
the same thing write the same content; the last rename wins). A file that does not read
or whose key differs is a miss. A cached result carries no training state: a later rung of
the same candidate that misses trains from the start, which costs what continuing would
have (the earlier rung came free). `--no-cache` (EvalConfig.cache False) neither reads nor
writes it. Deleting the folder is always safe.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

from .datasets.base import OFF, cache_dir as evonorm_cache_dir

FORMAT = 1     # the layout of a cache file; part of the key


def enabled() -> bool:
    """False when `EVONORM_CACHE` says off (off, 0, no, false or none): every command then
    trains afresh, as with its --no-cache."""
    return os.environ.get("EVONORM_CACHE", "").strip().lower() not in OFF


def cache_dir() -> Path:
    """The folder of cached trainings: `trainings/` in evonorm's cache folder (the module's
    docstring), where the downloaded datasets also live."""
    return evonorm_cache_dir() / "trainings"


def device_kind(device) -> str:
    """`cpu`, or `cuda:<GPU name>`: trainings on different kinds of device are different entries."""
    import torch
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


def data_name(arch: str, dataset: str) -> str:
    """What proxy `arch` trains on, as a key says it: the image dataset's name (`dataset`),
    or the text proxies' `text`."""
    from .proxies import data_of
    data = data_of(arch)
    return dataset if data == "images" else data


def training_key(*, graph_hash: str, arch: str, data: str, split: str, stop_at: int, config,
                 device) -> dict:
    """The key of one proxy training: `config` is its TrainConfig (or a dict of one)."""
    import torch

    from .trainer import TRAINER_VERSION
    settings = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}
    return {"format": FORMAT, "graph_hash": graph_hash, "arch": arch, "data": data, "split": split,
            "stop_at": int(min(stop_at, settings.get("steps", stop_at))), "config": settings,
            "device": device_kind(device), "trainer_version": TRAINER_VERSION,
            "torch": torch.__version__}


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


class TrainingCache:
    """get(key) -> the stored result dict or None; put(key, result)."""

    def __init__(self, root=None):
        self.root = Path(root) if root is not None else cache_dir()

    def path(self, key: dict) -> Path:
        digest = _digest(key)
        return self.root / digest[:2] / f"{digest}.json"

    def get(self, key: dict) -> dict | None:
        try:
            entry = json.loads(self.path(key).read_text("utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("key") != json.loads(json.dumps(key, default=str)):
            return None
        result = entry.get("result")
        return result if isinstance(result, dict) else None

    def put(self, key: dict, result: dict) -> None:
        """Store a finished training; a cache that cannot be written is skipped, silently
        (it saves time, it never costs a run)."""
        path = self.path(key)
        text = json.dumps({"key": key, "result": result}, sort_keys=True, default=str)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(text)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError:
            pass


def through_cache(cache: "TrainingCache | None", key: dict | None, train):
    """`train()`'s TrainResult, or the one `cache` holds under `key` (marked `cached`, with
    `seconds` 0 and `cached_seconds` what the training took); a fresh result that depends on
    its key alone is stored. No cache (None): `train()` as it is."""
    if cache is None or key is None:
        return train()
    entry = cache.get(key)
    if entry is not None:
        return from_entry(entry)
    result = train()
    if cacheable(result):
        cache.put(key, to_entry(result))
    return result


def cacheable(result) -> bool:
    """A training's result depends on its key alone: a score, or a layer's own failure
    (non-finite loss or output). Not an exception, a lack of memory or a refusal."""
    from .trainer import TrainResult
    if not isinstance(result, TrainResult):
        return False
    reason = result.reason
    return reason is None and result.accuracy is not None or (
        reason is not None and reason.startswith("non-finite"))


def to_entry(result) -> dict:
    return {"accuracy": result.accuracy, "final_loss": result.final_loss, "steps_done": result.steps_done,
            "seconds": result.seconds, "reason": result.reason, "note": result.note,
            "losses": [float(v) for v in result.losses]}


def from_entry(entry: dict):
    """A TrainResult from a cache entry: its scores and losses, no state; `seconds` is 0 (the
    lookup's time is the record's), `cached_seconds` what the training took when it ran."""
    from .trainer import TrainResult
    result = TrainResult(accuracy=entry.get("accuracy"), final_loss=entry.get("final_loss"),
                         steps_done=int(entry.get("steps_done") or 0), seconds=0.0,
                         compile_seconds=0.0, images_per_second=0.0, reason=entry.get("reason"),
                         note=entry.get("note"), losses=list(entry.get("losses") or []))
    result.cached = True
    result.cached_seconds = float(entry.get("seconds") or 0.0)
    return result
