"""Incident reports (strategy section 7) from an audit record: Markdown or one HTML file.

Sections: incident description, root cause analysis (operator fields), rollback procedure used
(steps and timings), impact assessment (duration, hosts, error rate and p95 latency before,
during and after from Prometheus, drawn as an inline SVG chart; the data-loss window of a
database rollback), preventive recommendations, timeline, approvals, verification, notified.
"""

from __future__ import annotations

import datetime
import html
import json
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

OPERATOR_FIELDS = ("description", "root_cause", "recommendations")
SERIES = {
    "error_ratio": 'sum(rate(app_requests_total{code=~"5..",job="app"}[10s]))'
    ' / sum(rate(app_requests_total{job="app"}[10s]))',
    "p95_ms": "1000 * histogram_quantile(0.95, sum by (le) "
    '(rate(app_request_duration_seconds_bucket{job="app"}[10s])))',
}
VERIFY_HINTS = ("verify", "probe", "healthy", "health")


@dataclass
class Report:
    record: dict
    notes: dict = field(default_factory=dict)
    series: dict = field(default_factory=dict)  # name -> [(epoch, value)]
    window: tuple[float, float, float, float] = (0, 0, 0, 0)  # before, start, end, after


def _epoch(ts: str) -> float:
    return (
        datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ")
        .replace(tzinfo=datetime.UTC)
        .timestamp()
    )


def query_range(url: str, query: str, start: float, end: float, step: float) -> list:
    params = urllib.parse.urlencode({"query": query, "start": start, "end": end, "step": step})
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query_range?{params}", timeout=5) as resp:
            body = json.loads(resp.read())
    except (OSError, ValueError):
        return []
    result = body.get("data", {}).get("result", [])
    if not result:
        return []
    return [(float(t), float(v)) for t, v in result[0]["values"] if v not in ("NaN", "+Inf")]


def build(record: dict, notes: dict, prometheus_url: str, margin_s: float = 120) -> Report:
    start, end = _epoch(record["started_at"]), _epoch(record["finished_at"])
    before, after = start - margin_s, min(end + margin_s, datetime.datetime.now().timestamp())
    series = {}
    if prometheus_url:
        step = max(2.0, (after - before) / 120)
        for name, query in SERIES.items():
            series[name] = query_range(prometheus_url, query, before, after, step)
    return Report(record, notes, series, (before, start, end, after))


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


def steps(record: dict) -> list[tuple[str, str, float, int]]:
    """(task, worst status, longest duration, hosts) per task in run order."""
    order: dict[str, list] = {}
    rank = {"ok": 0, "changed": 1, "ignored": 2, "unreachable": 3, "failed": 4}
    for ev in record.get("events", []):
        if ev.get("action") == "ansible.builtin.validate_argument_spec":
            continue
        cur = order.setdefault(ev["task"], ["ok", 0.0, set()])
        if rank.get(ev["status"], 0) > rank.get(cur[0], 0):
            cur[0] = ev["status"]
        cur[1] = max(cur[1], ev.get("duration_s", 0))
        cur[2].add(ev["host"])
    return [(task, s, d, len(h)) for task, (s, d, h) in order.items()]


def data_loss(record: dict) -> str:
    for ev in record.get("events", []):
        res = ev.get("result", {})
        if ev.get("action", "").endswith("pg_pitr") and res.get("plan"):
            plan = res["plan"]
            return (
                f"database restored to {json.dumps(plan)[:300]}; writes after that point are lost"
            )
    return "not a database rollback: no data-loss window"


def _sections(rep: Report) -> list[tuple[str, list[str]]]:
    r, n = rep.record, rep.notes
    approvals = r.get("approvals") or {}
    appr = [f"mode: {approvals.get('mode', 'no gate in this runbook')}"]
    for s in approvals.get("signers", []):
        appr.append(f"signed by {s['principal']} ({', '.join(s['roles'])})")
    if approvals.get("break_glass_reason"):
        appr.append(f"BREAK-GLASS: {approvals['break_glass_reason']}")
    if approvals.get("post_hoc_approval") == "open":
        appr.append(
            f"post-hoc approval OPEN: knowngood approve {approvals.get('post_hoc_request_file')}"
        )
    verify = [
        f"{ev['host']}: {ev['task']}: {ev['status']} {ev['result'].get('msg', '')}"[:200]
        for ev in r.get("events", [])
        if any(h in ev["task"].lower() for h in VERIFY_HINTS)
        and ev["action"] != "ansible.builtin.validate_argument_spec"
    ]
    hosts = sorted(r.get("stats", {}))
    return [
        (
            "Incident description",
            [
                n.get("description") or r.get("reason") or "(not given)",
                f"ticket {r.get('ticket') or '(none)'}; run {r.get('run_id')} by {r.get('user')}"
                f" (key {r.get('key_fingerprint') or 'n/a'}); result {r.get('status')}",
            ],
        ),
        ("Root cause analysis", [n.get("root_cause") or "(to be completed by the operator)"]),
        (
            "Rollback procedure used",
            [
                f"playbook {Path(r.get('playbook', '?')).name}, "
                f"inputs {json.dumps(r.get('extra_vars', {}))}"
            ]
            + [f"{t} - {s}, {d:.2f}s on {h} host(s)" for t, s, d, h in steps(r)],
        ),
        (
            "Impact assessment",
            [f"duration {r.get('duration_s')}s on hosts {', '.join(hosts)}", data_loss(r)]
            + [f"{label}: before {b}, during {d}, after {a}" for label, b, d, a in impact(rep)],
        ),
        ("Preventive recommendations", [n.get("recommendations") or "(to be completed)"]),
        (
            "Timeline",
            [f"{r.get('started_at')} run started"]
            + [
                f"{ev['ts']} {ev['host']} {ev['task']}: {ev['status']}"
                for ev in r.get("events", [])
                if ev["status"] != "ok"
            ]
            + [f"{r.get('finished_at')} run finished: {r.get('status')}"],
        ),
        ("Approvals", appr),
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


def to_markdown(rep: Report) -> str:
    out = [f"# Incident report: {rep.record.get('ticket') or rep.record.get('run_id')}", ""]
    for title, lines in _sections(rep):
        out += [f"## {title}", ""] + [f"- {line}" for line in lines] + [""]
    return "\n".join(out)


def svg_chart(rep: Report, width: int = 760, height: int = 260) -> str:
    """Error rate (red, left axis 0-100%) and p95 latency (blue, right axis) over time."""
    before, start, end, after = rep.window
    span = max(after - before, 1)
    pad = 40

    def x(t: float) -> float:
        return pad + (t - before) / span * (width - 2 * pad)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="error rate and latency">',
        f'<rect width="{width}" height="{height}" fill="#fff"/>',
        f'<rect x="{x(start):.1f}" y="{pad / 2}" width="{max(x(end) - x(start), 2):.1f}" '
        f'height="{height - 1.5 * pad}" fill="#ffe9a8"/>',
        f'<text x="{x(start):.1f}" y="{pad / 2 - 4}" font-size="11">rollback run</text>',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
        'stroke="#333"/>',
    ]
    p95max = max([v for _t, v in rep.series.get("p95_ms", [])] + [1.0])
    for name, color, top in (("error_ratio", "#d62728", 1.0), ("p95_ms", "#1f77b4", p95max)):
        pts = rep.series.get(name, [])
        if len(pts) < 2:
            continue
        coords = " ".join(
            f"{x(t):.1f},{height - pad - min(v / top, 1) * (height - 2 * pad):.1f}" for t, v in pts
        )
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="3" points="{coords}"/>')
    parts.append(
        f'<text x="{pad}" y="{height - 8}" font-size="12" fill="#d62728">error rate (0-100%)</text>'
        f'<text x="{width - 260}" y="{height - 8}" font-size="12" fill="#1f77b4">'
        f"p95 latency (0-{p95max:.0f} ms)</text></svg>"
    )
    return "".join(parts)


def to_html(rep: Report) -> str:
    title = html.escape(f"Incident report: {rep.record.get('ticket') or rep.record.get('run_id')}")
    body = [f"<h1>{title}</h1>"]
    for name, lines in _sections(rep):
        body.append(f"<h2>{html.escape(name)}</h2>")
        if name == "Impact assessment":
            body.append(svg_chart(rep))
        body.append(
            "<ul>" + "".join(f"<li>{html.escape(str(line))}</li>" for line in lines) + "</ul>"
        )
    style = (
        "body{font-family:sans-serif;max-width:900px;margin:2em auto;color:#222}"
        "h1{background:#243b55;color:#fff;padding:.5em}h2{border-bottom:2px solid #243b55}"
        "li{margin:.2em 0}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )


def write(record: dict, notes: dict, prometheus_url: str, fmt: str, out: Path) -> Path:
    rep = build(record, notes, prometheus_url)
    out.write_text(to_html(rep) if fmt == "html" else to_markdown(rep))
    return out
