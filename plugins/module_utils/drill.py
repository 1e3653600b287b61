# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Drill bookkeeping: phase marks, sentinel ticks in the database, and the scorecard.

A drill lives in <drill_dir>/<name>/current.json from `started` to `scored`; every molecule
phase (prepare, side_effect, converge, verify) is a separate playbook run, so state is on disk.
RTO is measured from the failure's injection to verification passing; RPO from sentinel rows
("ticks") committed before the failure and counted again after recovery.
"""

import json
import os
import time
from datetime import UTC, datetime

from ansible_collections.knowngood.runbooks.plugins.module_utils import postgres

TICKS_TABLE = "knowngood_drill_ticks"


class DrillError(Exception):
    """A drill cannot be recorded or scored; the message says why."""


def now_iso():
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _parse(stamp):
    return datetime.fromisoformat(stamp)


def default_dir():
    explicit = os.environ.get("KNOWNGOOD_DRILL_DIR")
    if explicit:
        return explicit
    audit = os.environ.get("KNOWNGOOD_AUDIT_DIR")
    if audit:
        return os.path.join(audit, "drills")
    return os.path.join(os.path.expanduser("~"), ".local", "state", "knowngood", "drills")


def _current(drill_dir, name):
    return os.path.join(drill_dir, name, "current.json")


def _write(path, document):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(document, handle, indent=2, sort_keys=True)
    os.replace(tmp, path)


def load(drill_dir, name):
    path = _current(drill_dir, name)
    try:
        with open(path) as handle:
            return json.load(handle)
    except OSError as err:
        raise DrillError(
            "drill %s was not started (no %s): run its prepare phase first" % (name, path)
        ) from err


def start(drill_dir, name, run_id, targets):
    state = {
        "drill": name,
        "run_id": run_id or "drill-%s-%s" % (name, datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")),
        "started_at": now_iso(),
        "targets": targets,
        "marks": {},
        "ticks": {},
        "data": {},
    }
    _write(_current(drill_dir, name), state)
    return state


def mark(drill_dir, name, label, data=None):
    state = load(drill_dir, name)
    state["marks"][label] = now_iso()
    if data:
        state["data"].update(data)
    _write(_current(drill_dir, name), state)
    return state


def epochs(state):
    return {label: _parse(stamp).timestamp() for label, stamp in state["marks"].items()}


def _connect(dsn):
    return postgres.connect(dsn, error=DrillError)


def tick(drill_dir, name, dsn, count, interval):
    """Commit `count` sentinel rows `interval` s apart; remember each one (id, commit time)."""
    state = load(drill_dir, name)
    committed = []
    with _connect(dsn) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS %s (id bigserial PRIMARY KEY, drill text NOT NULL, "
            "run_id text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())" % TICKS_TABLE
        )
        for index in range(count):
            row = conn.execute(
                "INSERT INTO %s (drill, run_id) VALUES (%%s, %%s) RETURNING id, at" % TICKS_TABLE,
                (name, state["run_id"]),
            ).fetchone()
            committed.append([row[0], row[1].isoformat()])
            if index + 1 < count:
                time.sleep(interval)
    rows = (state.get("ticks") or {}).get("rows", []) + committed
    state["ticks"] = {
        "committed": len(rows),
        "rows": rows,
        "newest_id": rows[-1][0],
        "newest_at": rows[-1][1],
    }
    _write(_current(drill_dir, name), state)
    return state


def writable(candidates):
    """The first DSN whose server accepts writes: after a failover the primary has moved."""
    errors = []
    for dsn in candidates:
        try:
            with _connect(dsn) as conn:
                if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    return dsn
                errors.append("in recovery")
        except Exception as exc:  # a fenced or lost node answers nothing
            errors.append(type(exc).__name__)
    raise DrillError("no candidate database accepts writes (%s)" % ", ".join(errors))


def survivors(dsn, run_id):
    """The sentinel rows of run_id the database holds now: their count, newest and ids."""
    with _connect(dsn) as conn:
        exists = conn.execute("SELECT to_regclass(%s)", (TICKS_TABLE,)).fetchone()[0]
        if exists is None:
            return {"count": 0, "newest_at": None, "ids": []}
        ids = [
            row[0]
            for row in conn.execute(
                "SELECT id FROM %s WHERE run_id = %%s ORDER BY id" % TICKS_TABLE, (run_id,)
            )
        ]
        newest = conn.execute(
            "SELECT max(at) FROM %s WHERE run_id = %%s" % TICKS_TABLE, (run_id,)
        ).fetchone()[0]
    return {"count": len(ids), "newest_at": newest.isoformat() if newest else None, "ids": ids}


def data_loss(rows, surviving_ids):
    """The data-loss window the sentinel rows prove, from rows committed [[id, at], ...] (in
    commit order) and the ids found after recovery.

    The database came back to a point between the newest row committed before the oldest lost
    one that survived and that lost row, so every commit from that survivor up to the newest
    lost row is gone: the window is the newest lost row's commit time minus that survivor's.
    With no survivor before the oldest lost row the evidence bounds nothing (the database may
    have come back to any older point: the drill's start, the last backup, an empty cluster);
    the window is then unbounded and only its lower bound is known, the span of the lost rows.

    Returns (rows lost, window in seconds or None when unbounded, lower bound in seconds).
    """
    kept = set(surviving_ids)
    lost = [row for row in rows if row[0] not in kept]
    if not lost:
        return 0, 0.0, 0.0
    oldest, newest = _parse(lost[0][1]), _parse(lost[-1][1])
    before = [row for row in rows if row[0] in kept and _parse(row[1]) < oldest]
    at_least = round((newest - oldest).total_seconds(), 3)
    if not before:
        return len(lost), None, at_least
    return len(lost), round((newest - _parse(before[-1][1])).total_seconds(), 3), at_least


def _seconds(state, start, end):
    marks = state["marks"]
    if start not in marks or end not in marks:
        return None
    return round((_parse(marks[end]) - _parse(marks[start])).total_seconds(), 3)


def score(state, surviving=None):
    """The scorecard: RTO, RPO, phase timings, and pass or fail against the targets."""
    marks = state["marks"]
    ordered = sorted(marks.items(), key=lambda item: item[1])
    steps = []
    for index, (label, stamp) in enumerate(ordered):
        following = ordered[index + 1][1] if index + 1 < len(ordered) else None
        seconds = (
            round((_parse(following) - _parse(stamp)).total_seconds(), 3) if following else None
        )
        steps.append({"step": label, "at": stamp, "seconds_to_next": seconds})
    rto = _seconds(state, "failure_injected", "recovered")
    card = {
        "drill": state["drill"],
        "run_id": state["run_id"],
        "started_at": state["started_at"],
        "scored_at": now_iso(),
        "rto_s": rto,
        "runbook_s": _seconds(state, "runbook_started", "runbook_finished"),
        "rpo_s": None,
        "rpo_at_least_s": None,
        "rows_committed": None,
        "rows_lost": None,
        "steps": steps,
        "targets": state["targets"],
        "data": state["data"],
    }
    ticks = state.get("ticks") or {}
    if ticks and surviving is not None:
        lost, window, at_least = data_loss(ticks["rows"], surviving["ids"])
        card["rows_committed"] = ticks["committed"]
        card["rows_lost"] = lost
        card["rpo_s"] = window
        card["rpo_at_least_s"] = at_least
    misses = []
    if "recovered" not in marks:
        misses.append("never verified green")
    targets = state["targets"] or {}
    if rto is not None and targets.get("rto_s") is not None and rto > targets["rto_s"]:
        misses.append("RTO %.1fs over the %.1fs target" % (rto, targets["rto_s"]))
    rpo = card["rpo_s"]
    if targets.get("rpo_s") is not None and ticks:
        if surviving is None:
            misses.append("RPO not measured")
        elif rpo is None:
            # Every sentinel row is gone: nothing proves how far back the data went, so the
            # objective cannot be shown to hold (it used to be assumed from the drill's start).
            misses.append(
                f"RPO unbounded: all {card['rows_lost']} sentinel rows lost, so the data went "
                f"back past the oldest (at least {card['rpo_at_least_s']:.1f}s of commits lost) "
                f"and nothing bounds the loss within the {targets['rpo_s']:.1f}s target"
            )
        elif rpo > targets["rpo_s"]:
            misses.append(
                f"RPO {rpo:.1f}s over the {targets['rpo_s']:.1f}s target "
                f"({card['rows_lost']} of {card['rows_committed']} sentinel rows lost)"
            )
    card["misses"] = misses
    card["passed"] = not misses
    return card


def record(drill_dir, card):
    """Append the scorecard to the drill history; the current drill is closed."""
    name = card["drill"]
    path = os.path.join(drill_dir, name, "%s.json" % card["run_id"])
    _write(path, card)
    with open(os.path.join(drill_dir, "history.jsonl"), "a") as handle:
        handle.write(json.dumps(card, sort_keys=True) + "\n")
    current = _current(drill_dir, name)
    if os.path.exists(current):
        os.remove(current)
    return path


def history(drill_dir):
    path = os.path.join(drill_dir, "history.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


LAB_MARKER = "lab.json"
LAB_INVENTORY = os.path.join("inventory", "hosts.json")


def _lab_hosts(node, out):
    for name, hostvars in (node.get("hosts") or {}).items():
        hostvars = hostvars or {}
        out[name] = (hostvars.get("ansible_connection", ""), hostvars.get("ansible_host", ""))
    for child in (node.get("children") or {}).values():
        _lab_hosts(child or {}, out)
    return out


def lab_check(root, hosts, purpose):
    """The lab root when the drill's inventory is the lab `knowngood lab up` made there.

    hosts: [name, connection, address] of every inventory host the drill's runbooks act on.
    A drill that breaks things through the lab (`knowngood lab break`) must run its runbooks
    against that very lab: the marker and the inventory `knowngood lab up` writes must be
    there, and every host must be one of the lab's, reached the same way. Raises DrillError
    saying why not; nothing here comes from a variable alone (the root only says where to look).
    """
    what = "%s, so it runs only against the knowngood lab" % purpose
    if not root:
        raise DrillError(
            "refused outside a lab: %s, and this inventory names no lab (knowngood_lab_root). "
            "On a staging environment run the drills that inject their failure themselves "
            "(drill-table-restore, drill-database-pitr, drill-code-rollback)" % what
        )
    marker = os.path.join(root, LAB_MARKER)
    inventory = os.path.join(root, LAB_INVENTORY)
    if not (os.path.isfile(marker) and os.path.isfile(inventory)):
        raise DrillError(
            "refused outside a lab: %s, and %s holds no lab (`knowngood lab up` writes %s and "
            "%s there)" % (what, root, LAB_MARKER, LAB_INVENTORY)
        )
    try:
        with open(marker) as handle:
            json.load(handle)
        with open(inventory) as handle:
            lab = _lab_hosts(json.load(handle).get("all") or {}, {})
    except (OSError, ValueError, AttributeError) as exc:
        raise DrillError("refused: the lab at %s is unreadable (%s)" % (root, exc)) from exc
    foreign = []
    for entry in hosts:
        name, connection, address = (list(entry) + ["", "", ""])[:3]
        if name not in lab:
            foreign.append("%s is not a lab host" % name)
        elif (connection or "", address or "") != lab[name]:
            theirs = "%s %s" % (lab[name][0] or "-", lab[name][1] or "-")
            foreign.append(
                "%s is reached by %s %s, the lab's by %s"
                % (name, connection or "-", address or "-", theirs)
            )
    if not hosts:
        foreign.append("the inventory has no hosts")
    if foreign:
        raise DrillError(
            "refused outside a lab: %s, and this inventory is not the lab's at %s (%s)"
            % (what, root, "; ".join(sorted(foreign)[:5]))
        )
    return os.path.realpath(root)
