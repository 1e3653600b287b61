"""pg_pitr against real PostgreSQL 15: every target kind lands exactly on sentinel rows, the
preflight refuses before anything changes, a killed restore converges, the table strategy
brings one table back, and a second rollback works on the new timeline.

One cluster (archiving through the WAL tool, one full backup, sentinel rows around each
target) is shared by the module; each rollback test puts the original data directory back."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import (
    install as wal_tool,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import (
    native,
    pitr,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (
    BackupError,
    next_segment,
    segment_parts,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.config import (
    BackupConfig,
)
from conftest import BIN, PG_TEST_PORT_BASE, REPO, ansible_env
from pgcluster import PG_BIN, PgCluster, as_postgres, make_dirs_for_postgres

pytestmark = pytest.mark.slow
BASE_PORT = int(os.environ.get("KNOWNGOOD_TEST_BASE_PORT", "27000"))
ROOT = Path(f"/tmp/kgpitr-{BASE_PORT}")
PORT = PG_TEST_PORT_BASE + 160  # past pg_factory's block
NAME = "kgpitr"


class World:
    def __init__(self, pg: PgCluster, cfg: BackupConfig, marks: dict) -> None:
        self.pg, self.cfg, self.marks = pg, cfg, marks

    def tags(self, port: int | None = None) -> set[str]:
        with psycopg.connect(host="127.0.0.1", port=port or self.pg.port, user="postgres",
                             autocommit=True, connect_timeout=5) as conn:  # fmt: skip
            return {r[0] for r in conn.execute("SELECT tag FROM sentinel").fetchall()}

    def request(self, **kw) -> pitr.Request:
        return pitr.Request(**{"confirm": NAME, "timeout": 300, **kw})

    def put_back(self, result: dict) -> None:
        """Undo a rollback in the test: the original data directory back in place, started."""
        data = self.pg.data_dir
        as_postgres([PG_BIN / "pg_ctl", "stop", "-D", data, "-m", "immediate"], check=False)
        shutil.rmtree(data)
        os.rename(result["aside_dir"], data)
        for path in (pitr.state_path(str(data)), pitr.marker_path(str(data))):
            Path(path).unlink(missing_ok=True)
        self.pg.start()

    def save(self) -> Path:
        """A copy of the live data directory (stopped for the copy), for put_back_copy: a delta
        restore rewrites the live directory in place."""
        copy = ROOT / "saved-data"
        shutil.rmtree(copy, ignore_errors=True)
        self.pg.stop(remove=False)
        subprocess.run(["cp", "-a", str(self.pg.data_dir), str(copy)], check=True)
        self.pg.start()
        return copy

    def put_back_copy(self, copy: Path, result: dict) -> None:
        data = self.pg.data_dir
        as_postgres([PG_BIN / "pg_ctl", "stop", "-D", data, "-m", "immediate"], check=False)
        shutil.rmtree(data)
        os.rename(copy, data)
        shutil.rmtree(result["aside_dir"], ignore_errors=True)
        for path in (pitr.state_path(str(data)), pitr.marker_path(str(data))):
            Path(path).unlink(missing_ok=True)
        self.pg.start()


def _mark(pg: PgCluster, tag: str) -> dict:
    """Commit one sentinel row in its own transaction; its xid, commit LSN and time."""
    with pg.connect() as conn:
        with conn.transaction():
            xid = conn.execute("SELECT txid_current()").fetchone()[0]
            conn.execute("INSERT INTO sentinel VALUES (%s)", (tag,))
        lsn, now = conn.execute("SELECT pg_current_wal_insert_lsn()::text, clock_timestamp()"
                                ).fetchone()  # fmt: skip
    time.sleep(0.05)
    return {"xid": xid, "lsn": lsn, "time": now.isoformat()}


@pytest.fixture(scope="module")
def world():
    shutil.rmtree(ROOT, ignore_errors=True)
    make_dirs_for_postgres(ROOT)
    pg = PgCluster(ROOT / "pg", port=PORT, name=NAME).init(archive_mode="on")
    cfg = BackupConfig.from_dict(
        {
            "cluster": NAME,
            "pg": pg.backend_config(),
            "spool_dir": str(ROOT / "spool"),
            "catalog_dir": str(ROOT / "catalog"),
            "compression": "lz4",
            "parallel": 4,
            "retries": {"attempts": 2, "base_delay": 0.05, "max_delay": 0.1},
            "locations": [{"name": "local-a", "type": "local", "path": str(ROOT / "a")}],
        }
    )
    tool = wal_tool.install_tool(cfg, str(ROOT / "tool"))
    pg.configure(archive_command=tool["archive_command"])
    try:
        pg.start()
        pg.sql("CREATE TABLE sentinel (tag text PRIMARY KEY)")
        pg.sql("CREATE TABLE bulk AS SELECT g AS id, md5(g::text) AS v "
               "FROM generate_series(1, 400000) g")  # fmt: skip
        pg.sql("CREATE TABLE keep (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text)")
        pg.sql("INSERT INTO keep (v) SELECT 'row ' || g FROM generate_series(1, 100) g")
        pg.sql("CREATE TABLE other (v text)")
        pg.sql("CREATE TABLE dropped AS SELECT g AS id FROM generate_series(1, 10) g")
        pg.switch_wal()
        marks = {"pre_backup": _mark(pg, "pre_backup")}
        native.take_backup(cfg, "full")
        for tag in ("before_time", "after_time", "before_lsn", "after_lsn", "before_xid",
                    "xid_boundary", "after_xid"):  # fmt: skip
            marks[tag] = _mark(pg, tag)
            if tag == "after_time":
                pg.switch_wal()  # the targets span several segments
        _mark(pg, "before_name")
        pg.sql("SELECT pg_create_restore_point('kg-point')")
        _mark(pg, "after_name")
        marks["table_target"] = _mark(pg, "before_table_damage")
        pg.sql("SELECT pg_create_restore_point('kg-twice')")  # ambiguous: refused as a target
        pg.sql("SELECT pg_create_restore_point('kg-twice')")
        # The first transaction after the target: recovery pauses before its commit, with its
        # AccessExclusiveLock already replayed (WAL-logged before the commit).
        pg.sql("DROP TABLE dropped")
        pg.sql("DELETE FROM keep")  # the damage the table strategy undoes
        pg.sql("INSERT INTO other VALUES ('written after the target')")
        marks["last"] = _mark(pg, "last")
        pg.switch_wal()
        yield World(pg, cfg, marks)
    finally:
        pg.stop(remove=False, mode="immediate")
        shutil.rmtree(ROOT, ignore_errors=True)


BEFORE_BACKUP = {"pre_backup"}
ALL_AFTER = ["before_time", "after_time", "before_lsn", "after_lsn", "before_xid",
             "xid_boundary", "after_xid", "before_name", "after_name"]  # fmt: skip


def _expect(upto: str, inclusive: bool = True) -> set[str]:
    index = ALL_AFTER.index(upto)
    return BEFORE_BACKUP | set(ALL_AFTER[: index + (1 if inclusive else 0)])


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("time", _expect("before_time")),
        ("lsn", _expect("before_lsn")),
        ("xid_inclusive", _expect("xid_boundary")),
        ("xid_exclusive", _expect("xid_boundary", inclusive=False)),
        ("name", _expect("before_name")),
        ("immediate", BEFORE_BACKUP),
    ],
)
def test_each_target_lands_exactly_on_the_sentinel_rows(world, kind, expected):
    marks = world.marks
    target = {
        "time": {"target_time": marks["before_time"]["time"]},
        "lsn": {"target_lsn": marks["before_lsn"]["lsn"]},
        "xid_inclusive": {"target_xid": str(marks["xid_boundary"]["xid"])},
        "xid_exclusive": {
            "target_xid": str(marks["xid_boundary"]["xid"]),
            "target_inclusive": False,
        },  # fmt: skip
        "name": {"target_name": "kg-point"},
        "immediate": {"target_immediate": True},
    }[kind]
    req = world.request(state="recovered", run_id=f"t-{kind}", **target)
    result = pitr.run(world.cfg, req)
    try:
        assert result["changed"] and result["paused"] and not result["promoted"]
        assert world.tags() == expected
        assert result["plan"]["wal_from"] and result["plan"]["wal_to"]
        assert result["wal_bytes_replayed"] > 0 and result["reached_lsn"]
        assert result["first_read_seconds"] is not None
        if kind == "name":  # located in the archive before the base backup was chosen
            assert result["plan"]["restore_point_lsn"], result["plan"]
        assert {"plan", "stop", "move_aside", "restore", "replay"} <= set(result["steps"])
        with world.pg.connect() as conn:  # read-only while paused
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        again = pitr.run(world.cfg, req)  # converged: nothing to do
        assert not again["changed"] and again["paused"]
    finally:
        world.put_back(result)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("time", _expect("before_time")),
        ("xid_exclusive", _expect("xid_boundary", inclusive=False)),
        ("immediate", BEFORE_BACKUP),
    ],
)
def test_delta_lands_exactly_on_the_sentinel_rows(world, kind, expected):
    marks = world.marks
    target = {
        "time": {"target_time": marks["before_time"]["time"]},
        "xid_exclusive": {
            "target_xid": str(marks["xid_boundary"]["xid"]),
            "target_inclusive": False,
        },  # fmt: skip
        "immediate": {"target_immediate": True},
    }[kind]
    sentinel = world.pg.scalar("SELECT pg_relation_filepath('sentinel')")  # changed since
    copy = world.save()
    req = world.request(state="recovered", run_id=f"d-{kind}", mode="delta", **target)
    checked = pitr.run(world.cfg, req, check_mode=True)  # what it would change, read-only
    assert checked["delta"]["files_checked"] > 0 and checked["delta"]["files_rewritten"] > 0
    assert "rewrite global/pg_control" in checked["diff"]["prepared"]
    assert world.pg.scalar("SELECT NOT pg_is_in_recovery()")
    assert not list(world.pg.data_dir.parent.glob("data.pre-restore-*"))
    result = pitr.run(world.cfg, req)
    try:
        assert result["changed"] and result["paused"] and not result["promoted"]
        assert result["mode"] == "delta"
        assert world.tags() == expected
        assert result["wal_bytes_replayed"] > 0 and result["reached_lsn"]
        assert {"plan", "stop", "restore", "replay"} <= set(result["steps"])
        assert "move_aside" not in result["steps"]
        delta = result["delta"]
        total = sum(f.stat().st_size for f in copy.rglob("*") if f.is_file())
        assert delta["files_checked"] > 100 and delta["files_removed"] > 0, delta
        assert 0 < delta["bytes_written"] < total / 2, (delta, total)  # not a full restore
        aside = Path(result["aside_dir"])
        journal = json.loads((aside / native.DELTA_JOURNAL).read_text())
        assert "global/pg_control" in journal["replaced"] and sentinel in journal["replaced"]
        assert (aside / sentinel).read_bytes() == (copy / sentinel).read_bytes()  # old bytes
        assert not (aside / "PG_VERSION").exists()  # only what was replaced or removed
        with world.pg.connect() as conn:  # read-only while paused
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        again = pitr.run(world.cfg, req)  # converged: nothing to do
        assert not again["changed"] and again["paused"]
    finally:
        world.put_back_copy(copy, result)


def _spawn_pitr(world, **kw) -> subprocess.Popen:
    """pitr.run(state=recovered, **kw) in a child process, to be killed mid-way."""
    code = (
        "import sys, json; sys.path.insert(0, {!r})\n"
        "from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import pitr\n"
        "from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.config import "
        "BackupConfig\n"
        "cfg = BackupConfig.from_dict(json.loads(sys.argv[1]))\n"
        "pitr.run(cfg, pitr.Request(**json.loads(sys.argv[2])))\n"
    ).format(str(REPO / "collections"))
    args = {"state": "recovered", "confirm": NAME, **kw}
    return subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(world.cfg.to_dict()), json.dumps(args)]
    )


def test_killed_delta_reruns_and_converges(world):
    target = {"target_time": world.marks["before_time"]["time"]}
    sentinel = world.pg.scalar("SELECT pg_relation_filepath('sentinel')")
    copy = world.save()
    data = str(world.pg.data_dir)
    proc = _spawn_pitr(world, run_id="dkill", mode="delta", **target)
    marker = Path(pitr.marker_path(data))
    journal = Path(f"{data}.pre-restore-dkill") / native.DELTA_JOURNAL
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists():  # files are being replaced now
            break
        time.sleep(0.002)
    assert proc.poll() is None, "the delta finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists() and json.loads(marker.read_text())["mode"] == "delta"
    # The re-run does not name the mode: the marker finishes the killed run as a delta.
    result = pitr.run(world.cfg, world.request(state="recovered", run_id="dkill", **target))
    try:
        assert result["paused"] and result["mode"] == "delta" and not marker.exists()
        assert world.tags() == _expect("before_time")
        kept = Path(result["aside_dir"]) / sentinel
        assert kept.read_bytes() == (copy / sentinel).read_bytes()
    finally:
        world.put_back_copy(copy, result)


def test_delta_restores_a_file_changed_behind_our_back(world):
    rel = world.pg.scalar("SELECT pg_relation_filepath('bulk')")
    want = world.pg.sql("SELECT count(*), sum(hashtext(v)) FROM bulk")
    copy = world.save()
    world.pg.stop(remove=False)
    path = world.pg.data_dir / rel
    stat = path.stat()
    good = path.read_bytes()
    bad = bytearray(good)
    for offset in range(8192 * 10 + 200, 8192 * 10 + 8000, 37):  # inside the 11th page's rows
        bad[offset] ^= 0xFF
    path.write_bytes(bytes(bad))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime
    result = pitr.run(world.cfg, world.request(state="recovered", run_id="dcorrupt",
                                               mode="delta", target_immediate=True))  # fmt: skip
    try:
        aside = Path(result["aside_dir"])
        assert rel in json.loads((aside / native.DELTA_JOURNAL).read_text())["replaced"]
        assert (aside / rel).read_bytes() == bytes(bad)  # the damaged file, kept
        assert path.read_bytes() != bytes(bad)
        assert world.pg.sql("SELECT count(*), sum(hashtext(v)) FROM bulk") == want
        assert world.tags() == BEFORE_BACKUP
    finally:
        world.put_back_copy(copy, result)


def _untouched(world, call):
    before = sorted(os.listdir(world.pg.data_dir))
    with pytest.raises(BackupError) as err:
        call()
    assert (world.pg.data_dir / "postmaster.pid").exists()
    assert world.pg.scalar("SELECT NOT pg_is_in_recovery()")
    assert sorted(os.listdir(world.pg.data_dir)) == before
    assert not list(world.pg.data_dir.parent.glob("data.pre-restore-*"))
    return str(err.value)


def test_preflight_refusals_touch_nothing(world):
    now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    cases = {
        "target after the end of the archive": {"target_time": now},
        "conflicting targets": {"target_time": world.marks["before_time"]["time"],
                                "target_lsn": world.marks["before_lsn"]["lsn"]},
        "no recovery target": {},
        "UTC offset": {"target_time": "2026-01-01T00:00:00"},
        "in the future": {"target_time": "2999-01-01T00:00:00+00:00"},
        "no backup before the target": {"target_time": "2001-01-01T00:00:00+00:00"},
        "does not match the cluster name": {"target_immediate": True, "confirm": "other"},
        "occurs 2 times in the archive": {"target_name": "kg-twice"},
        "is not in the archive": {"target_name": "kg-never-created"},
    }  # fmt: skip
    for words, kw in cases.items():
        req = world.request(state="recovered", run_id="refused", **kw)
        message = _untouched(world, lambda req=req: pitr.run(world.cfg, req))
        assert words in message, (words, message)
    with pytest.raises(BackupError, match="target after the end of the archive"):
        pitr.run(world.cfg, world.request(target_lsn="FF/0"))


def test_wal_gap_is_refused_naming_the_segment(world):
    plan = pitr.plan(world.cfg, world.request(), pitr.parse_target(world.request(
        target_time=world.marks["after_xid"]["time"])))  # fmt: skip
    wal_dir = Path(world.cfg.location("local-a").path) / NAME / "wal"
    gap = next_segment(plan["wal_from"])  # between the backup and the target
    assert segment_parts(gap)[1] < segment_parts(plan["wal_to"])[1], plan
    victim = [p for p in wal_dir.rglob(f"{gap}.*") if ".backup" not in p.name]
    assert len(victim) == 1, victim
    moved = victim[0].with_name("hidden." + victim[0].name)
    victim[0].rename(moved)
    try:
        req = world.request(
            state="recovered", run_id="gap", target_time=world.marks["after_xid"]["time"]
        )
        message = _untouched(world, lambda: pitr.run(world.cfg, req))
        assert f"WAL gap: segment {gap} is missing" in message
    finally:
        moved.rename(victim[0])


def test_killed_restore_reruns_and_converges_keeping_the_aside_copy(world):
    target = {"target_time": world.marks["before_time"]["time"]}
    data = str(world.pg.data_dir)
    proc = _spawn_pitr(world, run_id="killed", **target)
    marker = Path(pitr.marker_path(data))
    aside = Path(f"{data}.pre-restore-killed")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if marker.exists() and aside.exists() and (world.pg.data_dir / "base").exists():
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the restore finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists()
    assert (aside / "PG_VERSION").exists()
    result = pitr.run(world.cfg, world.request(state="recovered", run_id="killed", **target))
    try:
        assert result["paused"] and result["aside_dir"] == str(aside)
        assert world.tags() == _expect("before_time")
        assert not marker.exists()
        # the aside copy still starts and holds the pre-restore data
        copy = ROOT / "aside-copy"
        shutil.copytree(aside, copy / "data", symlinks=True)
        make_dirs_for_postgres(copy / "run")
        for path in [copy, *copy.rglob("*")]:
            os.chown(path, *os.stat(aside)[4:6])
        (copy / "data" / "postmaster.pid").unlink(missing_ok=True)
        with (copy / "data" / "postgresql.auto.conf").open("a") as conf:
            conf.write(f"port = {PORT + 1}\narchive_mode = off\n"
                       f"unix_socket_directories = '{copy / 'run'}'\n")  # fmt: skip
        as_postgres([PG_BIN / "pg_ctl", "start", "-D", copy / "data", "-w", "-t", "60",
                     "-l", copy / "log"])  # fmt: skip
        try:
            assert "last" in world.tags(PORT + 1)
        finally:
            as_postgres([PG_BIN / "pg_ctl", "stop", "-D", copy / "data", "-m", "immediate"],
                        check=False)  # fmt: skip
            shutil.rmtree(copy, ignore_errors=True)
    finally:
        world.put_back(result)


def test_table_strategy_brings_back_one_table_and_keeps_later_writes(world):
    assert world.pg.scalar("SELECT count(*) FROM keep") == 0
    req = world.request(state="table_restored", strategy="table", tables=["public.keep"],
                        run_id="tbl", target_time=world.marks["table_target"]["time"])  # fmt: skip
    result = pitr.run(world.cfg, req)
    assert result["changed"]
    [table] = result["tables"]
    assert table["rows_before"] == 0 and table["rows_after"] == 100
    assert table["renamed_to"] == "public.keep__pre_restore_tbl"
    assert world.pg.scalar("SELECT count(*) FROM keep") == 100
    assert world.pg.scalar("SELECT count(*) FROM keep__pre_restore_tbl") == 0
    assert world.pg.scalar("SELECT count(*) FROM other") == 1  # written after the target
    assert "last" in world.tags()  # the rest of the database is untouched
    assert not world.pg.scalar("SELECT pg_is_in_recovery()")
    assert not list(Path(world.cfg.spool_dir).glob("pitr-scratch-*"))
    again = pitr.run(world.cfg, req)
    assert not again["changed"]
    released = pitr.run(world.cfg, world.request(state="released", strategy="table",
                                                 tables=["public.keep"], run_id="tbl"))  # fmt: skip
    assert released["changed"]
    assert world.pg.scalar("SELECT to_regclass('keep__pre_restore_tbl') IS NULL")


def test_table_strategy_brings_back_a_dropped_table(world):
    req = world.request(state="table_restored", strategy="table", tables=["public.dropped"],
                        run_id="drp", target_time=world.marks["table_target"]["time"],
                        timeout=120)  # fmt: skip
    result = pitr.run(world.cfg, req)
    [table] = result["tables"]
    assert table["existed"] is False and table["rows_after"] == 10
    assert world.pg.scalar("SELECT count(*) FROM dropped") == 10


def test_module_runs_through_ansible(world, tmp_path):
    env = ansible_env(tmp_path)
    config = {k: v for k, v in world.cfg.to_dict().items() if not k.endswith("_key")}
    base = {"config": config, "target_time": world.marks["before_time"]["time"]}

    def module(**kw):
        # ad-hoc -a takes the arguments as one JSON document
        done = subprocess.run(
            [str(BIN / "ansible"), "localhost", "-m", "knowngood.runbooks.pg_pitr", "-a",
             json.dumps({**base, **kw}), "-e", f"ansible_python_interpreter={sys.executable}",
             "-o"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        line = done.stdout.strip().splitlines()[-1]
        return json.loads(line.split("=> ", 1)[1]), line

    planned, line = module(state="planned")
    assert "SUCCESS" in line, line
    assert planned["plan"]["backup"] and planned["plan"]["wal_to"] and not planned["changed"]
    assert set(pitr.empty_result(pitr.Request())) <= set(planned)
    refused, line = module(state="recovered", confirm="not-it")
    assert "FAILED" in line and "does not match the cluster name" in refused["msg"], line
    assert refused["plan"]["backup"] == planned["plan"]["backup"]
    assert world.pg.scalar("SELECT NOT pg_is_in_recovery()")


def test_second_rollback_on_the_new_timeline(world):
    first = pitr.run(
        world.cfg,
        world.request(
            state="recovered", run_id="tl-a", target_time=world.marks["before_time"]["time"]
        ),
    )
    promoted = pitr.run(
        world.cfg,
        world.request(
            state="promoted", run_id="tl-a", target_time=world.marks["before_time"]["time"]
        ),
    )
    assert promoted["promoted"] and promoted["timeline"] == 2
    assert not pitr.run(
        world.cfg,
        world.request(state="promoted", run_id="tl-a", target_time="2001-01-01T00:00:00+00:00"),
    )["changed"]  # already promoted: converged, nothing re-planned
    world.pg.sql("CREATE TABLE IF NOT EXISTS warm (i int)")
    tl2 = _mark(world.pg, "tl2_before")
    _mark(world.pg, "tl2_after")
    world.pg.switch_wal()
    second = pitr.run(world.cfg, world.request(state="recovered", run_id="tl-b",
                                               target_time=tl2["time"]))  # fmt: skip
    assert second["paused"] and second["plan"]["timeline_path"] == [1, 2]
    assert world.tags() == _expect("before_time") | {"tl2_before"}
    released = pitr.run(world.cfg, world.request(state="released",
                                                 aside_dir=first["aside_dir"]))  # fmt: skip
    assert released["changed"] and not Path(first["aside_dir"]).exists()
    assert Path(second["aside_dir"]).exists()
