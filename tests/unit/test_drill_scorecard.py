"""The drill scorecard's judgement (module_utils/drill.py), without a database: RPO from the
sentinel rows committed and the ids found after recovery, and pass or miss against the
objectives in both directions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from knowngood import drills
from knowngood.modutils import module_utils

drill = module_utils("drill")

T0 = datetime(2026, 12, 7, 22, 0, 0, tzinfo=UTC)


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


def state(rows: list[tuple[int, float]], rto: float, targets: dict) -> dict:
    """A drill that committed rows [(id, second)], failed at 100 s and recovered rto later."""
    committed = [[rid, at(second)] for rid, second in rows]
    return {
        "drill": "demo",
        "run_id": "run-1",
        "started_at": at(0),
        "targets": targets,
        "marks": {"failure_injected": at(100), "recovered": at(100 + rto)},
        "ticks": {
            "committed": len(committed),
            "rows": committed,
            "newest_id": committed[-1][0],
            "newest_at": committed[-1][1],
        },
        "data": {},
    }


def survivors(ids: list[int]) -> dict:
    return {"count": len(ids), "newest_at": None, "ids": ids}


# 40 sentinel rows at 0.5 s apart from 60 s to 79.5 s, two anchor rows at 10 s and 11 s
ROWS = [(1, 10.0), (2, 11.0)] + [(3 + i, 60 + 0.5 * i) for i in range(40)]


def test_every_sentinel_row_lost_is_an_unbounded_loss_and_misses_the_objective():
    """disaster_recovery used to pass with 40 of 40 rows lost: the RPO was taken from the
    drill's start, a point nothing showed had survived. Now the loss is unbounded and missed,
    however generous the objective."""
    rows = ROWS[2:]
    card = drill.score(state(rows, 60, {"rto_s": 300, "rpo_s": 60}), survivors([]))
    assert (card["rows_committed"], card["rows_lost"]) == (40, 40)
    assert card["rpo_s"] is None and card["rpo_at_least_s"] == 19.5
    assert not card["passed"]
    assert card["misses"] == [
        "RPO unbounded: all 40 sentinel rows lost, so the data went back past the oldest "
        "(at least 19.5s of commits lost) and nothing bounds the loss within the 60.0s target"
    ]
    assert "RPO unbounded (at least 19.5s)" in drills.summary(card | {"steps": []})[2]
    # The same with a survivor only after the lost rows (a hole at the start): still unbounded.
    card = drill.score(state(rows, 60, {"rto_s": 300, "rpo_s": 60}), survivors([42]))
    assert card["rows_lost"] == 39 and card["rpo_s"] is None and not card["passed"]


def test_loss_bounded_by_an_older_survivor_passes_within_the_objective():
    """The anchor rows survived (they were in the backup): the loss runs from the newest of
    them (11 s) to the newest lost row (79.5 s), 68.5 s; inside 120 s it passes."""
    card = drill.score(state(ROWS, 60, {"rto_s": 300, "rpo_s": 120}), survivors([1, 2]))
    assert (card["rows_lost"], card["rpo_s"], card["rpo_at_least_s"]) == (40, 68.5, 19.5)
    assert card["passed"] and card["misses"] == []


def test_loss_beyond_the_objective_misses_it():
    card = drill.score(state(ROWS, 60, {"rto_s": 300, "rpo_s": 60}), survivors([1, 2]))
    assert card["rpo_s"] == 68.5 and not card["passed"]
    assert card["misses"] == ["RPO 68.5s over the 60.0s target (40 of 42 sentinel rows lost)"]


def test_partial_loss_is_the_window_from_the_last_survivor_both_directions():
    """A PITR 1 s before the failure keeps the rows up to 75 s: the rows after it are lost."""
    kept = [rid for rid, second in ROWS if second <= 75.0]
    lost_window = 79.5 - 75.0
    passed = drill.score(state(ROWS, 30, {"rto_s": 60, "rpo_s": 5}), survivors(kept))
    assert (passed["rows_lost"], passed["rpo_s"]) == (9, lost_window) and passed["passed"]
    missed = drill.score(state(ROWS, 30, {"rto_s": 60, "rpo_s": 4}), survivors(kept))
    assert missed["rpo_s"] == lost_window and not missed["passed"]
    assert missed["misses"] == ["RPO 4.5s over the 4.0s target (9 of 42 sentinel rows lost)"]


def test_a_hole_in_the_middle_is_data_lost_even_when_the_newest_row_survived():
    """Counting rows and the newest survivor called this no loss; the ids say rows 10-12 went."""
    kept = [rid for rid, _second in ROWS if rid not in (10, 11, 12)]
    lost, window, at_least = drill.data_loss([[r, at(s)] for r, s in ROWS], kept)
    # lost at 63.5, 64 and 64.5 s; the survivor before them was committed at 63 s
    assert (lost, window, at_least) == (3, 1.5, 1.0)
    card = drill.score(state(ROWS, 30, {"rto_s": 60, "rpo_s": 0}), survivors(kept))
    assert card["rows_lost"] == 3 and card["rpo_s"] == 1.5 and not card["passed"]


def test_no_loss_passes_and_rto_is_judged_both_ways():
    ids = [rid for rid, _second in ROWS]
    card = drill.score(state(ROWS, 59.9, {"rto_s": 60, "rpo_s": 0}), survivors(ids))
    assert (card["rows_lost"], card["rpo_s"], card["rto_s"]) == (0, 0.0, 59.9) and card["passed"]
    late = drill.score(state(ROWS, 60.5, {"rto_s": 60, "rpo_s": 0}), survivors(ids))
    assert late["misses"] == ["RTO 60.5s over the 60.0s target"] and not late["passed"]


def test_sentinel_rows_never_counted_miss_the_rpo_objective():
    card = drill.score(state(ROWS, 10, {"rto_s": 60, "rpo_s": 1}), None)
    assert card["rpo_s"] is None and card["misses"] == ["RPO not measured"]
