"""Progress of long database steps: the module-side writer and estimator, the replay meter,
and the action side's poll loop (what it reads, prints and returns)."""

from __future__ import annotations

import json
import os
import threading
import time
from types import SimpleNamespace

import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils import progress
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import pitr
from ansible_collections.knowngood.runbooks.plugins.plugin_utils import progress_action


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def read(path):
    return json.loads(path.read_text())


def test_estimate_is_the_rate_so_far_and_unknown_without_a_total():
    assert progress.estimate(25, 100, 10.0) == pytest.approx(30.0)
    assert progress.estimate(100, 100, 10.0) == 0.0
    assert progress.estimate(0, 100, 10.0) is None
    assert progress.estimate(50, None, 10.0) is None
    assert progress.estimate(50, 100, 0.0) is None


def view(phase, unit, done, total, elapsed, eta, finished=False):
    return {"phase": phase, "unit": unit, "done": done, "total": total,
            "phase_elapsed_s": elapsed, "eta_s": eta, "finished": finished}  # fmt: skip


@pytest.mark.parametrize(
    ("snapshot", "line"),
    [
        (view("restore", "bytes", 1.31e9, 2.2e9, 12.0, 8.2),
         "restore 1.31 GB of 2.20 GB (59 %), 12 s elapsed, about 8 s left"),
        (view("backup", "bytes", 5e6, None, 130, None),
         "backup 5.00 MB, 2 min 10 s elapsed, estimate unknown"),
        (view("replay", "segments", 7, 7, 3, 0.0, finished=True),
         "replay 7 of 7 WAL segments (100 %), 3 s elapsed, done"),
        # every byte stored, the step not over (the backup's stop segment, its catalog entry)
        (view("backup", "bytes", 3e6, 3e6, 3, 0.0),
         "backup 3.00 MB of 3.00 MB (100 %), 3 s elapsed, finishing"),
    ],
)  # fmt: skip
def test_describe_names_amount_percent_elapsed_and_time_left(snapshot, line):
    assert progress.describe(snapshot) == line


def test_writer_replaces_the_file_with_phase_done_total_and_estimate(tmp_path):
    clock = Clock()
    path = tmp_path / "async" / "p.json"
    meter = progress.Progress(str(path), min_interval=1.0, clock=clock)
    meter.phase("restore", total=1000)
    assert read(path)["phase"] == "restore" and read(path)["done"] == 0
    clock.now += 2
    meter.advance(250)
    snap = read(path)
    assert (snap["done"], snap["total"], snap["unit"]) == (250, 1000, "bytes")
    assert snap["phase_elapsed_s"] == 2.0 and snap["eta_s"] == 6.0 and snap["elapsed_s"] == 2.0
    # Throttled: a write within min_interval of the last leaves the file as it was...
    clock.now += 0.5
    meter.advance(250)
    assert read(path)["done"] == 250
    # ...a phase change or finish always writes; the ended phase is summarised at 100 % of
    # what it did.
    meter.phase("replay", total=4, unit="segments")
    snap = read(path)
    assert snap["phase"] == "replay" and snap["done"] == 0
    assert snap["phases"] == [
        {
            "phase": "restore",
            "unit": "bytes",
            "done": 500,
            "total": 500,
            "phase_elapsed_s": 2.5,
            "eta_s": 0.0,
            "finished": True,
        }
    ]
    meter.update(3)
    meter.update(2)  # never goes back
    assert meter.snapshot()["done"] == 3
    meter.finish()
    snap = read(path)
    assert [p["phase"] for p in snap["phases"]] == ["restore", "replay"]
    assert snap["finished"] and snap["done"] == snap["total"] == 3
    assert [p.name for p in path.parent.iterdir()] == ["p.json"]  # no temp file left


def test_writer_with_an_unknown_total_ends_at_what_was_done(tmp_path):
    meter = progress.Progress(str(tmp_path / "p.json"), min_interval=0)
    meter.phase("backup")
    meter.advance(10)
    assert meter.snapshot()["eta_s"] is None
    meter.finish()
    assert read(tmp_path / "p.json")["phases"][0]["total"] == 10


def test_writer_counts_every_thread_and_without_a_path_writes_nothing(tmp_path):
    meter = progress.Progress(str(tmp_path / "p.json"), min_interval=0)
    meter.phase("restore", total=8000)

    def work():
        for _ in range(1000):
            meter.advance(1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert meter.snapshot()["done"] == 8000
    nowhere = progress.Progress(None)
    nowhere.phase("restore", total=1)
    nowhere.advance(1)
    nowhere.finish()
    assert progress.from_params({"progress_file": None}).path is None


def test_replay_meter_counts_segments_from_the_plans_first_to_its_last(tmp_path):
    meter = progress.Progress(str(tmp_path / "p.json"), min_interval=0)
    plan = {"wal_from": "000000010000000000000003", "wal_to": "000000020000000100000001"}
    replay = pitr._ReplayMeter(meter, plan)
    # 0x100 segments of 16 MB per 4 GB "log" file: 3..0x100+1 is 255 segments
    assert meter.snapshot()["total"] == 255 and meter.snapshot()["unit"] == "segments"

    class Conn:
        def __init__(self, lsn):
            self.lsn = lsn

        def execute(self, _query):
            return SimpleNamespace(fetchone=lambda: (self.lsn,))

    replay.observe(Conn("0/5000028"))
    assert meter.snapshot()["done"] == 2
    replay.observe(Conn("0/4000000"))  # an earlier reading never moves it back
    assert meter.snapshot()["done"] == 2
    replay.observe(Conn("9/0"))  # past the last needed segment: capped
    assert meter.snapshot()["done"] == 255
    replay.finish()
    assert read(tmp_path / "p.json")["phases"][0]["done"] == 255


def test_progress_log_prints_each_move_once_and_every_phase_end():
    log = progress_action.ProgressLog("db1")
    running = {"phase": "restore", "unit": "bytes", "done": 500, "total": 1000,
               "phase_elapsed_s": 1, "eta_s": 1, "phases": []}  # fmt: skip
    assert log.lines_for(running) == [
        "db1: restore 500 B of 1.00 kB (50 %), 1 s elapsed, about 1 s left"
    ]
    assert log.lines_for(running) == []  # nothing moved: no line
    ended = {"phase": "restore", "unit": "bytes", "done": 1000, "total": 1000,
             "phase_elapsed_s": 2, "eta_s": 0.0, "finished": True}  # fmt: skip
    replaying = {"phase": "replay", "unit": "segments", "done": 1, "total": 3,
                 "phase_elapsed_s": 1, "eta_s": 2, "phases": [ended]}  # fmt: skip
    assert log.lines_for(replaying) == [
        "db1: restore 1.00 kB of 1.00 kB (100 %), 2 s elapsed, done",
        "db1: replay 1 of 3 WAL segments (33 %), 1 s elapsed, about 2 s left",
    ]
    last = {**ended, "phase": "replay", "unit": "segments", "done": 3, "total": 3,
            "phases": [ended, {**ended, "phase": "replay", "unit": "segments", "done": 3,
                               "total": 3}]}  # fmt: skip
    assert log.lines_for(last) == ["db1: replay 3 of 3 WAL segments (100 %), 2 s elapsed, done"]
    assert log.lines_for(None) == []
    summary = log.summary(last)
    assert len(summary["lines"]) == 4 and [p["phase"] for p in summary["phases"]] == [
        "restore",
        "replay",
    ]


def test_peek_output_and_job_file_tell_running_from_finished():
    snap, job = progress_action.parse_peek(
        '{"phase": "restore"}\n--kg-progress-job--\n{"started": 1, "finished": 0}'
    )
    assert snap == {"phase": "restore"} and not progress_action.job_finished(job)
    snap, job = progress_action.parse_peek('\n--kg-progress-job--\n{"changed": true}')
    assert snap is None and progress_action.job_finished(job)
    assert progress_action.job_finished({"started": 1, "finished": 1, "failed": 1})
    assert not progress_action.job_finished(None)
    assert progress_action.parse_peek("garbage")[1] is None


class FakeAction(progress_action.ProgressAction):
    """The poll loop against a scripted host: the module reports three times, then ends."""

    MODULE = "knowngood.runbooks.pg_pitr"

    def __init__(self, snapshots, outcome):
        self.snapshots = list(snapshots)
        self.outcome = outcome
        self.calls = []
        self.commands = []
        self._task = SimpleNamespace(async_val=0, delegate_to=None, args={"state": "recovered"})
        self._connection = SimpleNamespace(
            _shell=SimpleNamespace(join_path=lambda *p: "/".join(p), tmpdir=None)
        )

    def is_long(self, args):
        return True

    def get_shell_option(self, option, default=None):
        return default

    def _remote_expand_user(self, path, sudoable=True):
        return path.replace("~", "/home/op")

    def _remove_tmp_path(self, tmp_path, force=False):
        pass

    def _execute_module(self, module_name=None, module_args=None, task_vars=None, **kw):
        self.calls.append((module_name, dict(module_args), self._task.async_val, kw))
        if module_name == self.MODULE:
            return {"ansible_job_id": "j1", "results_file": "/home/op/.ansible_async/j1",
                    "started": 1, "finished": 0, "changed": True}  # fmt: skip
        return dict(self.outcome, ansible_job_id="j1", finished=1)

    def _low_level_execute_command(self, cmd, sudoable=True, **kw):
        self.commands.append(cmd)
        if cmd.startswith("rm "):
            return {"rc": 0, "stdout": ""}
        snap, job = self.snapshots.pop(0)
        return {"rc": 0, "stdout": json.dumps(snap) + "\n--kg-progress-job--\n" + json.dumps(job)}


def test_watched_run_starts_async_prints_progress_and_returns_the_modules_result(monkeypatch):
    shown = []
    monkeypatch.setattr(progress_action.display, "display", lambda msg, **kw: shown.append(msg))
    clock = Clock()

    def sleep(seconds):
        clock.now += seconds

    monkeypatch.setattr(progress_action, "time", SimpleNamespace(sleep=sleep, monotonic=clock))
    running = {"started": 1, "finished": 0}
    ended = {"phase": "restore", "unit": "bytes", "done": 300, "total": 300,
             "phase_elapsed_s": 3, "eta_s": 0.0, "finished": True}  # fmt: skip

    def snap(done):
        return {"phase": "restore", "unit": "bytes", "done": done, "total": 300,
                "phase_elapsed_s": done / 100, "eta_s": 1.0, "phases": []}  # fmt: skip

    action = FakeAction(
        # polled every 0.5 s, a line every 1 s: 150 (at 1.0 s) is read but not printed
        [
            (snap(100), running),
            (snap(150), running),
            (snap(200), running),
            ({**ended, "phases": [ended]}, {"x": 1}),
        ],  # fmt: skip
        {"changed": True, "backup_id": "b1", "paused": True},
    )
    result = action._run_watched({"inventory_hostname": "db1"}, interval=1.0, limit=600)
    module_call = action.calls[0]
    assert module_call[1]["progress_file"].startswith("/home/op/.ansible_async/kg-progress-")
    assert module_call[2] == 600 and module_call[3] == {"wrap_async": True}
    assert action._task.async_val == 0  # the task is left as it was
    assert action.calls[1][0] == "ansible.legacy.async_status"
    assert action.calls[1][1] == {"jid": "j1", "_async_dir": "/home/op/.ansible_async"}
    assert shown == [
        "db1: restore 100 B of 300 B (33 %), 1 s elapsed, about 1 s left",
        "db1: restore 200 B of 300 B (66 %), 2 s elapsed, about 1 s left",
        "db1: restore 300 B of 300 B (100 %), 3 s elapsed, done",
    ]
    # The module's own keys, unchanged; async's gone; the progress added for the record.
    assert {k: v for k, v in result.items() if k != "progress"} == {
        "changed": True,
        "backup_id": "b1",
        "paused": True,
    }
    assert result["progress"]["lines"] == shown
    assert result["progress"]["phases"] == [ended]
    assert action.commands[-1].startswith("rm -f ") and "j1" in action.commands[-1]


def test_short_and_check_mode_steps_run_the_module_as_before():
    from ansible_collections.knowngood.runbooks.plugins.action import backup_verify, pg_backup
    from ansible_collections.knowngood.runbooks.plugins.action import pg_pitr as pitr_action

    assert pitr_action.ActionModule.is_long(None, {"state": "recovered"})
    assert pitr_action.ActionModule.is_long(None, {"state": "table_restored"})
    assert not pitr_action.ActionModule.is_long(None, {"state": "planned"})
    assert not pitr_action.ActionModule.is_long(None, {"state": "promoted"})
    assert pg_backup.ActionModule.is_long(None, {})
    assert not pg_backup.ActionModule.is_long(None, {"state": "expired"})
    assert backup_verify.ActionModule.is_long(None, {})
    assert not backup_verify.ActionModule.is_long(None, {"tiers": ["integrity"]})


def test_local_step_runs_beside_a_reader_of_its_progress_file(monkeypatch):
    """The controller is the host: the module runs from a thread while the worker reads the
    progress file it writes; no async job, no async_status, the file's directory removed."""
    shown = []
    monkeypatch.setattr(progress_action.display, "display", lambda msg, **kw: shown.append(msg))
    monkeypatch.setattr(progress_action, "TICK", 0.05)
    written = []

    class LocalAction(FakeAction):
        def _execute_module(self, module_name=None, module_args=None, task_vars=None, **kw):
            self.calls.append((module_name, dict(module_args), kw))
            path = module_args["progress_file"]
            written.append(path)
            for done in (100, 200, 300):
                snap = {"phase": "restore", "unit": "bytes", "done": done, "total": 300,
                        "phase_elapsed_s": done / 100, "eta_s": 1.0, "phases": [],
                        "finished": done == 300}  # fmt: skip
                if done == 300:
                    snap["phases"] = [dict(snap)]
                with open(path + ".tmp", "w") as handle:
                    json.dump(snap, handle)
                os.replace(path + ".tmp", path)
                time.sleep(0.15)
            return {"changed": True, "backup_id": "b1"}

    action = LocalAction([], {})
    result = action._run_beside({"inventory_hostname": "db1"}, interval=0.1)
    assert [c[0] for c in action.calls] == ["knowngood.runbooks.pg_pitr"]
    assert action.calls[0][2] == {} and not action.commands  # no async, no remote command
    assert shown[0].startswith("db1: restore 100 B of 300 B (33 %)")
    assert shown[-1] == "db1: restore 300 B of 300 B (100 %), 3 s elapsed, done"
    assert result["backup_id"] == "b1" and result["progress"]["lines"] == shown
    assert not os.path.exists(os.path.dirname(written[0]))
