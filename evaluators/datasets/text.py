"""Character-level text for the causal language-model proxy: English that ships with Python.

The corpus is the standard library's `pydoc_data.topics` (the help texts behind `help("assert")`,
about 465,000 characters in Python 3.11; nothing is downloaded, so the text, and the accuracies
scored on it, follow the Python version: `TextDataset.source` says which).

Preparation, all deterministic:

1. The topics in sorted order, each cut into paragraphs (at blank lines); a paragraph already
   seen (a few are repeated word for word between topics, e.g. ``if`` and ``else``) is dropped,
   so that no text is in two splits. The kept paragraphs are joined by blank lines into one text.
2. The text is cut into contiguous blocks of `BLOCK` characters; of every ten blocks, the
   ninth is validation and the tenth test, the rest training (80/10/10, spread over the whole
   corpus, each split a concatenation of its blocks in order). The splits are disjoint by
   construction: `TextDataset.positions(split)` gives every character's place in the text,
   and a test holds the windows of different splits apart.
3. The vocabulary is every character of the text, sorted (103 in Python 3.11): the classes.

A sample is a window of `context + 1` characters: the model reads the first `context` and is
scored on predicting each next one (inputs (N, T) int64, targets (N, T)). Training windows
start at a random offset each epoch and tile the training text without overlap, in a seeded
random order (`TextStream`, resumable like `BatchStream`); evaluation tiles the split from its
start, every character after the first scored exactly once.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Iterator

import torch

from evaluators.datasets.base import DatasetError, EpochStream

TEXT_DATASET = "pydoc-topics"
BLOCK = 2048          # characters per block of the 80/10/10 interleaved split
CONTEXT = 64          # characters a window reads


@dataclass
class TextDataset:
    """Token ids (int64) of each split's text, on `device`, and the vocabulary."""

    train_ids: torch.Tensor
    val_ids: torch.Tensor
    test_ids: torch.Tensor
    vocab: str
    context: int = CONTEXT
    device: torch.device = field(default=torch.device("cpu"))
    source: str = ""
    # each split's characters' places in the prepared text (CPU), for the disjointness check
    _positions: dict = field(default_factory=dict, repr=False)
    name: str = TEXT_DATASET

    @property
    def num_classes(self) -> int:
        return len(self.vocab)

    @property
    def in_channels(self) -> int:
        """The input alphabet: a token is a one-hot over the vocabulary."""
        return len(self.vocab)

    @property
    def image_size(self) -> int:
        """What a proxy's builder is given as its input size: the context length."""
        return self.context

    def ids(self, split: str) -> torch.Tensor:
        if split not in ("train", "val", "test"):
            raise DatasetError(f"unknown split {split!r} (expected train, val or test)")
        return getattr(self, f"{split}_ids")

    def positions(self, split: str) -> torch.Tensor:
        """Where each character of `split` sits in the prepared text."""
        self.ids(split)
        return self._positions[split]

    def windows(self, split: str, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of the windows of `split` that start at `starts`."""
        ids = self.ids(split)
        index = starts.to(ids.device)[:, None] + torch.arange(self.context + 1, device=ids.device)
        w = ids[index]
        return w[:, :-1], w[:, 1:]

    def eval_starts(self, split: str) -> torch.Tensor:
        """Windows tiling `split` from its start: each character after the first is a target once."""
        n = len(self.ids(split))
        return torch.arange(0, n - self.context, self.context)

    def split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """All evaluation windows of `split`: (inputs, targets), each (windows, context)."""
        return self.windows(split, self.eval_starts(split))

    def eval_batches(self, split: str = "val", batch_size: int = 1000) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The evaluation windows of `split` in order, `batch_size` windows at a time (a
        window holds `context` scored characters)."""
        starts = self.eval_starts(split)
        for i in range(0, len(starts), batch_size):
            yield self.windows(split, starts[i:i + batch_size])

    def train_batches(self, batch_size: int, generator: torch.Generator,
                      augment_from_epoch: int | None = None) -> "TextStream":
        """Endless training batches of `batch_size` windows (there is no augmentation: the
        argument is accepted for the trainer's sake and ignored)."""
        n = self.windows_per_epoch()
        if batch_size > n:
            raise DatasetError(f"batch size {batch_size} exceeds the {n} training windows")
        return TextStream(self, batch_size, generator)

    def windows_per_epoch(self) -> int:
        return (len(self.train_ids) - 1 - (self.context - 1)) // self.context

    def to(self, device) -> "TextDataset":
        device = torch.device(device)
        return TextDataset(self.train_ids.to(device), self.val_ids.to(device), self.test_ids.to(device),
                           self.vocab, self.context, device, self.source, self._positions)

    def __repr__(self) -> str:
        return (f"TextDataset({self.source!r}, train={len(self.train_ids)}, val={len(self.val_ids)}, "
                f"test={len(self.test_ids)} characters, vocabulary={len(self.vocab)}, "
                f"context={self.context}, device={self.device})")


class TextStream(EpochStream):
    """Training windows, epoch by epoch: each epoch draws an offset in [0, context) and a
    permutation of the non-overlapping windows from there; resumable (`EpochStream`)."""

    def _size(self) -> int:
        return self.dataset.windows_per_epoch()

    def _permutation(self, n: int) -> torch.Tensor:
        offset = int(torch.randint(0, self.dataset.context, (1,), generator=self.generator))
        return offset + self.dataset.context * torch.randperm(n, generator=self.generator)

    def _batch(self, starts) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset.windows("train", starts)


def _topics() -> dict:
    try:
        from pydoc_data.topics import topics
    except ImportError as err:   # a Python built without its documentation data
        raise DatasetError(f"the text for charlm is Python's pydoc_data.topics, which does not import: {err}") from None
    if not isinstance(topics, dict) or not topics:
        raise DatasetError("pydoc_data.topics holds no help texts")
    return topics


def prepare_text(topics: dict) -> str:
    """The topics in sorted order, paragraphs seen before dropped, joined by blank lines."""
    seen, kept = set(), []
    for name in sorted(topics):
        for paragraph in str(topics[name]).split("\n\n"):
            key = paragraph.strip()
            if key and key not in seen:
                seen.add(key)
                kept.append(paragraph.strip("\n"))
    return "\n\n".join(kept)


_CACHE: dict = {}


def load_text(device="cpu", context: int = CONTEXT) -> TextDataset:
    """The pydoc-topics character dataset on `device` (prepared once per process)."""
    if isinstance(context, bool) or not isinstance(context, int) or context < 2:
        raise DatasetError(f"context must be an integer of at least 2, got {context!r}")
    if "text" not in _CACHE:
        text = prepare_text(_topics())
        vocab = "".join(sorted(set(text)))
        lookup = {ch: i for i, ch in enumerate(vocab)}
        ids = torch.tensor([lookup[ch] for ch in text], dtype=torch.int64)
        block = torch.arange(len(ids)) // BLOCK % 10
        which = {"train": block < 8, "val": block == 8, "test": block == 9}
        positions = {s: torch.nonzero(mask).flatten() for s, mask in which.items()}
        source = f"pydoc_data.topics of Python {sys.version.split()[0]} ({len(text)} characters)"
        _CACHE["text"] = (ids, vocab, positions, source)
    ids, vocab, positions, source = _CACHE["text"]
    splits = {s: ids[p] for s, p in positions.items()}
    for s, part in splits.items():
        if len(part) <= 2 * context:
            raise DatasetError(f"the {s} split of the text has {len(part)} characters, too few for context {context}")
    return TextDataset(splits["train"], splits["val"], splits["test"], vocab, context,
                       source=source, _positions=positions).to(device)
