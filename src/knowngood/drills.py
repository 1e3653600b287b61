"""`knowngood drill run NAME | list | report`: rollback drills with measured RTO and RPO.

A drill is a molecule scenario under molecule/ (prepare -> side_effect -> converge -> verify)
run against the lab; its verify phase writes a scorecard (module drill_scorecard). This module
runs the scenario, shows the scorecard, and turns the history into a report with trends.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from knowngood.errors import DrillError
from knowngood.lab.config import DEFAULT_ROOT
from knowngood.modutils import module_utils

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = REPO / "molecule"


def scenarios() -> list[str]:
    return sorted(
        p.parent.name for p in SCENARIOS.glob("*/molecule.yml") if p.parent.name != "shared"
    )


def drill_dir(lab_dir: Path) -> Path:
    return Path(os.environ.get("KNOWNGOOD_DRILL_DIR") or lab_dir / "audit" / "drills")


def run(name: str, lab_dir: Path, echo: bool = True, timeout: float = 1800) -> dict[str, Any]:
    """Run one drill scenario with molecule; return its scorecard.

    A drill that hangs is a finding, not a wait: past `timeout` seconds the whole scenario is
    killed and the drill fails, naming the phase reached (from the audit trail)."""
    if name not in scenarios():
        raise DrillError(f"no drill {name!r}; drills: {', '.join(scenarios())}")
    if not (lab_dir / "inventory" / "hosts.yml").is_file():
        raise DrillError(f"no lab at {lab_dir}: run `knowngood lab up` first")
    molecule = Path(sys.executable).parent / "molecule"
    if not molecule.exists():
        raise DrillError("molecule is not installed (make venv installs it)")
    run_id = f"drill-{name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    directory = drill_dir(lab_dir)
    env = dict(os.environ)
    env.update(
        KNOWNGOOD_LAB_DIR=str(lab_dir),
        KNOWNGOOD_AUDIT_DIR=str(lab_dir / "audit"),
        KNOWNGOOD_DRILL_DIR=str(directory),
        KNOWNGOOD_DRILL_RUN_ID=run_id,
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
    )
    # The scenarios have no create/destroy (the lab is delegated), so molecule's state outlives
    # a run and marks the scenario prepared: the next run would skip prepare and fail (a
    # quarterly drill, every quarter after the first). Every drill starts from a reset state.
    reset = subprocess.run(
        [str(molecule), "reset", "-s", name],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if reset.returncode != 0:
        raise DrillError(f"molecule reset -s {name} failed: {reset.stdout[-1500:]}")
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(molecule), "test", "-s", name],
        cwd=REPO,
        env=env,
        stdout=None if echo else subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate()
        raise DrillError(
            f"drill {name} exceeded {timeout:.0f}s and was stopped; the audit records under "
            f"{lab_dir / 'audit'} show the last task each phase reached"
        ) from None
    card_path = directory / name / f"{run_id}.json"
    if not card_path.is_file():
        tail = (output or "")[-3000:]
        raise DrillError(
            f"drill {name} ended (rc={proc.returncode}) after {time.monotonic() - started:.0f}s "
            f"without a scorecard: a phase failed before verify\n{tail}"
        )
    card = json.loads(card_path.read_text())
    card["molecule_rc"] = proc.returncode
    card["path"] = str(card_path)
    return card


def summary(card: dict[str, Any]) -> list[str]:
    verdict = "PASSED" if card["passed"] else "MISSED"
    targets = card.get("targets") or {}
    lines = [
        f"drill {card['drill']} {verdict} ({card['run_id']})",
        f"  RTO {card['rto_s']}s (target {targets.get('rto_s')}s); runbook {card['runbook_s']}s",
        f"  RPO {_rpo(card)} (target {targets.get('rpo_s')}s); "
        f"{card['rows_lost']} of {card['rows_committed']} sentinel rows lost",
    ]
    for step in card["steps"]:
        to_next = step["seconds_to_next"]
        lines.append(
            f"    {step['step']:<18} {step['at'][11:23]}"
            + (f"  +{to_next}s" if to_next is not None else "")
        )
    lines += [f"  missed: {m}" for m in card.get("misses", [])]
    return lines


def _rpo(card: dict[str, Any]) -> str:
    """The measured RPO, or its lower bound when every sentinel row was lost."""
    if card["rpo_s"] is None and card.get("rpo_at_least_s") is not None:
        return f"unbounded (at least {card['rpo_at_least_s']}s)"
    return f"{card['rpo_s']}s"


def history(lab_dir: Path) -> list[dict[str, Any]]:
    drill = module_utils("drill")
    return drill.history(str(drill_dir(lab_dir)))


def trends(cards: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per drill: runs, pass rate, last and best RTO, and the change against the run before."""
    out: dict[str, dict[str, Any]] = {}
    for card in sorted(cards, key=lambda c: c["scored_at"]):
        entry = out.setdefault(card["drill"], {"runs": [], "passed": 0})
        entry["runs"].append(card)
        entry["passed"] += 1 if card["passed"] else 0
    for entry in out.values():
        rtos = [c["rto_s"] for c in entry["runs"] if c["rto_s"] is not None]
        entry["last_rto_s"] = rtos[-1] if rtos else None
        entry["best_rto_s"] = min(rtos) if rtos else None
        entry["rto_change_s"] = round(rtos[-1] - rtos[-2], 2) if len(rtos) > 1 else None
        entry["last_rpo_s"] = entry["runs"][-1]["rpo_s"]
    return out


def text_report(cards: list[dict[str, Any]]) -> str:
    if not cards:
        return "no drills recorded yet: knowngood drill run <name>"
    head = ("drill", "runs", "passed", "last RTO", "change", "best", "RPO")
    lines = ["{:<18} {:>4} {:>6} {:>9} {:>8} {:>7} {:>6}".format(*head)]
    for name, entry in sorted(trends(cards).items()):
        change = entry["rto_change_s"]
        lines.append(
            "{:<18} {:>4} {:>6} {:>9} {:>8} {:>7} {:>6}".format(
                name,
                len(entry["runs"]),
                entry["passed"],
                _num(entry["last_rto_s"]),
                f"{change:+.1f}s" if change is not None else "-",
                _num(entry["best_rto_s"]),
                _num(entry["last_rpo_s"]),
            )
        )
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _scored(card: dict[str, Any]) -> float:
    return datetime.fromisoformat(card["scored_at"].replace("Z", "+00:00")).timestamp()


def _date_ticks(lo: float, hi: float) -> list[tuple[float, str]]:
    """Tick positions and their dates: days over a span of days, else date and time."""
    span = hi - lo
    if span < 1:
        return [(lo, datetime.fromtimestamp(lo, UTC).strftime("%Y-%m-%d %H:%M"))]
    fmt = "%Y-%m-%d" if span >= 3 * 86400 else "%m-%d %H:%M"
    return [
        (t, datetime.fromtimestamp(t, UTC).strftime(fmt))
        for t in (lo + span * i / 4 for i in range(5))
    ]


def _chart(runs: list[dict[str, Any]], key: str, what: str, target: float | None) -> str:
    """One measure (RTO or RPO) per run over the runs' dates, as an inline SVG: dots green when
    the run passed, the objective as a dashed line, dated x ticks, axis titles."""
    measured = [(c, c[key]) for c in runs if c.get(key) is not None]
    if not measured:
        return f"<p>no {what} measured in {len(runs)} run(s)</p>"
    width, height, left, right, top_pad, bottom = 640, 210, 56, 48, 16, 50
    values = [v for _c, v in measured]
    highest = max(values + ([target] if target else []) + [0.5]) * 1.1
    top = next((t for t in (1, 2, 4, 8, 10, 20, 40, 80, 100, 200, 400, 800) if t >= highest), 0)
    top = top or highest
    times = [_scored(c) for c, _v in measured]
    lo, hi = min(times), max(times)
    plot_w, plot_h = width - left - right, height - top_pad - bottom

    def x(t: float) -> float:
        return left + (0.5 if hi == lo else (t - lo) / (hi - lo)) * plot_w

    def y(value: float) -> float:
        return top_pad + plot_h - (value / top) * plot_h

    base = top_pad + plot_h
    coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in zip(times, values, strict=True))
    dots = "".join(
        f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="4" '
        f'fill="{"#1a7f37" if c["passed"] else "#cf222e"}"><title>{c["scored_at"][:19]} '
        f"{what} {v}s</title></circle>"
        for (c, v), t in zip(measured, times, strict=True)
    )
    ticks = "".join(
        f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{base}" y2="{base + 5}" stroke="#888"/>'
        f'<text x="{x(t):.1f}" y="{base + 17}" font-size="10" text-anchor="middle">{label}</text>'
        for t, label in _date_ticks(lo, hi)
    )
    yticks = "".join(
        f'<text x="{left - 5}" y="{y(top * i / 4) + 4:.1f}" font-size="10" text-anchor="end">'
        f"{top * i / 4:g}</text>"
        f'<line x1="{left}" x2="{width - right}" y1="{y(top * i / 4):.1f}" '
        f'y2="{y(top * i / 4):.1f}" stroke="#eee"/>'
        for i in range(5)
    )
    goal = (
        f'<line x1="{left}" x2="{width - right}" y1="{y(target):.1f}" y2="{y(target):.1f}" '
        f'stroke="#9a6700" stroke-dasharray="5,4"/><text x="{width - right}" '
        f'y="{y(target) - 4:.1f}" text-anchor="end" font-size="11" fill="#9a6700">'
        f"objective {target}s</text>"
        if target is not None
        else ""
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{what} per run" font-family="sans-serif">'
        f'<rect width="{width}" height="{height}" fill="#fff"/>{yticks}'
        f'<line x1="{left}" y1="{base}" x2="{width - right}" y2="{base}" stroke="#888"/>'
        f'<line x1="{left}" y1="{top_pad}" x2="{left}" y2="{base}" stroke="#888"/>{ticks}'
        f'<text x="{left + plot_w / 2:.0f}" y="{height - 8}" font-size="12" '
        f'text-anchor="middle">drill run date (UTC)</text>'
        f'<text transform="translate(14 {top_pad + plot_h / 2:.0f}) rotate(-90)" '
        f'font-size="12" text-anchor="middle">{what} (s)</text>{goal}'
        f'<polyline fill="none" stroke="#0969da" stroke-width="2" points="{coords}"/>{dots}</svg>'
    )


def html_report(cards: list[dict[str, Any]]) -> str:
    rows, charts = [], []
    for name, entry in sorted(trends(cards).items()):
        targets = entry["runs"][-1].get("targets") or {}
        for key, what in (("rto_s", "RTO"), ("rpo_s", "RPO")):
            charts.append(
                f"<h2>{html.escape(name)}: {what} per run</h2>"
                + _chart(entry["runs"], key, what, targets.get(key))
            )
        for card in entry["runs"]:
            rows.append(
                "<tr>"
                + "".join(
                    f"<td>{html.escape(str(v))}</td>"
                    for v in (
                        card["drill"],
                        card["scored_at"][:19].replace("T", " "),
                        _num(card["rto_s"]),
                        _num(card["rpo_s"]),
                        card["rows_lost"] if card["rows_lost"] is not None else "-",
                        "passed" if card["passed"] else "missed: " + "; ".join(card["misses"]),
                    )
                )
                + "</tr>"
            )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>knowngood drills</title>"
        "<style>body{font-family:sans-serif;margin:2em;max-width:60em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em}</style>"
        "</head><body><h1>Rollback drills</h1>"
        f"<pre>{html.escape(text_report(cards))}</pre>{''.join(charts)}"
        "<h2>Every run</h2><table><tr><th>drill</th><th>scored (UTC)</th><th>RTO</th>"
        f"<th>RPO</th><th>rows lost</th><th>verdict</th></tr>{''.join(rows)}</table>"
        "</body></html>"
    )


def cmd_drill(args: argparse.Namespace) -> int:
    lab_dir = Path(args.lab_dir or os.environ.get("KNOWNGOOD_LAB_DIR") or DEFAULT_ROOT)
    if args.drill_command == "list":
        print("\n".join(scenarios()))
        return 0
    if args.drill_command == "report":
        cards = history(lab_dir)
        if args.json:
            print(json.dumps({"lab_dir": str(lab_dir), "drills": trends(cards)}, indent=2))
            return 0
        print(text_report(cards))
        if args.html:
            Path(args.html).write_text(html_report(cards))
            print(f"HTML report: {args.html}")
        return 0
    if not args.name:
        raise DrillError("drill run needs a NAME: " + ", ".join(scenarios()))
    card = run(args.name, lab_dir, echo=not args.quiet, timeout=args.timeout)
    print("\n".join(summary(card)))
    return 0 if card["passed"] and card["molecule_rc"] == 0 else 1


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "drill",
        help="rollback drills: run NAME | list | report [--html FILE]",
        description="knowngood drill run NAME | list | report [--html FILE]",
    )
    parser.add_argument("drill_command", choices=["run", "list", "report"])
    parser.add_argument("name", nargs="?")
    parser.add_argument("--lab-dir", help="lab root (default $KNOWNGOOD_LAB_DIR)")
    parser.add_argument("--html", help="report: also write a self-contained HTML file")
    parser.add_argument("--quiet", action="store_true", help="run: print only the scorecard")
    parser.add_argument("--json", action="store_true", help="report: the trends as JSON")
    parser.add_argument(
        "--timeout", type=float, default=1800, help="run: seconds before the drill is stopped"
    )
    parser.set_defaults(func=cmd_drill)
