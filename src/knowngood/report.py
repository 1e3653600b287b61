"""Incident reports (strategy section 7) from an audit record alone: Markdown or one HTML file.

A failed run's failure comes first. Then the section 7 headings (Incident Description, Root
Cause Analysis, Rollback Procedure Used, Impact Assessment, Preventive Recommendations), with a
timeline that starts at detection and decision, the procedure summarised by phase (role), every
host the run touched with what was done there, data loss as a sentence with numbers, and the
error rate and p95 latency around the run drawn as an inline SVG chart from the metrics the
audit callback captured into the record when the run ended. The full task log comes last,
folded away. Prometheus is asked only for records made before the capture existed.
"""

from __future__ import annotations

import datetime
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

from knowngood.modutils import module_utils

OPERATOR_FIELDS = ("description", "root_cause", "recommendations")
VERIFY_HINTS = ("verify", "probe", "healthy", "health")
BROKEN = ("failed", "unreachable")
SECTION7 = (
    "Incident Description",
    "Root Cause Analysis",
    "Rollback Procedure Used",
    "Impact Assessment",
    "Preventive Recommendations",
)


@dataclass
class Report:
    record: dict
    notes: dict = field(default_factory=dict)
    series: dict = field(default_factory=dict)  # name -> [(epoch, value)]
    window: tuple[float, float, float, float] = (0, 0, 0, 0)  # before, start, end, after
    metrics_note: str = ""


def _epoch(ts: str) -> float:
    return (
        datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ")
        .replace(tzinfo=datetime.UTC)
        .timestamp()
    )


def _when(value) -> float | None:
    """Epoch seconds from a record's timestamp (ISO text or epoch), None when unreadable."""
    if isinstance(value, int | float):
        return float(value)
    if not value:
        return None
    try:
        return _epoch(value)
    except ValueError:
        try:
            parsed = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed.replace(tzinfo=parsed.tzinfo or datetime.UTC).timestamp()


def hms(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%H:%M:%S")


def build(record: dict, notes: dict, prometheus_url: str, margin_s: float = 120) -> Report:
    """The report's data: the record's captured metrics, or (records made before the capture)
    Prometheus asked now."""
    start, end = _epoch(record["started_at"]), _epoch(record["finished_at"])
    captured = record.get("metrics") or {}
    if captured.get("series"):
        w = captured["window"]
        series = {k: [(t, v) for t, v in pts] for k, pts in captured["series"].items()}
        note = (
            f"captured into the record at {hms(captured['captured_at'])} UTC from "
            f"{captured.get('source')} (every {captured.get('step_s')} s)"
        )
        return Report(record, notes, series, (w["before"], w["start"], w["end"], w["after"]), note)
    before = start - margin_s
    after = min(end + margin_s, datetime.datetime.now().timestamp())
    reason = "; ".join(f"{k}: {v}" for k, v in (captured.get("errors") or {}).items())
    series, note = {}, "no metrics in the record" + (f" ({reason})" if reason else "")
    if prometheus_url:
        metrics = module_utils("incident_metrics")
        step = max(2.0, (after - before) / 120)
        for name, query in metrics.SERIES.items():
            try:
                series[name] = metrics.query_range(prometheus_url, query, before, after, step)
            except Exception:  # an unreachable Prometheus leaves the chart empty, said so
                series[name] = []
        got = any(series.values())
        note += (
            f"; asked {metrics.source(prometheus_url)} at report time"
            if got
            else f"; {metrics.source(prometheus_url)} gave nothing"
        )
    return Report(record, notes, series, (before, start, end, after), note)


def _phase_avg(points: list, lo: float, hi: float) -> float | None:
    vals = [v for t, v in points if lo <= t <= hi]
    return sum(vals) / len(vals) if vals else None


def impact(rep: Report) -> list[tuple[str, str, str, str]]:
    before, start, end, after = rep.window
    rows = []
    for name, label, fmt in (
        ("error_ratio", "error rate", "{:.1%}"),
        ("p95_ms", "p95 latency", "{:.0f} ms"),
    ):
        pts = rep.series.get(name, [])
        cells = [
            _phase_avg(pts, before, start),
            _phase_avg(pts, start, end),
            _phase_avg(pts, end, after),
        ]
        rows.append((label, *["n/a" if c is None else fmt.format(c) for c in cells]))
    return rows


def _events(record: dict) -> list[dict]:
    return [
        ev
        for ev in record.get("events", [])
        if ev.get("action") != "ansible.builtin.validate_argument_spec"
    ]


def phase_of(ev: dict) -> str:
    """The event's phase: its role (recorded since issue 17), else the task name's role prefix."""
    if ev.get("phase"):
        return ev["phase"]
    task = ev.get("task", "")
    if " : " in task:
        return task.split(" : ", 1)[0].rsplit(".", 1)[-1]
    return "playbook"


def _task_name(ev: dict) -> str:
    return ev.get("task", "").split(" : ", 1)[-1]


def steps(record: dict) -> list[tuple[str, str, float, int]]:
    """(task, worst status, longest duration, hosts) per task in run order."""
    order: dict[str, list] = {}
    rank = {"ok": 0, "changed": 1, "ignored": 2, "unreachable": 3, "failed": 4}
    for ev in _events(record):
        cur = order.setdefault(ev["task"], ["ok", 0.0, set()])
        if rank.get(ev["status"], 0) > rank.get(cur[0], 0):
            cur[0] = ev["status"]
        cur[1] = max(cur[1], ev.get("duration_s", 0))
        cur[2].add(ev["host"])
    return [(task, s, d, len(h)) for task, (s, d, h) in order.items()]


def phases(record: dict) -> list[dict]:
    """Per phase (role) in run order: first start, last end, tasks, hosts, changed, failed."""
    out: dict[str, dict] = {}
    for ev in _events(record):
        end = _when(ev.get("ts")) or 0.0
        begin = end - float(ev.get("duration_s") or 0)
        p = out.setdefault(
            phase_of(ev),
            {"start": begin, "end": end, "tasks": [], "hosts": [], "changed": 0, "failed": 0},
        )
        p["start"], p["end"] = min(p["start"], begin), max(p["end"], end)
        if ev["task"] not in p["tasks"]:
            p["tasks"].append(ev["task"])
        if ev["host"] not in p["hosts"]:
            p["hosts"].append(ev["host"])
        p["changed"] += ev["status"] == "changed"
        p["failed"] += ev["status"] in BROKEN
    return [{"phase": name, **p} for name, p in out.items()]


def phase_lines(record: dict) -> list[str]:
    lines = []
    for p in phases(record):
        outcome = f"{p['failed']} FAILED, " if p["failed"] else ""
        lines.append(
            f"{p['phase']}: {len(p['tasks'])} task(s) on {', '.join(p['hosts'])}; "
            f"{outcome}{p['changed']} change(s); {hms(p['start'])}-{hms(p['end'])} UTC "
            f"({p['end'] - p['start']:.1f} s)"
        )
    return lines or ["(no task ran)"]


def hosts_touched(record: dict) -> list[tuple[str, str]]:
    """(host, what was done there) for every host the run touched, changed tasks by phase."""
    done: dict[str, dict[str, list[str]]] = {}
    seen: dict[str, int] = {}
    for ev in _events(record):
        seen[ev["host"]] = seen.get(ev["host"], 0) + 1
        by_phase = done.setdefault(ev["host"], {})
        if ev["status"] in ("changed", *BROKEN):
            mark = "" if ev["status"] == "changed" else f" ({ev['status'].upper()})"
            by_phase.setdefault(phase_of(ev), []).append(_task_name(ev) + mark)
    hosts = sorted(set(record.get("stats") or {}) | set(done))
    rows = []
    for host in hosts:
        by_phase = done.get(host) or {}
        if by_phase:
            what = "; ".join(f"{ph}: {', '.join(tasks)}" for ph, tasks in by_phase.items())
        else:
            what = f"checked only, nothing changed ({seen.get(host, 0)} task(s) ok)"
        rows.append((host, what))
    return rows


def failures(record: dict) -> list[str]:
    """What failed, where and why (the record's masked message), first in the report."""
    lines = [
        f"{ev['status'].upper()}: task '{_task_name(ev)}' ({phase_of(ev)}) on host {ev['host']}: "
        + (str((ev.get("result") or {}).get("msg") or "(no message recorded)"))[:600]
        for ev in _events(record)
        if ev["status"] in BROKEN
    ]
    if record.get("status") not in (None, "successful") and not lines:
        lines.append(
            f"run {record.get('status')}: {record.get('note') or 'no failing task recorded'}"
        )
    return lines


def data_loss(record: dict) -> str:
    """One sentence, with numbers, from what the record holds; 'not measured' when nothing."""
    events = _events(record)
    for ev in reversed(events):
        res = ev.get("result") or {}
        if ev.get("action", "").endswith("drill_scorecard") and res.get("rows_committed"):
            total, lost = int(res["rows_committed"]), int(res.get("rows_lost") or 0)
            if not lost:
                return f"No data lost: {total} of {total} sentinel rows present."
            return (
                f"RPO {res.get('rpo_s')} s: {lost} of {total} sentinel rows missing "
                f"({total - lost} present)."
            )
    if record.get("check_mode"):
        return "No data lost: a check-mode run changes nothing."
    for ev in reversed(events):
        res = ev.get("result") or {}
        if not ev.get("action", "").endswith("pg_pitr") or ev["status"] not in ("changed", "ok"):
            continue
        for table in res.get("tables") or []:
            if table.get("rows_before") is not None and table.get("rows_after") is not None:
                return (
                    f"Table {table.get('name', '?')} restored: {table['rows_before']} rows "
                    f"before, {table['rows_after']} after; other tables untouched."
                )
        reached = _when(res.get("reached_time"))
        if reached:
            started = _epoch(record["started_at"])
            return (
                f"Database restored to {res['reached_time']} (last replayed commit, LSN "
                f"{res.get('reached_lsn', '?')}): writes committed in the "
                f"{max(started - reached, 0):.1f} s from then to the rollback's start "
                f"({record['started_at']}) and during it are lost; their rows were not counted."
            )
        if res.get("plan"):
            target = (res["plan"].get("target") or {}) if isinstance(res["plan"], dict) else {}
            return (
                f"Database restored towards {json.dumps(target)[:200]}; writes after that point "
                "are lost; the window was not measured (no reached time in the record)."
            )
    return (
        "Data loss not measured: the record holds no database restore and no sentinel-row "
        "count (this runbook does not restore data)."
    )


def timeline(record: dict) -> list[tuple[float | None, str]]:
    """(epoch, line) from detection and decision, through approval, to the phases and end."""
    items: list[tuple[float, str]] = []
    first: list[str] = []
    for ev in _events(record):
        res = ev.get("result") or {}
        if ev.get("action", "").endswith("rollback_decision") and "verdict" in res:
            at = _when(res.get("evaluated_at")) or _when(ev.get("ts"))
            fired = ", ".join(res.get("fired") or []) or "none"
            items.append(
                (at, f"detection: triggers fired: {fired} (window {res.get('window_s')} s)")
            )
            items.append(
                (
                    _when(ev.get("ts")),
                    f"decision: {res.get('verdict')}, severity {res.get('severity')}, action "
                    f"{res.get('action')}, approvals required "
                    f"{', '.join(res.get('approvals_required') or []) or 'none'}",
                )
            )
        if ev.get("action", "").endswith("approval_gate"):
            req = res.get("request") or {}
            decision = req.get("decision") or {}
            if req.get("created_at"):
                items.append(
                    (
                        _when(req["created_at"]),
                        f"rollback requested by {req.get('requester')} (ticket "
                        f"{req.get('ticket') or '-'}, severity {req.get('severity')}"
                        + (
                            f", decided by run {decision.get('run_id')}: "
                            f"{decision.get('verdict')} {decision.get('severity')}"
                            if decision
                            else ", no recorded decision"
                        )
                        + ")",
                    )
                )
            for s in res.get("signers") or []:
                items.append(
                    (
                        _when(s.get("signed_at")),
                        f"approved by {s['principal']} ({', '.join(s['roles'])})",
                    )
                )
            items.append((_when(ev.get("ts")), f"approval gate: {res.get('mode', ev['status'])}"))
    if not any(line.startswith(("detection", "rollback requested")) for _at, line in items):
        first.append(
            "detection and decision: not recorded in this run (no decision step or signed "
            f"request in it); reason given: {record.get('reason') or '(none)'}"
        )
    items.append((_epoch(record["started_at"]), "runbook started"))
    for p in phases(record):
        state = f"{p['failed']} failed" if p["failed"] else f"{p['changed']} change(s)"
        items.append(
            (p["start"], f"phase {p['phase']} ({hms(p['start'])}-{hms(p['end'])}, {state})")
        )
    for ev in _events(record):
        if ev["status"] in BROKEN:
            items.append(
                (
                    _when(ev.get("ts")),
                    f"{ev['status']}: {ev['host']} {phase_of(ev)}: {_task_name(ev)}",
                )
            )
    items.append((_epoch(record["finished_at"]), f"runbook finished: {record.get('status')}"))
    ordered = sorted((i for i in items if i[0] is not None), key=lambda i: i[0])
    return [(None, line) for line in first] + ordered


def _timeline_lines(record: dict) -> list[str]:
    return [
        (
            f"{datetime.datetime.fromtimestamp(at, datetime.UTC):%Y-%m-%d %H:%M:%S} UTC "
            if at
            else ""
        )
        + line
        for at, line in timeline(record)
    ]


def _approvals(record: dict) -> list[str]:
    approvals = record.get("approvals") or {}
    appr = [f"mode: {approvals.get('mode', 'no gate in this runbook')}"]
    for s in approvals.get("signers", []):
        appr.append(f"signed by {s['principal']} ({', '.join(s['roles'])})")
    if approvals.get("break_glass_reason"):
        appr.append(f"BREAK-GLASS: {approvals['break_glass_reason']}")
    state = record.get("break_glass_state")  # the trail's, added by `knowngood report`
    if state and state.get("state") == "closed":
        signed = ", ".join(
            f"{s['principal']} ({s.get('role') or ', '.join(s.get('roles') or [])})"
            for s in state.get("signers") or []
        )
        appr.append(
            f"break-glass CLOSED by {state['closed_by']} at {state['closed_at']}; "
            f"signed after the fact by {signed}"
        )
    elif state:
        signed = ", ".join(s["principal"] for s in state.get("signers") or []) or "nobody"
        appr.append(
            f"break-glass OPEN for {state['age_h']} h: missing "
            f"{', '.join(state.get('missing_roles') or []) or '?'}; signed so far: {signed}; "
            f"sign with: knowngood breakglass sign {record.get('run_id')} --key K --signer NAME"
        )
        if state.get("escalations"):
            appr.append(
                f"escalated {state['escalations']} time(s), last at {state['last_escalated_at']}"
            )
    elif approvals.get("post_hoc_approval") == "open":
        appr.append(
            f"post-hoc approval OPEN: knowngood approve {approvals.get('post_hoc_request_file')}"
        )
    return appr


def _review(record: dict) -> list[str]:
    """The post-incident review from the trail (added by `knowngood report`): findings, each
    action item with owner, due date and state, who closed it and when."""
    from knowngood import review

    state = record.get("review_state")
    if not state:
        return [
            "no post-incident review recorded: knowngood review open "
            f"{record.get('run_id')} --by NAME"
        ]
    lines = [
        f"review opened by {state['opened_by']} at {state['opened_at']}"
        + (f": {state['summary']}" if state.get("summary") else "")
    ]
    lines += [f"finding {f['id']}: {f['text']}" for f in state["findings"]]
    lines += [
        f"action {a['id']}: {a['text']} (owner {a['owner']}, due {a['due']}): "
        + review.item_text(a)
        for a in state["actions"]
    ]
    if state["state"] == "closed":
        deferred = (
            f"; deferred {', '.join(state['deferred'])}: {state['defer_reason']}"
            if state["deferred"]
            else ""
        )
        lines.append(f"review CLOSED by {state['closed_by']} at {state['closed_at']}{deferred}")
    else:
        lines.append(f"review OPEN: close with knowngood review close {record.get('run_id')}")
    return lines


def _sections(rep: Report) -> list[tuple[str, list[str]]]:
    """(heading, lines); the failure first when the run failed, then section 7 and the rest."""
    r, n = rep.record, rep.notes
    verify = [
        f"{ev['host']}: {phase_of(ev)}: {_task_name(ev)}: {ev['status']} "
        f"{(ev.get('result') or {}).get('msg', '')}"[:200]
        for ev in _events(r)
        if any(h in ev["task"].lower() for h in VERIFY_HINTS)
    ]
    decision = next(
        (
            e["result"]
            for e in _events(r)
            if e.get("action", "").endswith("rollback_decision") and e.get("result")
        ),
        {},
    )
    cause = n.get("root_cause") or "(to be completed by the operator)"
    hints = []
    if decision.get("fired"):
        hints.append(f"triggers that fired: {', '.join(decision['fired'])}")
    fail = failures(r)
    if fail:
        hints.append(f"the run failed at: {fail[0]}"[:300])
    out = [("Failure", fail)] if fail else []
    return out + [
        (
            "Incident Description",
            [
                n.get("description") or r.get("reason") or "(not given)",
                f"ticket {r.get('ticket') or '(none)'}; run {r.get('run_id')} by {r.get('user')}"
                f" (key {r.get('key_fingerprint') or 'n/a'}); result {r.get('status')}"
                + ("; CHECK MODE, nothing changed" if r.get("check_mode") else ""),
            ],
        ),
        ("Timeline", _timeline_lines(r)),
        ("Root Cause Analysis", [cause] + [f"from the record: {h}" for h in hints]),
        (
            "Rollback Procedure Used",
            [
                f"playbook {Path(r.get('playbook', '?')).name}, "
                f"inputs {json.dumps(r.get('extra_vars', {}))}"
            ]
            + phase_lines(r),
        ),
        ("Hosts and what was done there", [f"{h}: {what}" for h, what in hosts_touched(r)]),
        (
            "Impact Assessment",
            [
                data_loss(r),
                f"duration {r.get('duration_s')} s on {len(hosts_touched(r))} host(s)",
                f"metrics: {rep.metrics_note}",
            ]
            + (
                [
                    "after the run: not captured (the capture ended with the run; "
                    "KNOWNGOOD_METRICS_AFTER_S makes the run wait and capture that too)"
                ]
                if rep.series and rep.window[3] - rep.window[2] < 2
                else []
            )
            + [f"{label}: before {b}, during {d}, after {a}" for label, b, d, a in impact(rep)],
        ),
        ("Preventive Recommendations", [n.get("recommendations") or "(to be completed)"]),
        ("Post-incident Review", _review(r)),
        ("Approvals", _approvals(r)),
        ("Verification", verify or ["(no verification step in this run)"]),
        (
            "Notified",
            [
                f"{x.get('channel')} {x.get('target')}: {x.get('event')} -> {x.get('outcome')}"
                + (
                    f" after {x.get('attempts')} attempt(s) ({x.get('error')})"
                    if x.get("outcome") == "failed"
                    else ""
                )
                for x in r.get("notifications", [])
            ]
            or ["(no notifications recorded)"],
        ),
    ]


def task_log(record: dict) -> list[tuple[str, str, str, str, str, str]]:
    """(time, phase, host, task, status, message) per event: the full dump, folded away."""
    return [
        (
            str(ev.get("ts", ""))[11:19],
            phase_of(ev),
            ev["host"],
            _task_name(ev),
            ev["status"],
            f"{ev.get('duration_s', 0):.2f} s "
            + str((ev.get("result") or {}).get("msg") or "")[:160].replace("\n", " "),
        )
        for ev in _events(record)
    ]


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(rep: Report) -> str:
    out = [f"# Incident report: {rep.record.get('ticket') or rep.record.get('run_id')}", ""]
    for title, lines in _sections(rep):
        if title == "Failure":
            out += ["## Failure", ""] + [f"> **{line}**" for line in lines] + [""]
            continue
        out += [f"## {title}", ""] + [f"- {line}" for line in lines] + [""]
    log = task_log(rep.record)
    out += [
        "## Full task log",
        "",
        "<details>",
        f"<summary>{len(log)} task results (time UTC, phase, host, task, status)</summary>",
        "",
        "| time | phase | host | task | status | duration, message |",
        "|---|---|---|---|---|---|",
    ]
    out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in log]
    out += ["", "</details>", ""]
    return "\n".join(out)


def _ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """Round tick positions (epoch seconds) between lo and hi."""
    span = max(hi - lo, 1)
    step = next(
        (s for s in (5, 10, 15, 30, 60, 120, 300, 600, 900, 1800) if span / s <= count), 3600
    )
    first = (int(lo) // step + 1) * step
    return [float(t) for t in range(first, int(hi) + 1, step)]


def _nice_top(value: float) -> float:
    for top in (4, 20, 40, 100, 200, 400, 1000, 2000, 4000, 10000, 20000, 40000):
        if value <= top:
            return float(top)
    return float(value)


def svg_chart(rep: Report, width: int = 820, height: int = 300) -> str:
    """Error rate (red, left axis %) and p95 latency (blue, right axis ms) over UTC time."""
    before, start, end, after = rep.window
    span = max(after - before, 1)
    left, right, top_pad, bottom = 62, 66, 26, 48
    plot_h = height - top_pad - bottom

    def x(t: float) -> float:
        return left + (t - before) / span * (width - left - right)

    def y(share: float) -> float:
        return top_pad + plot_h - min(max(share, 0), 1) * plot_h

    p95max = _nice_top(max([v for _t, v in rep.series.get("p95_ms", [])] + [1.0]))
    err_max = max([v for _t, v in rep.series.get("error_ratio", [])] + [0.0])
    err_top = next((top for top in (0.04, 0.2, 0.4) if err_max <= top), 1.0)
    base = height - bottom
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" '
        'aria-label="error rate and p95 latency over time (UTC)" font-family="sans-serif">',
        f'<rect width="{width}" height="{height}" fill="#fff"/>',
        f'<rect x="{x(start):.1f}" y="{top_pad}" width="{max(x(end) - x(start), 2):.1f}" '
        f'height="{plot_h}" fill="#ffe9a8"/>',
        f'<text x="{x(start) if x(start) < width / 2 else x(end):.1f}" y="{top_pad - 6}" '
        f'font-size="11" text-anchor="{"start" if x(start) < width / 2 else "end"}">rollback run '
        f"{hms(start)}-{hms(end)} UTC</text>",
    ]
    for i in range(5):  # horizontal grid with both axes' values
        share = i / 4
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(share):.1f}" y2="{y(share):.1f}" '
            'stroke="#e4e4e4"/>'
            f'<text x="{left - 6}" y="{y(share) + 4:.1f}" font-size="10" text-anchor="end" '
            f'fill="#d62728">{share * err_top:.0%}</text>'
            f'<text x="{width - right + 6}" y="{y(share) + 4:.1f}" font-size="10" '
            f'fill="#1f77b4">{share * p95max:.0f}</text>'
        )
    for t in _ticks(before, after):
        parts.append(
            f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{base}" y2="{base + 5}" stroke="#333"/>'
            f'<text x="{x(t):.1f}" y="{base + 17}" font-size="10" text-anchor="middle">'
            f"{hms(t)}</text>"
        )
    parts.append(
        f'<line x1="{left}" y1="{base}" x2="{width - right}" y2="{base}" stroke="#333"/>'
        f'<line x1="{left}" y1="{top_pad}" x2="{left}" y2="{base}" stroke="#d62728"/>'
        f'<line x1="{width - right}" y1="{top_pad}" x2="{width - right}" y2="{base}" '
        'stroke="#1f77b4"/>'
        f'<text x="{(left + width - right) / 2:.0f}" y="{height - 8}" font-size="12" '
        f'text-anchor="middle">time (UTC, HH:MM:SS)</text>'
        f'<text transform="translate(14 {top_pad + plot_h / 2:.0f}) rotate(-90)" font-size="12" '
        'text-anchor="middle" fill="#d62728">error rate</text>'
        f'<text transform="translate({width - 12} {top_pad + plot_h / 2:.0f}) rotate(90)" '
        'font-size="12" text-anchor="middle" fill="#1f77b4">p95 latency (ms)</text>'
    )
    drawn = 0
    gap = 3 * float((rep.record.get("metrics") or {}).get("step_s") or max(span / 120, 2))
    for name, color, top in (("error_ratio", "#d62728", err_top), ("p95_ms", "#1f77b4", p95max)):
        pts = rep.series.get(name, [])
        if len(pts) < 2:
            continue
        drawn += 1
        for run in _runs(pts, gap):
            coords = " ".join(f"{x(t):.1f},{y(v / top):.1f}" for t, v in run)
            parts.append(
                f'<polyline fill="none" stroke="{color}" stroke-width="3" points="{coords}"/>'
            )
    if not drawn:
        parts.append(
            f'<text x="{width / 2:.0f}" y="{top_pad + plot_h / 2:.0f}" font-size="14" '
            f'text-anchor="middle" fill="#555">no metrics: {html.escape(rep.metrics_note)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _runs(points: list, gap: float) -> list[list]:
    """The points split where samples are missing (a line across a gap would invent data)."""
    runs: list[list] = []
    for t, v in points:
        if runs and t - runs[-1][-1][0] <= gap:
            runs[-1].append((t, v))
        else:
            runs.append([(t, v)])
    return [[run[0], run[0]] if len(run) == 1 else run for run in runs]


def _ul(lines: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{html.escape(str(line))}</li>" for line in lines) + "</ul>"


def _table(head: tuple[str, ...], rows: list) -> str:
    return (
        "<table><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in head)
        + "</tr>"
        + "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
            for row in rows
        )
        + "</table>"
    )


def to_html(rep: Report) -> str:
    r = rep.record
    title = html.escape(f"Incident report: {r.get('ticket') or r.get('run_id')}")
    body = [f"<h1>{title}</h1>"]
    for name, lines in _sections(rep):
        if name == "Failure":
            body.append(
                "<div class='failure'><h2>Failure</h2>"
                + "".join(f"<p>{html.escape(line)}</p>" for line in lines)
                + "</div>"
            )
            continue
        body.append(f"<h2>{html.escape(name)}</h2>")
        if name == "Rollback Procedure Used":
            body.append(_ul(lines[:1]))
            body.append(
                _table(
                    ("phase", "tasks", "hosts", "changes", "failed", "UTC", "seconds"),
                    [
                        (
                            p["phase"],
                            len(p["tasks"]),
                            ", ".join(p["hosts"]),
                            p["changed"],
                            p["failed"],
                            f"{hms(p['start'])}-{hms(p['end'])}",
                            f"{p['end'] - p['start']:.1f}",
                        )
                        for p in phases(r)
                    ],
                )
            )
            continue
        if name == "Hosts and what was done there":
            body.append(
                _table(("host", "what was done there (changed tasks by phase)"), hosts_touched(r))
            )
            continue
        if name == "Post-incident Review" and (r.get("review_state") or {}).get("actions"):
            from knowngood import review

            actions = r["review_state"]["actions"]
            body.append(_ul([line for line in lines if not line.startswith("action ")]))
            body.append(
                _table(
                    ("action", "what", "owner", "due", "state"),
                    [
                        (a["id"], a["text"], a["owner"], a["due"], review.item_text(a))
                        for a in actions
                    ],
                )
            )
            continue
        if name == "Impact Assessment":
            body.append(f"<p class='loss'>{html.escape(lines[0])}</p>")
            body.append(svg_chart(rep))
            lines = lines[1:]
        body.append(_ul(lines))
    log = task_log(r)
    body.append(
        f"<h2>Full task log</h2><details><summary>{len(log)} task results "
        "(time UTC, phase, host, task, status)</summary>"
        + _table(("time", "phase", "host", "task", "status", "duration, message"), log)
        + "</details>"
    )
    style = (
        "body{font-family:sans-serif;max-width:900px;margin:2em auto;color:#222}"
        "h1{background:#243b55;color:#fff;padding:.5em}h2{border-bottom:2px solid #243b55}"
        "li{margin:.2em 0}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top;"
        "font-size:.9em}.failure{border:3px solid #cf222e;background:#ffebe9;padding:0 1em}"
        ".failure h2{color:#cf222e;border-color:#cf222e}.loss{font-weight:bold}"
        "summary{cursor:pointer}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )


def write(record: dict, notes: dict, prometheus_url: str, fmt: str, out: Path) -> Path:
    rep = build(record, notes, prometheus_url)
    out.write_text(to_html(rep) if fmt == "html" else to_markdown(rep))
    return out
