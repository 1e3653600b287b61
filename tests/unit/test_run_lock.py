"""The host run lock every destructive runbook shares (plugins/module_utils/run_lock.py)."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from ansible_collections.knowngood.runbooks.plugins.filter.batch import batch_failures
from ansible_collections.knowngood.runbooks.plugins.module_utils import run_lock as rl
from ansible_collections.knowngood.runbooks.plugins.plugin_utils.in_process import (
    InProcessModule,
    validate,
)

HERE = socket.gethostname()


def owner(run_id, pid=None, runbook="rollback-config", host="db1", controller=HERE, created=None):
    return rl.owner_record(
        run_id, runbook, pid or os.getpid(), controller, "alice", host, created=created
    )


def dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def call(path, check=False, diff=True, **params):
    args = {"path": str(path), "run_id": "kg-mine", "host": "db1", "user": "alice"}
    args.update(params)
    validated, errors = validate(args, rl.ARGUMENT_SPEC)
    assert not errors, errors
    module = InProcessModule(validated, check_mode=check, diff=diff)
    failed, result = rl.run(module)
    return failed, result, module.warnings


def test_the_path_comes_from_the_inventory_not_the_runbook():
    assert rl.lock_path({"knowngood_app_root": "/srv/shop"}) == "/srv/shop/.knowngood/lock"
    db = {"knowngood_config_store": "/lab/config-store/db1", "knowngood_db_data_dir": "/pg"}
    assert rl.lock_path(db) == "/lab/config-store/db1/run.lock"
    assert rl.lock_path({}) == "/var/lib/knowngood/config/run.lock"
    explicit = {"knowngood_run_lock_file": "/run/kg.lock", "knowngood_app_root": "/srv/shop"}
    assert rl.lock_path(explicit) == "/run/kg.lock"


def test_a_second_run_is_refused_naming_the_holder_and_nothing_changes(tmp_path):
    path = str(tmp_path / "store" / "run.lock")
    first = owner("kg-db", runbook="rollback-database")
    assert rl.acquire(path, first, 3600)[0] == "take"
    assert oct(os.stat(os.path.dirname(path)).st_mode & 0o777) == "0o700"
    on_disk = Path(path).read_text()
    assert json.loads(on_disk) == first
    # the same run again (same run id and controller pid) holds it already
    assert rl.acquire(path, dict(first), 3600)[0] == "keep"
    # another run, even one reusing the run id from another controller process, is refused
    for other in (owner("kg-cfg"), owner("kg-db", pid=os.getppid())):
        with pytest.raises(rl.LockError) as refused:
            rl.acquire(path, other, 3600)
        text = str(refused.value)
        for part in ("rollback-database run kg-db", f"controller pid {os.getpid()}", HERE):
            assert part in text
        assert "user alice" in text and "since " + first["since"] in text
        assert "nothing was changed; wait for it to finish" in text
        assert refused.value.holder == first
    assert Path(path).read_text() == on_disk
    assert sorted(os.listdir(os.path.dirname(path))) == ["run.lock", "run.lock.guard"]  # no temp


def test_only_the_holder_gives_it_back(tmp_path):
    path = str(tmp_path / "run.lock")
    rl.acquire(path, owner("kg-a"), 3600)
    with pytest.raises(rl.LockError, match="held by rollback-config run kg-a.*left in place"):
        rl.release(path, "kg-b")
    assert os.path.exists(path)
    assert rl.release(path, "kg-a", os.getpid(), check_mode=True) is True
    assert os.path.exists(path)
    assert rl.release(path, "kg-a", os.getpid()) is True
    assert not os.path.exists(path)
    assert rl.release(path, "kg-a") is False


def test_a_dead_controller_pid_on_this_controller_is_taken_over_with_a_warning(tmp_path):
    path = tmp_path / "run.lock"
    gone = owner("kg-killed", pid=dead_pid(), runbook="rollback-database")
    rl.acquire(str(path), gone, 3600)
    failed, result, warnings = call(path, run_id="kg-new", controller_pid=os.getpid())
    assert not failed and result["changed"]
    assert result["broken"] == gone
    assert warnings == [result["msg"]]
    assert "took over the stale lock of rollback-database run kg-killed" in result["msg"]
    assert json.loads(path.read_text())["run_id"] == "kg-new"
    assert sorted(os.listdir(tmp_path)) == ["run.lock", "run.lock.guard"]  # stale file not kept


def test_a_holder_that_cannot_be_checked_is_never_broken_automatically(tmp_path):
    path = tmp_path / "run.lock"
    old = owner("kg-far", controller="elsewhere", created=time.time() - 7200)
    rl.acquire(str(path), old, 3600)
    before = path.read_text()
    failed, result, _ = call(path, run_id="kg-new", controller_pid=os.getpid())
    assert failed and result["holder"] == old and not result["changed"]
    assert "older than 3600s" in result["msg"]
    assert "-e knowngood_break_lock=kg-far" in result["msg"]
    # young, it is simply held
    path.write_text(json.dumps(dict(old, created=time.time())))
    failed, result, _ = call(path, run_id="kg-new", controller_pid=os.getpid())
    assert failed and "wait for it to finish" in result["msg"]
    path.write_text(before)
    # a break naming another run, or a stale_holder naming another run, breaks nothing
    for wrong in ({"break_lock": "kg-other"}, {"stale_holder": "kg-other"}):
        failed, result, _ = call(path, run_id="kg-new", **wrong)
        assert failed and path.read_text() == before
    # naming the exact holder breaks it, loudly
    failed, result, warnings = call(path, run_id="kg-new", break_lock="kg-far")
    assert not failed and result["broken"] == old
    assert (
        "broke, as asked (knowngood_break_lock=kg-far), the lock of rollback-config run kg-far"
        in warnings[0]
    )
    assert json.loads(path.read_text())["run_id"] == "kg-new"


def test_the_controller_proves_a_remote_holder_dead_by_naming_it(tmp_path):
    """What the action plugin does for a remote host: it checks the pid on the controller."""
    path = tmp_path / "run.lock"
    held = owner("kg-remote", pid=dead_pid(), controller="ctl-2")
    rl.acquire(str(path), held, 3600)
    assert not rl.owner_gone(held)  # not this machine's pid to judge
    assert rl.owner_gone(held, "ctl-2")  # the action plugin on ctl-2 can
    failed, result, warnings = call(path, run_id="kg-new", stale_holder="kg-remote")
    assert not failed and "took over the stale lock" in warnings[0]


def test_check_mode_decides_like_a_real_run_and_writes_nothing(tmp_path):
    path = tmp_path / "run.lock"
    failed, result, _ = call(path, check=True, runbook="rollback-config", controller_pid=7)
    assert not failed and result["changed"]
    assert result["msg"].startswith("would lock db1 for rollback-config run kg-mine")
    assert result["diff"]["before"] == "" and "run kg-mine" in result["diff"]["after"]
    assert not path.exists() and not os.listdir(tmp_path)
    rl.acquire(str(path), owner("kg-db", runbook="rollback-database"), 3600)
    before = path.read_text()
    failed, result, _ = call(path, check=True)
    assert failed and "locked by rollback-database run kg-db" in result["msg"]
    failed, result, _ = call(path, check=True, stale_holder="kg-db", break_lock="kg-db")
    assert not failed and path.read_text() == before
    failed, result, _ = call(path, check=True, state="unlocked", run_id="kg-db")
    assert not failed and result["msg"].startswith("would give back") and path.exists()


def test_an_unreadable_lock_refuses_and_is_left_for_a_human(tmp_path):
    path = tmp_path / "run.lock"
    path.write_text("{torn")
    failed, result, _ = call(path, break_lock="")
    assert failed and "unreadable lock file" in result["msg"] and "by hand" in result["msg"]
    assert path.read_text() == "{torn"


def _race(path, run_id, start, out):
    start.wait()
    try:
        action = rl.acquire(path, owner(run_id), 3600)[0]
    except rl.LockError:
        action = "refused"
    out.put((run_id, action))


@pytest.mark.parametrize("stale", [False, True])
def test_of_racing_runs_exactly_one_takes_the_lock(tmp_path, stale):
    """Six runs at once, ten rounds: a fresh lock, or a stale one all six try to take over
    (unguarded, a third run's rename could move the first taker's new lock aside)."""
    for round_ in range(10):
        path = str(tmp_path / f"run-{round_}.lock")
        if stale:
            rl.acquire(path, owner("kg-killed", pid=dead_pid()), 3600)
        ctx = multiprocessing.get_context("fork")
        start, out = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_race, args=(path, f"kg-{i}", start, out)) for i in range(6)]
        for proc in procs:
            proc.start()
        start.set()
        outcomes = dict(out.get(timeout=30) for _ in procs)
        for proc in procs:
            proc.join()
        winners = [rid for rid, action in outcomes.items() if action != "refused"]
        assert len(winners) == 1, (round_, outcomes)
        assert json.loads(Path(path).read_text())["run_id"] == winners[0]


def test_the_batch_gate_names_each_refused_lock_of_a_loop():
    hostvars = {
        "lb1": {
            "__run_lock_taken": {
                "failed": True,
                "msg": "One or more items failed",
                "results": [
                    {"item": "lb1", "failed": False, "msg": "lock lb1"},
                    {"item": "db1", "failed": True, "msg": "db1 is locked by X"},
                ],
            }
        },
        "app1": {"__run_lock_taken": {"changed": True, "msg": "lock app1"}},
    }
    got = batch_failures(["lb1", "app1"], hostvars, "__run_lock_taken")
    assert got == "lb1: db1 is locked by X; "
