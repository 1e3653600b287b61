"""The incident report from a record alone: failure first, the section 7 headings, the timeline
from detection and decision, hosts with what was done there, the procedure by phase with the
task log folded away, data loss as a sentence with numbers, and the chart drawn from the
metrics captured into the record, never from a Prometheus that is gone."""

from __future__ import annotations

import datetime
import math
import re
import socket

from ansible_collections.knowngood.runbooks.plugins.module_utils import incident_metrics

from knowngood import drills, report

T0 = 1796630400.0  # 2026-12-07 08:00:00 UTC
SECTION7 = report.SECTION7


def iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event(dt, host, task, status, phase, action="ansible.builtin.command", **result) -> dict:
    return {
        "ts": iso(T0 + dt),
        "host": host,
        "task": f"{phase} : {task}",
        "phase": phase,
        "action": action,
        "status": status,
        "changed": status == "changed",
        "duration_s": 1.0,
        "result": result,
    }


def record(status="successful", events=(), **extra) -> dict:
    base = {
        "run_id": "kg-20261207T080000Z-abc123",
        "user": "oscar",
        "playbook": "/x/playbooks/rollback-code.yml",
        "started_at": iso(T0),
        "finished_at": iso(T0 + 40),
        "duration_s": 40.0,
        "status": status,
        "ticket": "INC-7",
        "reason": "v1.1 checkout errors",
        "extra_vars": {"release_id": "v1", "smtp_password": "********"},
        "stats": {"app1": {}, "app2": {}, "app3": {}},
        "events": list(events),
    }
    base.update(extra)
    return base


def metrics() -> dict:
    during = lambda i: 0 <= 2 * i - 120 <= 30  # noqa: E731
    return {
        "source": "http://127.0.0.1:9090",
        "captured_at": T0 + 41,
        "window": {"before": T0 - 120, "start": T0, "end": T0 + 40, "after": T0 + 41},
        "step_s": 2.0,
        "series": {
            "error_ratio": [[T0 - 120 + 2 * i, 0.3 if during(i) else 0.0] for i in range(81)],
            "p95_ms": [[T0 - 120 + 2 * i, 240.0 if during(i) else 40.0] for i in range(81)],
        },
        "errors": {},
    }


def closed_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # bound then closed: nothing listens there


FAILED = record(
    "failed",
    [
        event(2, "app1", "Switch release", "changed", "code_switch", msg="switched to v1"),
        event(3, "app2", "Switch release", "failed", "code_switch", msg="v1 missing on app2"),
        event(5, "lb1", "Drain", "changed", "lb_drain"),
        event(6, "app3", "Check health", "ok", "code_verify"),
    ],
    metrics=metrics(),
)


def test_failure_first_then_section7_in_order():
    rep = report.build(FAILED, {}, closed_url())
    text = report.to_html(rep)
    heads = re.findall(r"<h2>([^<]+)</h2>", text)
    assert heads[0] == "Failure"
    assert [h for h in heads if h in SECTION7] == list(SECTION7)
    box = text[: text.index("<h2>Incident Description</h2>")]
    assert (
        "task &#x27;Switch release&#x27; (code_switch)" in box
        and "app2" in box
        and "v1 missing on app2" in box
    )
    md = report.to_markdown(rep)
    assert md.split("\n## ")[1].startswith("Failure\n\n> **FAILED: task 'Switch release' (code_sw")
    assert [h for h in SECTION7 if f"\n## {h}\n" in md] == list(SECTION7)


def test_hosts_and_phases_from_the_record():
    rows = dict(report.hosts_touched(FAILED))
    assert rows["app1"] == "code_switch: Switch release"
    assert rows["app2"] == "code_switch: Switch release (FAILED)"
    assert rows["lb1"] == "lb_drain: Drain"
    assert rows["app3"].startswith("checked only, nothing changed (1 task")
    phases = {p["phase"]: p for p in report.phases(FAILED)}
    assert list(phases) == ["code_switch", "lb_drain", "code_verify"]
    assert (phases["code_switch"]["changed"], phases["code_switch"]["failed"]) == (1, 1)
    assert phases["code_switch"]["hosts"] == ["app1", "app2"]
    # a record from before phases were recorded: the role comes from the task name
    old = dict(FAILED["events"][0], phase=None, task="knowngood.runbooks.db_restore : Restore")
    assert report.phase_of(old) == "db_restore"


def test_task_log_is_folded_at_the_end():
    rep = report.build(FAILED, {}, "")
    text = report.to_html(rep)
    details = text.index("<details>")
    assert details > text.index("<h2>Notified</h2>")
    assert text.count("<tr><td>") - text[:details].count("<tr><td>") == 4  # one row per event
    md = report.to_markdown(rep)
    assert md.index("<details>") > md.index("## Preventive Recommendations")
    assert "| 08:00:03 | code_switch | app2 | Switch release | failed |" in md


def test_chart_from_the_record_needs_no_prometheus():
    gone = report.build(FAILED, {}, closed_url())
    assert gone.series["p95_ms"] == [tuple(p) for p in FAILED["metrics"]["series"]["p95_ms"]]
    assert "captured into the record at 08:00:41 UTC" in gone.metrics_note
    svg = report.svg_chart(gone)
    assert svg.count("<polyline") == 2
    ticks = re.findall(r">(\d\d:\d\d:\d\d)</text>", svg)
    assert "07:59:00" in ticks and "08:00:00" in ticks and len(ticks) >= 4
    assert "time (UTC, HH:MM:SS)" in svg and "error rate" in svg and "p95 latency (ms)" in svg
    # a record without metrics and no Prometheus: an honest empty chart
    bare = report.build(record(), {}, closed_url())
    assert bare.series == {"error_ratio": [], "p95_ms": []}
    assert "no metrics" in report.svg_chart(bare) and "<polyline" not in report.svg_chart(bare)


def test_data_loss_is_a_sentence_with_numbers():
    card = dict(action="knowngood.runbooks.drill_scorecard")
    clean = record(events=[event(9, "db1", "Score", "ok", "drill", **card, rows_committed=40,
                                 rows_lost=0, rpo_s=0.0)])  # fmt: skip
    assert report.data_loss(clean) == "No data lost: 40 of 40 sentinel rows present."
    lossy = record(events=[event(9, "db1", "Score", "ok", "drill", **card, rows_committed=40,
                                 rows_lost=3, rpo_s=12.3)])  # fmt: skip
    assert report.data_loss(lossy) == "RPO 12.3 s: 3 of 40 sentinel rows missing (37 present)."
    pitr = record(
        events=[
            event(
                20,
                "db1",
                "Restore",
                "changed",
                "db_restore",
                action="knowngood.runbooks.pg_pitr",
                reached_time=iso(T0 - 95.5),
                reached_lsn="0/3000060",
                plan={"target": {"kind": "name"}},
            ),
        ]  # fmt: skip
    )
    sentence = report.data_loss(pitr)
    assert "Database restored to 2026-12-07T07:58:24" in sentence and "95.5 s" in sentence
    assert "not counted" in sentence
    assert report.data_loss(FAILED).startswith("Data loss not measured")
    checked = dict(pitr, check_mode=True)
    assert report.data_loss(checked) == "No data lost: a check-mode run changes nothing."


def test_timeline_starts_at_detection_and_decision():
    decide = event(
        1, "localhost", "Decide", "ok", "decision_evaluate",
        action="knowngood.runbooks.rollback_decision", verdict="rollback", severity="high",
        action_="", fired=["error_rate"], evaluated_at=T0 - 30, window_s=60,
        approvals_required=["cto"],
    )  # fmt: skip
    gate = event(
        2, "localhost", "Gate", "ok", "approval_gate",
        action="knowngood.runbooks.approval_gate", mode="approved",
        signers=[{"principal": "carla", "roles": ["cto"], "signed_at": iso(T0 - 20)}],
        request={"created_at": iso(T0 - 25), "requester": "oscar", "severity": "high"},
    )  # fmt: skip
    rec = record(events=[decide, gate, *FAILED["events"]])
    lines = [line for _at, line in report.timeline(rec)]
    assert lines[0].startswith("detection: triggers fired: error_rate (window 60 s)")
    assert lines[1].startswith("rollback requested by oscar")
    assert lines[2] == "approved by carla (cto)"
    assert lines.index("runbook started") > 2 and lines[-1] == "runbook finished: successful"
    assert any(line.startswith("decision: rollback, severity high") for line in lines)
    # no decision in the record: said first, not invented
    first = report.timeline(record(events=FAILED["events"]))[0]
    assert first[0] is None and first[1].startswith("detection and decision: not recorded")


def test_capture_keeps_no_credentials_and_survives_a_dead_prometheus():
    assert incident_metrics.source("https://ops:pw@prom.example:9090/x?token=1") == (
        "https://prom.example:9090"
    )
    got = incident_metrics.capture(closed_url(), T0, T0 + 40, now=T0 + 41)
    assert got["series"] == {} and set(got["errors"]) == {"error_ratio", "p95_ms"}
    assert got["window"] == {"before": T0 - 120, "start": T0, "end": T0 + 40, "after": T0 + 41}


def test_drill_trends_date_the_x_axis_and_chart_rpo_against_its_objective():
    cards = []
    for i, (rto, rpo) in enumerate([(40, 0.0), (130, 3.2), (62, None)]):
        at = datetime.datetime(2026, 9, 1, tzinfo=datetime.UTC) + datetime.timedelta(days=21 * i)
        cards.append(
            {"drill": "pitr", "run_id": f"r{i}", "scored_at": at.isoformat(), "rto_s": rto,
             "rpo_s": rpo, "rows_lost": 0, "passed": rto < 120, "misses": [],
             "targets": {"rto_s": 120, "rpo_s": 2}, "steps": []}
        )  # fmt: skip
    page = drills.html_report(cards)
    assert "pitr: RTO per run" in page and "pitr: RPO per run" in page
    rto, rpo = page.split("<h2>pitr: RPO per run</h2>")
    assert "objective 120s" in rto and "objective 2s" in rpo
    assert rto.count("<circle") == 3 and rpo.split("</svg>")[0].count("<circle") == 2
    assert "2026-09-01" in rto and "2026-10-13" in rto and "drill run date (UTC)" in rto
    assert "RTO (s)" in rto and "RPO (s)" in rpo


def test_a_point_at_the_windows_first_millisecond_is_inside_the_window(monkeypatch):
    """Prometheus answers at start + k * step with millisecond times: a run that started at a
    sub-millisecond instant still gets a window holding every point, the first one included."""
    asked = []

    def query_range(url, query, start, end, step, timeout=3.0):
        asked.append((start, end, step))
        first_ms = round(start * 1000) / 1000.0  # what Prometheus does with the start time
        return [(first_ms + k * step, 1.0) for k in range(int((end - start) // step) + 1)]

    monkeypatch.setattr(incident_metrics, "query_range", query_range)
    started = T0 + 0.123456789
    got = incident_metrics.capture("http://prom", started, started + 40, now=started + 41.0004)
    window = got["window"]
    for points in got["series"].values():
        assert points and all(window["before"] <= t <= window["after"] for t, _v in points)
    assert asked[0][0] == window["before"] == math.floor((started - 120) * 1000) / 1000
    assert window["after"] >= started + 41.0004 and window["start"] - window["before"] >= 120
