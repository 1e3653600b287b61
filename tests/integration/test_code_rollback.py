"""Code deployment rollback (strategy 3.1) on the real lab: nginx, app instances, PostgreSQL."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils import run_lock as rl
from conftest import LoadClient, crafted_artifact, http_json

pytestmark = pytest.mark.lab


def deploy(lab, release, strategy="symlink", **extra):
    """Deploy release through deploy-code.yml in one batch."""
    params = {
        "release_id": release,
        "code_deploy_strategy": strategy,
        "code_deploy_serial": ["100%"],
    }
    params.update(extra)
    run = lab.playbook("deploy-code", **params)
    assert run.rc == 0, run.output[-3000:]
    return run


def rollback(lab, *args, check=False, **extra):
    params = {"rollback_reason": "error rate above 30%", "ticket": "INC-42"}
    params.update(extra)
    return lab.playbook("rollback-code", *args, check=check, **params)


def statuses(lab, host=0):
    status = {}
    for event in lab.ledger(host):
        status[event["release_id"]] = event["status"]
    return status


def schema_revisions(lab):
    with psycopg.connect(lab.status["postgres"]["primary_dsn"]) as conn:
        return [
            r[0]
            for r in conn.execute("SELECT revision FROM knowngood_schema_migrations ORDER BY 1")
        ]


def test_bad_release_fails_its_canary_gate_and_is_reverted(lab):
    lab.seed("v1")
    run = lab.playbook("deploy-code", release_id="v2")  # default batches: 1, 50%, 100%
    assert run.rc != 0
    assert "failed its gate" in run.output
    assert "stopped at" in run.output
    assert set(lab.serving()) == {"v1", None}  # blue instances back on v1, green never used
    assert lab.live_releases() == {"v1"}
    assert statuses(lab)["v2"] == "bad"
    # app1 was the canary; later batches never saw v2 go live
    assert not any(e["status"] == "deployed" and e["release_id"] == "v2" for e in lab.ledger(2))
    assert schema_revisions(lab) == ["0001"]  # v2's migration went back down with it


def test_slow_release_inside_the_absolute_limit_is_stopped_by_the_decision(lab):
    """v1.2 adds 150 ms and no errors: inside the lab's loose absolute p95 limit, so only the
    rollback decision's comparison with the release it replaces (the section 2.1 +30 %
    trigger, the same thresholds decide.yml uses) stops it, on a second probe."""
    lab.seed("v1.1")
    run = lab.playbook("deploy-code", release_id="v1.2")
    assert run.rc != 0
    assert 'stopped at "Stop the rollout when the regression holds"' in run.output, run.output[
        -3000:
    ]
    assert "fired latency_degradation (p95" in run.output and "severity high" in run.output
    assert "failed its gate" not in run.output  # the hard limits held
    assert lab.live_releases() == {"v1.1"}
    assert statuses(lab)["v1.2"] == "bad"
    assert not any(e["status"] == "deployed" and e["release_id"] == "v1.2" for e in lab.ledger(2))
    print("\nMEASURED deploy gate on v1.2: " + run.output.split("fired ", 1)[1].split(";")[0])


def host_probes(lab) -> dict[str, dict]:
    """The post-switch probe of each host, from the newest run's audit record."""
    records = sorted((Path(lab.root) / "audit").glob("kg-*.json"), key=os.path.getmtime)
    events = json.loads(records[-1].read_text())["events"]
    return {
        e["host"]: e["result"]
        for e in events
        if e["task"].endswith(": Probe the live instance on this host")
    }


# The rollback under load with both cores busy (zero failed requests, every later response
# from the known-good release, probes judged against the replaced release) is proven by the
# code_rollback drill: tests/integration/test_drills.py::test_code_rollback_drill_under_load.


def test_rollback_onto_a_slower_release_fails_against_the_one_it_replaced_and_reverts(lab):
    """v1.2 answers 150 ms slower with no errors: judged against v1 probed before the switch
    (and confirmed by most of three later probes), the rollback onto it fails and v1 is put back."""
    lab.seed("v1.2", "v1")
    run = rollback(lab, release_id="v1.2")
    assert run.rc != 0
    assert "exceeds the replaced release v1 probed before the switch" in run.output, run.output[
        -3000:
    ]
    assert 'failed at "Refuse unless every host passed its probe"' in run.output
    assert lab.live_releases() == {"v1"}
    assert all(r == "v1" for r in lab.serving() if r)


def test_rolled_back_release_is_never_picked_again_automatically(lab):
    lab.seed("v1", "v1.1", "v2")
    assert rollback(lab).rc == 0  # v2 -> v1.1 (last known good)
    assert lab.live_releases() == {"v1.1"}
    assert rollback(lab).rc == 0  # v1.1 -> v1: v2 was rolled back, so it is not a candidate
    assert lab.live_releases() == {"v1"}


def test_rollback_to_a_named_release(lab):
    lab.seed("v1", "v1.1", "v2")
    run = rollback(lab, release_id="v1")
    assert run.rc == 0, run.output[-3000:]
    assert lab.live_releases() == {"v1"}


def test_blue_green_rollback_flips_back_to_the_idle_pool_under_load(lab):
    lab.seed("v1")  # v1 lives in the blue pool
    deploy(lab, "v1.1", strategy="blue_green")  # stages v1.1 in green and flips
    assert lab.live_releases() == {"v1.1"}
    assert set(lab.serving()) == {"v1", "v1.1"}  # blue keeps v1 running, idle
    with LoadClient(lab.status["lb_url"] + "/", threads=4) as load:
        time.sleep(0.3)
        run = rollback(lab, code_identify_strategy="blue_green")
        finished = time.monotonic()
        time.sleep(0.5)
    assert run.rc == 0, run.output[-3000:]
    assert load.failed == []
    assert {r[2] for r in load.responses if r[0] > finished} == {"v1"}
    live_file = Path(lab.root) / "nginx" / "live_pool.conf"
    assert "knowngood-pool: blue" in live_file.read_text()
    # judged against the replaced release, still running on green, in the same rounds
    probes = host_probes(lab)
    assert set(probes) == {"app1", "app2", "app3"}
    for probe in probes.values():
        assert probe["latency"]["judged"] == "baseline", probe["latency"]
        assert "v1.1 on pool green, probed in the same rounds" in probe["latency"]["detail"]


def test_flip_refused_when_target_pool_config_fails_its_test(lab):
    lab.seed("v1")
    deploy(lab, "v1.1", strategy="blue_green")
    # Break the blue pool definition: the flip must be refused and traffic stay on green.
    pools = Path(lab.root) / "nginx" / "pools"
    good = (pools / "blue.conf").read_text()
    broken = good.replace("server 127.0.0.1", "server 127.0.0.1:notaport #")
    (pools / "blue.conf").write_text(broken)
    try:
        run = rollback(lab, code_identify_strategy="blue_green")
    finally:
        (pools / "blue.conf").write_text(good)
    assert run.rc != 0
    assert "fails its test, traffic stays on green" in run.output
    assert lab.live_releases() == {"v1.1"}


def test_down_migration_runs_before_the_switch(lab):
    lab.seed("v1", "v2")
    assert schema_revisions(lab) == ["0001", "0002"]
    run = rollback(lab)
    assert run.rc == 0, run.output[-3000:]
    assert schema_revisions(lab) == ["0001"]
    with psycopg.connect(lab.status["postgres"]["primary_dsn"]) as conn:
        cols = [
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name='orders'"
            )
        ]
    assert "note" not in cols
    assert lab.live_releases() == {"v1"}
    assert http_json(lab.status["lb_url"] + "/db")["orders"] == 0


def test_irreversible_migration_refuses_before_switching(lab):
    lab.seed("v1", "v3")
    run = rollback(lab)
    assert run.rc != 0
    assert "playbooks/rollback-database.yml" in run.output
    assert "cannot be undone" in run.output
    assert lab.live_releases() == {"v3"}
    assert schema_revisions(lab) == ["0001", "0002", "0003"]
    assert not any(e["status"] == "rolled-back" for e in lab.ledger())


def test_check_mode_shows_the_plan_and_changes_nothing(lab):
    lab.seed("v1", "v2")
    ledger_before = lab.ledger()
    run = rollback(lab, check=True)
    assert run.rc == 0, run.output[-3000:]
    assert "from -> to" in run.output and "-> v1" in run.output
    assert "down 0002" in run.output
    assert lab.ledger() == ledger_before
    assert lab.live_releases() == {"v2"}
    assert schema_revisions(lab) == ["0001", "0002"]


@pytest.fixture(scope="module")
def v1_then_v1_1(lab_session):
    """One deploy history shared by the refusal cases: a refusal must leave it untouched."""
    lab_session.reset()
    lab_session.seed("v1", "v1.1")
    return lab_session


@pytest.mark.parametrize("bad", ["../../etc", "v1;rm -rf /", "$(id)", "v1/../v2", "v1\n", "v9"])
def test_unsafe_or_unknown_release_ids_are_refused_before_anything_changes(v1_then_v1_1, bad):
    lab = v1_then_v1_1
    before = lab.ledger()
    run = rollback(lab, release_id=bad)
    assert run.rc != 0
    expected = "not in the ledger" if bad == "v9" else "is not a release id"
    assert expected in run.output
    assert lab.ledger() == before
    assert lab.live_releases() == {"v1.1"}


def test_current_that_is_a_real_directory_is_refused(lab):
    lab.seed("v1", "v1.1")
    root = Path(lab.status["hosts"][1]["root"])
    (root / "current").unlink()
    (root / "current").mkdir()
    run = rollback(lab)
    assert run.rc != 0 and "is a real directory" in run.output
    assert lab.live_releases() == {"v1.1"}


def test_current_pointing_outside_releases_is_refused(lab, tmp_path):
    lab.seed("v1", "v1.1")
    root = Path(lab.status["hosts"][2]["root"])
    (root / "current").unlink()
    (root / "current").symlink_to(tmp_path)
    run = rollback(lab)
    assert run.rc != 0 and "points outside" in run.output
    assert lab.live_releases() == {"v1.1"}


def test_artifacts_that_would_write_outside_releases_are_refused_before_unpacking(lab, tmp_path):
    """A symlink chain (each link normalizes inside, together they climb to the deploy root),
    a hard link through a link onto shared/app.conf, a device: refused naming the member, and
    the hosts are as they were (nothing outside releases/, app.conf intact, no partial release,
    no ledger event, v1 still served)."""
    lab.seed("v1")
    roots = [Path(host["root"]) for host in lab.status["hosts"]]
    confs = [(root / "shared" / "app.conf").read_text() for root in roots]
    ledgers = [lab.ledger(i) for i in range(len(roots))]
    for kind, member in (("chain", "'l1'"), ("hardlink", "'conf'"), ("device", "'null'")):
        rid = f"evil-{kind}"
        artifact = crafted_artifact(tmp_path / f"{rid}.tar.gz", kind, rid)
        run = lab.playbook(
            "deploy-code",
            release_id=rid,
            code_deploy_artifact=str(artifact),
            code_deploy_serial=["100%"],
        )
        assert run.rc != 0, run.output[-3000:]
        assert member in run.output and "nothing was unpacked" in run.output, run.output[-3000:]
        for i, root in enumerate(roots):
            assert not (root / "escape.txt").exists()
            assert (root / "shared" / "app.conf").read_text() == confs[i]
            assert os.listdir(root / "releases") == ["v1"]
            assert lab.ledger(i) == ledgers[i]
        assert lab.live_releases() == {"v1"}


def test_second_rollback_while_one_runs_is_refused_and_stale_lock_is_broken(lab):
    lab.seed("v1", "v1.1")
    lock = lab.lock_file(lab.status["hosts"][0]["name"])
    assert lock == Path(lab.status["hosts"][0]["root"]) / ".knowngood" / "lock"
    holder = subprocess.Popen(["sleep", "60"])
    try:
        owner = rl.owner_record(
            "kg-other", "deploy-code", holder.pid, socket.gethostname(), "dana", "app1"
        )
        rl.acquire(str(lock), owner, 3600)
        run = rollback(lab)
        assert run.rc != 0
        assert f"is locked by deploy-code run kg-other (controller pid {holder.pid}" in run.output
        assert lab.live_releases() == {"v1.1"}
    finally:
        holder.kill()
        holder.wait()
    run = rollback(lab)  # the holder is gone: its lock is stale and is taken over
    assert run.rc == 0, run.output[-3000:]
    assert "took over the stale lock of deploy-code run kg-other" in run.output
    assert lab.live_releases() == {"v1"}
    assert lab.locked_hosts() == []


def test_failure_after_the_switch_reverts_to_what_was_live(lab):
    lab.seed("v1", "v1.1")
    run = rollback(lab, code_verify_max_p95_ms=0.001)  # verification cannot pass
    assert run.rc != 0
    assert 'failed at "Refuse unless every host passed its probe"' in run.output
    assert lab.live_releases() == {"v1.1"}
    assert all(r == "v1.1" for r in lab.serving() if r)


def test_second_run_changes_nothing_but_the_verification_record(lab):
    lab.seed("v1", "v1.1")
    assert rollback(lab, release_id="v1").rc == 0
    run = rollback(lab, release_id="v1")
    assert run.rc == 0, run.output[-3000:]
    switches = [e for e in lab.ledger() if e["status"] == "deployed"]
    assert len(switches) == 3  # v1, v1.1, and the one rollback


def test_audit_record_of_a_rollback(lab):
    lab.seed("v1", "v1.1")
    run = rollback(lab)
    assert run.rc == 0
    records = sorted((Path(lab.root) / "audit").glob("kg-*.json"), key=os.path.getmtime)
    record = json.loads(records[-1].read_text())
    assert record["status"] == "successful"
    assert record["extra_vars"]["rollback_reason"] == "error rate above 30%"
    switched = [e for e in record["events"] if e["task"].endswith("reload gracefully")]
    assert {e["host"] for e in switched} == {"app1", "app2", "app3"}
    assert all(e["result"]["release_id"] == "v1" for e in switched)
    index = (Path(lab.root) / "audit" / "index.jsonl").read_text().splitlines()
    assert json.loads(index[-1])["run_id"] == record["run_id"]


def test_bad_inputs_are_refused_by_one_check_before_the_gate(lab):
    """Every role's argument spec is checked in one task for the whole batch, before the
    approval gate: a bad extra var is named for every host, and nothing else ran."""
    lab.seed("v1", "v1.1")
    before = [lab.ledger(i) for i in range(len(lab.status["hosts"]))]
    audit = Path(lab.root) / "audit"
    known = set(audit.glob("kg-*.json"))
    run = rollback(lab, code_identify_strategy="canary", code_stop_lock_max_age="soon")
    assert run.rc != 0
    assert "Validation of arguments failed, nothing was changed" in run.output
    for host in ("app1", "app2", "app3"):
        assert f"{host}: code_identify (main): value of code_identify_strategy must be one of" in (
            run.output
        )
        assert f"{host}: code_stop (main): argument 'code_stop_lock_max_age'" in run.output
    record = json.loads(
        max(
            (p for p in set(audit.glob("kg-*.json")) - known if not p.name.endswith(".open.json")),
            key=os.path.getmtime,
        ).read_text()
    )
    assert [(e["action"], e["status"]) for e in record["events"]] == [
        ("knowngood.runbooks.role_inputs", "failed")
    ]
    assert [lab.ledger(i) for i in range(len(lab.status["hosts"]))] == before
    assert lab.live_releases() == {"v1.1"}


def test_a_host_var_is_checked_on_its_own_host(lab, tmp_path):
    """Host variables are checked per host: one host's bad value names that host only."""
    lab.seed("v1", "v1.1")
    before = lab.ledger(1)
    inventory = tmp_path / "app2.yml"  # a second inventory source on top of the lab's
    inventory.write_text(json.dumps({"all": {"hosts": {"app2": {"code_verify_requests": "many"}}}}))
    run = lab.playbook("rollback-code", "-i", str(inventory), rollback_reason="host var")
    assert run.rc != 0
    assert "app2: code_verify (baseline): argument 'code_verify_requests'" in run.output
    assert "app1: code_verify" not in run.output and "app3: code_verify" not in run.output
    assert lab.ledger(1) == before
    assert lab.live_releases() == {"v1.1"}
