"""The judgement behind recover-system and verify, on fixed inputs: classification and its
confidence, log timestamps and windows, the verdict's handling of missing evidence, and
lb_member's rewrite of the live pool."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils import recovery
from ansible_collections.knowngood.runbooks.plugins.module_utils import service_verify as sv
from ansible_collections.knowngood.runbooks.plugins.modules import lb_member

UTC = datetime.UTC


def snapshot(apps=("up", "up", "up"), lb=True, dbs=(("w", None), ("s", None))):
    app_states = {
        f"app{i + 1}": {
            "url": f"http://h{i}",
            "status": 200 if s == "up" else None,
            "up": s == "up",
        }
        for i, s in enumerate(apps)
    }
    db_states = {}
    for i, (role, corrupt) in enumerate(dbs):
        db_states[f"db{i + 1}"] = {
            "accepts": role != "down",
            "in_recovery": role == "s",
            "error": "refused" if role == "down" else None,
            "corrupt": corrupt,
            "findings": ['heap table "app.public.ledger", block 1: invalid page']
            if corrupt
            else [],
        }
    return {
        "apps": app_states,
        "lb": {"url": "http://lb", "status": 200 if lb else None, "up": lb},
        "databases": db_states,
    }


@pytest.mark.parametrize(
    ("snap", "expected"),
    [
        (snapshot(), "none"),
        (snapshot(apps=("up", "down", "up")), "partial"),
        (snapshot(dbs=(("down", None), ("s", None))), "partial"),
        (snapshot(dbs=(("w", None), ("down", None))), "partial"),  # lost standby: redundancy
        (snapshot(lb=False), "outage"),
        (snapshot(apps=("down", "down", "down")), "outage"),
        (snapshot(dbs=(("down", None), ("down", None))), "outage"),
        (snapshot(dbs=(("w", True), ("s", None))), "corruption"),
    ],
)
def test_each_failure_lands_in_its_class_with_confidence(snap, expected):
    klass, confident, evidence, _facts = recovery.classify(snap)
    assert (klass, confident) == (expected, True)
    assert expected == "none" or evidence


def test_two_writable_nodes_are_never_classified_with_confidence():
    klass, confident, evidence, _facts = recovery.classify(snapshot(dbs=(("w", None), ("w", None))))
    assert not confident and "split brain" in evidence[-1]


def test_corruption_with_failed_hosts_asks_a_person():
    snap = snapshot(apps=("down", "up", "up"), dbs=(("w", True), ("s", None)))
    assert recovery.judge([snap, snap], "auto")["confident"] is False


def test_probe_rounds_that_disagree_are_not_confident_and_an_override_is_reported():
    first, second = snapshot(apps=("up", "down", "up")), snapshot()
    judged = recovery.judge([first, second], "auto")
    assert not judged["confident"] and "disagree" in judged["reasons"][0]
    forced = recovery.judge([second, second], "partial")
    assert forced["class"] == "partial" and forced["observed"] == "none" and forced["overridden"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("2026-11-28 21:05:28.123 UTC [42] ERROR: boom", "2026-11-28T21:05:28.123000+00:00"),
        (
            '127.0.0.1 - - [28/Nov/2026:21:05:28 +0100] "GET / HTTP/1.1" 502 0',
            "2026-11-28T20:05:28+00:00",
        ),
        ("ts=2026-11-28T21:05:28.5Z level=error msg=x", "2026-11-28T21:05:28.500000+00:00"),
        ("serving v1 from /x", None),
    ],
)
def test_log_lines_are_placed_in_time_whatever_their_format(line, expected):
    stamp = sv.line_time(line)
    assert (stamp.isoformat() if stamp else None) == expected


def test_error_lines_are_counted_per_window_and_untimed_ones_inherit_the_line_before(
    tmp_path: Path,
):
    log = tmp_path / "pg.log"
    log.write_text(
        "Traceback (most recent call last): before any timestamp\n"
        "2026-11-28 10:00:00 UTC ERROR: in the baseline\n"
        "2026-11-28 11:00:00 UTC LOG: fine\n"
        "2026-11-28 11:00:01 UTC FATAL: after the change\n"
        "Traceback (most recent call last): belongs to 11:00:01\n"
    )
    since = datetime.datetime(2026, 11, 28, 11, 0, tzinfo=UTC)
    judged, baseline = sv.windows(since, since + datetime.timedelta(minutes=1), since, 120)
    params = {
        "log_files": [str(tmp_path / "*.log")],
        "log_patterns": [],
        "max_samples": 3,
        "max_log_errors_per_minute": 0,
        "tolerance": 1.5,
    }
    (check,) = sv.logs(params, judged, baseline)
    assert check["numbers"]["errors"] == 2 and check["numbers"]["baseline_errors"] == 1
    assert check["numbers"]["untimed"] == 1 and check["status"] == "fail"


def test_missing_evidence_is_inconclusive_and_a_breach_fails():
    passed = sv.result("a", "ux", "pass")
    missing = sv.result("b", "metrics", "inconclusive")
    breach = sv.result("c", "data", "fail")
    assert sv.verdict([passed]) == "pass"
    assert sv.verdict([passed, missing]) == "inconclusive"
    assert sv.verdict([passed, missing, breach]) == "fail"


def test_bad_windows_are_refused():
    now = datetime.datetime.now(UTC)
    with pytest.raises(sv.VerifyError):
        sv.windows(now, now - datetime.timedelta(seconds=1), now, 10)
    with pytest.raises(sv.VerifyError):
        sv.windows(
            now, now + datetime.timedelta(seconds=5), now + datetime.timedelta(seconds=1), 10
        )
    with pytest.raises(sv.VerifyError):
        sv.parse_time("yesterday")


POOL = """# knowngood-pool: blue
upstream app_live {
    server 127.0.0.1:100 max_fails=0;
    server 127.0.0.1:102 max_fails=0;
    keepalive 32;
}
"""


def test_lb_member_drains_and_returns_only_the_named_members():
    drained, *rest = lb_member.rewrite(POOL, {"127.0.0.1:102"}, "drained")
    assert "server 127.0.0.1:102 max_fails=0 down;" in drained
    assert rest[:3] == [["127.0.0.1:102"], ["127.0.0.1:100"], ["127.0.0.1:102"]]
    again = lb_member.rewrite(drained, {"127.0.0.1:102"}, "drained")
    assert again[0] == drained and again[3] == []  # idempotent
    back = lb_member.rewrite(drained, {"127.0.0.1:102"}, "active")
    assert back[0] == POOL
    assert lb_member.rewrite(POOL, {"127.0.0.1:999"}, "drained")[4] == ["127.0.0.1:999"]
