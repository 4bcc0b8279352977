"""The shared helpers of primitives.util: one-line errors, atomic writes, missing values,
and the dataset download that writes through the atomic writer."""
from __future__ import annotations

import hashlib
import io
import math

import numpy as np
import pandas as pd
import pytest

from evaluators.datasets import images as datasets
from primitives.util import finite_or_none, is_missing, json_cell, one_line, write_atomic
from search.store import files


def test_one_line_folds_names_and_cuts():
    err = RuntimeError("shape mismatch\n  at layer 3\n\tin forward")
    assert one_line(err) == "RuntimeError: shape mismatch at layer 3 in forward"
    assert one_line(err, kind=False) == "shape mismatch at layer 3 in forward"
    assert one_line(ValueError()) == "ValueError"
    long = one_line(ValueError("x" * 1000), limit=50)
    assert len(long) == 50 and long.endswith("...") and long.startswith("ValueError: xxx")
    assert len(one_line(ValueError("x" * 1000), limit=None)) == len("ValueError: ") + 1000


def test_one_atomic_writer():
    assert files.write_atomic is write_atomic


def test_write_atomic_replaces_whole_or_not_at_all(tmp_path, write=write_atomic):
    target = tmp_path / "out.bin"
    write(target, b"old")

    def broken(f):
        f.write(b"half")
        raise KeyError("stop")

    with pytest.raises(KeyError):            # not turned into another error
        write(target, broken)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    write(target, "new text")
    assert target.read_text() == "new text"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


@pytest.mark.parametrize("value, missing", [
    (None, True), (float("nan"), True), (np.float32("nan"), True), (pd.NA, True), (pd.NaT, True),
    (0.0, False), (0, False), ("", False), ("nan", False), ([1.0, math.nan], False),
    ({"a": None}, False), (np.int64(3), False), (False, False)])
def test_is_missing(value, missing):
    assert is_missing(value) is missing


class _Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_fetch_checks_the_md5_before_the_file_takes_its_name(tmp_path, monkeypatch):
    payload = b"idx bytes " * 300_000          # more than one read chunk
    monkeypatch.setattr(datasets.urllib.request, "urlopen", lambda url, timeout: _Response(payload))
    good = tmp_path / "good.gz"
    datasets._fetch("http://example.invalid/good.gz", good, hashlib.md5(payload).hexdigest())
    assert good.read_bytes() == payload
    bad = tmp_path / "bad.gz"
    with pytest.raises(datasets.DatasetError, match="MD5"):
        datasets._fetch("http://example.invalid/bad.gz", bad, "0" * 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.gz"]   # no temporary file left


def test_finite_or_none_and_json_cell_read_record_cells():
    assert [finite_or_none(v) for v in (1, "0.5", np.float32(2.0))] == [1.0, 0.5, 2.0]
    assert [finite_or_none(v) for v in (None, "x", float("nan"), math.inf, [1])] == [None] * 5
    assert json_cell('{"a": [1, 2]}') == {"a": [1, 2]} and json_cell([1, 2]) == [1, 2]
    assert [json_cell(v) for v in (None, float("nan"), "{not json")] == [None, None, None]
