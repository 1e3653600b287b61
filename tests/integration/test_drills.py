"""Drill bookkeeping against a real PostgreSQL: sentinel rows, data loss measured, scorecards.

The measuring instrument is proven first: it must report zero loss when nothing was lost,
count exactly the rows a restore lost, and fail a drill that misses its objectives. Then the
drills themselves, molecule scenarios run end to end against the lab (`knowngood drill run`):
code_rollback in `make test`, under traffic with both cores busy while its runbook runs (it
replaced test_code_rollback's rollback under load), the other five in `make test-extended`;
each must meet its RTO and RPO objectives (molecule/group_vars/all.yml).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from conftest import REPO, LoadClient

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


OBJECTIVES = yaml.safe_load((REPO / "molecule" / "group_vars" / "all.yml").read_text())[
    "knowngood_drill_targets"
]


def assert_objectives_met(card: dict, name: str) -> None:
    """The scorecard measured both objectives and met them (and molecule itself passed)."""
    target = OBJECTIVES[name]
    assert card["molecule_rc"] == 0 and card["drill"] == name, card
    assert card["targets"] == target
    assert card["rto_s"] is not None and 0 < card["rto_s"] <= target["rto_s"], card
    assert card["rpo_s"] is not None and 0 <= card["rpo_s"] <= target["rpo_s"], card
    assert card["rows_committed"] > 0 and card["passed"] and card["misses"] == [], card
    print(
        f"\nMEASURED drill {name}: RTO {card['rto_s']}s (runbook {card['runbook_s']}s, target "
        f"{target['rto_s']}s), RPO {card['rpo_s']}s (target {target['rpo_s']}s), "
        f"{card['rows_lost']} of {card['rows_committed']} sentinel rows lost"
    )


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RunbookHogs(threading.Thread):
    """Both cores busy from the drill's runbook_started mark to its runbook_finished mark
    (read from the drill's state file): the rollback runs on a loaded controller, the rest of
    the drill does not. `shares` is each loop's CPU share of that window afterwards."""

    def __init__(self, state_file: Path) -> None:
        super().__init__(daemon=True)
        self.state_file = state_file
        self.stop = threading.Event()
        self.shares: list[float] = []

    def marks(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())["marks"]
        except (OSError, ValueError, KeyError):
            return {}

    def run(self) -> None:
        while not self.stop.is_set() and "runbook_started" not in self.marks():
            time.sleep(0.05)
        if self.stop.is_set():
            return
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
        started = time.monotonic()
        while not self.stop.is_set() and "runbook_finished" not in self.marks():
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        self.shares = [_cpu_seconds(hog.pid) / elapsed for hog in hogs]
        for hog in hogs:
            hog.kill()
            hog.wait()


@pytest.mark.hogs
def test_code_rollback_drill_under_load(lab):
    """Drill code_rollback end to end through molecule (prepare, side_effect, converge, verify)
    with traffic through the load balancer all along and both cores busy while the runbook
    runs: it meets its objectives, the rollback drops no request (the only failures are v2's
    own errors before it), every later response is v1's, each host's probe is judged against
    the release it replaced (v2, probed the same way on the same machine), and the ledger,
    slots and locks are left as a rollback leaves them."""
    state_file = drills.drill_dir(lab.root) / "code_rollback" / "current.json"
    hogs = RunbookHogs(state_file)
    hogs.start()
    clock = time.time() - time.monotonic()  # wall-clock marks against Traffic's monotonic times
    try:
        with LoadClient(lab.status["lb_url"] + "/", threads=4, max_seconds=600) as load:
            card = drills.run("code_rollback", lab.root, echo=False, timeout=600)
    finally:
        hogs.stop.set()
        hogs.join(timeout=10)
    assert_objectives_met(card, "code_rollback")
    assert (card["rows_committed"], card["rows_lost"], card["rpo_s"]) == (20, 0, 0.0)
    assert Path(card["path"]).is_file()
    assert drills.history(lab.root)[-1]["run_id"] == card["run_id"]
    assert len(hogs.shares) == 2 and all(share >= 0.25 for share in hogs.shares), hogs.shares

    def mono(step: str) -> float:
        return datetime.fromisoformat(card_marks[step]).timestamp() - clock

    card_marks = {step["step"]: step["at"] for step in card["steps"]}
    started, finished = mono("runbook_started"), mono("runbook_finished")
    assert len(load.responses) > 200, load.report()
    # From the failure on (v2 live everywhere) through the rollback and the verification,
    # nothing was refused or timed out and v1 never failed a request: the only failures are
    # v2's own. (Before it, prepare deploys v1 onto the reset lab's empty hosts.)
    served = [r for r in load.responses if r[0] >= mono("failure_injected")]
    marks = {step: round(mono(step), 3) for step in card_marks}
    bad = [r for r in served if r[1] is None or (r[1] >= 500 and r[2] != "v2")]
    assert bad == [], (bad, marks)
    during = [r for r in load.responses if started <= r[0] <= finished]
    assert during and all(r[1] is not None for r in during)
    after = [r for r in load.responses if r[0] > finished]
    assert after and {r[2] for r in after} == {"v1"} and not [r for r in after if r[1] >= 500]
    broken = [r for r in load.responses if mono("failure_injected") < r[0] < started]
    assert broken and {r[2] for r in broken} == {"v2"}
    assert lab.live_releases() == {"v1"}
    ledger = {e["release_id"]: e["status"] for e in lab.ledger()}
    assert ledger["v2"] == "rolled-back" and ledger["v1"] == "known-good"
    rolled = [e for e in lab.ledger() if e["status"] == "rolled-back"][-1]
    assert rolled["reason"] == "drill: code rollback" and rolled["ticket"] == "drill-code_rollback"
    for i, host in enumerate(lab.status["hosts"]):
        assert os.readlink(Path(host["root"]) / "slots" / "blue").endswith("releases/v1")
        assert not (Path(host["root"]) / ".knowngood" / "lock").exists(), i
    # The converge phase's audit record: each host's probe after the switch.
    records = [
        json.loads(p.read_text())
        for p in (lab.root / "audit").glob("kg-*.json")
        if p.suffixes == [".json"]
    ]
    converge = [r for r in records if r["playbook"].endswith("code_rollback/converge.yml")]
    probes = {
        e["host"]: e["result"]
        for e in max(converge, key=lambda r: r["started_at"])["events"]
        if e["task"].endswith(": Probe the live instance on this host")
    }
    assert set(probes) == {"app1", "app2", "app3"}
    # v2 fails about 40 % of its requests, so its baseline probe (40 requests) fails more than
    # half of them now and then (about 1 in 14 per host): the judge then calls it an outage and
    # leaves latency unjudged, as docs/latency.md says. Every host names that baseline; a host
    # whose baseline was usable is judged against it, and so is at least one host.
    judged = []
    for probe in probes.values():
        latency = probe["latency"]
        assert "the replaced release v2 probed before the switch" in latency["detail"], latency
        outage = re.search(r"it failed (\d+) of (\d+) requests \(an outage\)", latency["detail"])
        if outage:
            assert int(outage[1]) * 2 > int(outage[2]) and latency["judged"] == "no baseline"
        else:
            assert latency["judged"] == "baseline", latency
        judged.append(latency["judged"])
    assert "baseline" in judged, probes
    print("\nMEASURED drill code_rollback under load: " + load.report())


@pytest.mark.extended
@pytest.mark.parametrize(
    "name",
    ["table_restore", "database_pitr", "config_rollback", "primary_failover", "disaster_recovery"],
)
def test_drill_meets_its_objectives(lab, name):
    """Every other drill end to end through molecule against the lab, each held to its RTO and
    RPO objectives (a drill that loses every sentinel row has an unbounded RPO and fails)."""
    # Production, not the reset lab's blank hosts: v1 live and its schema migrated, as
    # `knowngood lab up` leaves it (the database drills' backups must hold the app's schema).
    lab.seed("v1")
    card = drills.run(name, lab.root, echo=False, timeout=900)
    assert_objectives_met(card, name)
    assert drills.history(lab.root)[-1]["run_id"] == card["run_id"]
