"""Drill bookkeeping against a real PostgreSQL: sentinel rows, data loss measured, scorecards.

The drills themselves (molecule scenarios on the lab, each a minute or more) run with
`make drill` / `knowngood drill run NAME`; here the measuring instrument is proven: it must
report zero loss when nothing was lost, count exactly the rows a restore lost, and fail a drill
that misses its objectives.
"""

from __future__ import annotations

import time

import pytest

from knowngood import drills
from knowngood.modutils import module_utils

drill = module_utils("drill")


@pytest.fixture
def dsn(pg_factory):
    cluster = pg_factory("kgdrill")
    cluster.start()
    return f"host=127.0.0.1 port={cluster.port} user=postgres dbname=postgres"


def test_no_loss_scores_zero_rpo_and_passes(tmp_path, dsn):
    drill.start(str(tmp_path), "demo", "run-1", {"rto_s": 30, "rpo_s": 0})
    drill.tick(str(tmp_path), "demo", dsn, 5, 0.01)
    drill.mark(str(tmp_path), "demo", "failure_injected")
    drill.mark(str(tmp_path), "demo", "recovered")
    state = drill.load(str(tmp_path), "demo")
    card = drill.score(state, drill.survivors(dsn, "run-1"))
    assert (card["rows_committed"], card["rows_lost"], card["rpo_s"]) == (5, 0, 0.0)
    assert card["passed"] and 0 <= card["rto_s"] < 5
    path = drill.record(str(tmp_path), card)
    assert drill.history(str(tmp_path))[-1]["run_id"] == "run-1" and path.endswith("run-1.json")
    with pytest.raises(drill.DrillError, match="was not started"):
        drill.load(str(tmp_path), "demo")  # recorded drills are closed


def test_lost_rows_give_the_commit_window_and_miss_the_objective(tmp_path, dsn):
    drill.start(str(tmp_path), "pitr", "run-2", {"rto_s": 0.001, "rpo_s": 0.1})
    drill.tick(str(tmp_path), "pitr", dsn, 4, 0.05)
    time.sleep(0.3)
    kept_until = drill.load(str(tmp_path), "pitr")["ticks"]["newest_at"]
    drill.tick(str(tmp_path), "pitr", dsn, 3, 0.2)  # these are lost to the "restore" below
    newest = drill.load(str(tmp_path), "pitr")["ticks"]["newest_at"]
    drill.mark(str(tmp_path), "pitr", "failure_injected")
    with drill._connect(dsn) as conn:  # the restore: back to just after the first batch
        conn.execute("DELETE FROM knowngood_drill_ticks WHERE at > %s", (kept_until,))
    time.sleep(0.01)
    drill.mark(str(tmp_path), "pitr", "recovered")
    card = drill.score(drill.load(str(tmp_path), "pitr"), drill.survivors(dsn, "run-2"))
    assert (card["rows_committed"], card["rows_lost"]) == (7, 3)
    expected = (drill._parse(newest) - drill._parse(kept_until)).total_seconds()
    assert card["rpo_s"] == pytest.approx(expected, abs=0.002) and card["rpo_s"] > 0.6
    assert not card["passed"]
    assert any(m.startswith("RTO") for m in card["misses"])
    assert any(m.startswith("RPO") for m in card["misses"])


def test_a_drill_that_never_verified_green_fails(tmp_path):
    drill.start(str(tmp_path), "cfg", "run-3", {"rto_s": 60})
    drill.mark(str(tmp_path), "cfg", "failure_injected")
    card = drill.score(drill.load(str(tmp_path), "cfg"))
    assert card["rto_s"] is None and not card["passed"]
    assert card["misses"] == ["never verified green"]


def test_report_shows_trends_and_draws_rto_per_run(tmp_path, dsn):
    for run_id, pause in (("a", 0.05), ("b", 0.2)):
        drill.start(str(tmp_path), "code", run_id, {"rto_s": 1, "rpo_s": 0})
        drill.mark(str(tmp_path), "code", "failure_injected")
        time.sleep(pause)
        drill.mark(str(tmp_path), "code", "recovered")
        drill.record(str(tmp_path), drill.score(drill.load(str(tmp_path), "code")))
    cards = drill.history(str(tmp_path))
    trend = drills.trends(cards)["code"]
    assert len(trend["runs"]) == 2 and trend["passed"] == 2
    assert trend["rto_change_s"] == pytest.approx(0.15, abs=0.05)
    text = drills.text_report(cards)
    assert text.splitlines()[1].startswith("code") and "+0." in text
    page = drills.html_report(cards)
    assert page.count("<circle") == 2 and "objective 1s" in page and "<polyline" in page


def test_run_refuses_unknown_drill_and_missing_lab(tmp_path):
    with pytest.raises(drills.DrillError, match="no drill 'nope'"):
        drills.run("nope", tmp_path)
    with pytest.raises(drills.DrillError, match="no lab at"):
        drills.run("code_rollback", tmp_path)
