"""`search.analysis.accounting` and `evonorm show DIR`: judged per worker-hour and trainings saved,
worked out by hand on a few records."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from search.analysis.accounting import account
from search.cli import main


def rows(*specs):
    """(status, seconds, confirm seconds or None) -> the run directory's columns."""
    return pd.DataFrame([{"status": s, "seconds": sec,
                          "stage_seconds": json.dumps({"resnet": sec} | ({"confirm": c} if c else {}))}
                         for s, sec, c in specs])


def test_saved_trainings_are_counted_in_units_of_the_median_full_training():
    df = rows(("ok", 100.0, None), ("ok", 300.0, 180.0), ("ok", 140.0, None),   # first seeds 100, 120, 140
              ("duplicate", 0.0, None), ("low_quality", 30.0, None), ("stopped", 40.0, None),
              ("stopped", 60.0, None), ("failed", 200.0, None))
    acc = account(df)
    assert acc.training_seconds == 120.0
    assert acc.confirmed == 1 and acc.confirm_cost == pytest.approx(1.5)
    assert acc.saved == pytest.approx({"duplicate": 1.0, "low_quality": 0.75, "stopped": 1 - 40 / 120 + 1 - 60 / 120,
                                       "failed": 0.0})
    assert list(acc.saved) == ["duplicate", "low_quality", "stopped", "failed"]   # STATUSES order
    assert acc.worker_hours == pytest.approx(870.0 / 3600)
    assert acc.judged_per_worker_hour == pytest.approx(8 / (870.0 / 3600))
    assert acc.counts["ok"] == 3 and acc.counts["stopped"] == 2 and acc.counts["equivalent"] == 0


def test_without_a_full_training_nothing_is_claimed_saved():
    acc = account(rows(("invalid", 0.0, None), ("stopped", 50.0, None)))
    assert acc.training_seconds is None and acc.saved == {}
    assert any("unknown" in line for line in acc.lines())
    assert account(rows(("duplicate", 0.0, None))).judged_per_worker_hour is None   # no time spent


def test_missing_seconds_and_unreadable_stages_count_as_zero():
    df = rows(("ok", 100.0, None), ("duplicate", 0.0, None))
    df.loc[1, "seconds"] = None
    df.loc[0, "stage_seconds"] = "{not json"
    acc = account(df)
    assert acc.worker_hours == pytest.approx(100.0 / 3600) and acc.saved == {"duplicate": 1.0}


def test_show_without_an_id_prints_the_runs_accounting(capsys, small_run):
    from search.store.reader import load_run

    acc = account(load_run(small_run).candidates)
    assert main(["show", str(small_run)]) == 0
    out = capsys.readouterr().out
    assert f"{acc.records} records in {acc.worker_hours:.2f} worker-hours" in out
    assert main(["show", str(small_run), "--graph", "g.png"]) == 2
    assert "give its ID" in capsys.readouterr().err


def test_cached_records_count_apart_from_the_unit_and_the_savings():
    """Records from the training cache cost their lookups' seconds in the worker-hours but are
    neither in the median full training nor trainings saved by a hurdle."""
    df = rows(("ok", 100.0, None), ("ok", 120.0, None), ("ok", 140.0, None),
              ("ok", 0.5, None), ("stopped", 0.2, None), ("stopped", 40.0, None))
    df["cached"] = [None, False, None, True, True, None]
    acc = account(df)
    assert acc.cached == 2 and acc.training_seconds == 120.0
    assert acc.saved == pytest.approx({"stopped": 1 - 40 / 120})
    assert acc.worker_hours == pytest.approx(400.7 / 3600)
    assert any("from the training cache" in line for line in acc.lines())
