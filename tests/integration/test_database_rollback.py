"""playbooks/rollback-database.yml on the lab: real PostgreSQL primary and standby, real WAL
archive and backups, nginx in front of the app.

PITR to the restore point a deploy made before its irreversible migration; a wrong
confirmation refused with nothing changed; the table strategy undoing a bad DELETE while the
app keeps serving and a later write to another table survives; writes refused while the
database is restored and accepted after; the standby streaming again on the new timeline.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
from conftest import LoadClient, http_json

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def db_host(lab) -> dict:
    inventory = json.loads(Path(lab.inventory).with_suffix(".json").read_text())
    return inventory["all"]["children"]["db"]["hosts"]["db1"]


def superuser_dsn(lab, port_key: str = "primary_port", dbname: str = "app") -> str:
    pg = db_host(lab)["knowngood_backup"]["pg"]
    port = pg["port"] if port_key == "primary_port" else pg["port"] + 1
    return f"host=127.0.0.1 port={port} user=postgres dbname={dbname} connect_timeout=3"


@contextlib.contextmanager
def conn(dsn: str):
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        yield c


def query(dsn: str, sql: str, params=()) -> list:
    with conn(dsn) as c:
        cur = c.execute(sql, params)
        return cur.fetchall() if cur.description else []


def archive_now(lab) -> None:
    """Switch the WAL segment and wait until the archiver has it."""
    dsn = superuser_dsn(lab, dbname="postgres")
    (segment,) = query(dsn, "SELECT pg_walfile_name(pg_switch_wal())")[0]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        (last,) = query(dsn, "SELECT last_archived_wal FROM pg_stat_archiver")[0]
        if last and last >= segment:
            return
        time.sleep(0.1)
    raise AssertionError(f"{segment} not archived in 30s")


def cluster(lab) -> str:
    return lab.status["postgres"]["name"]


def timeline(dsn: str) -> int:
    (tli,) = query(dsn, "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)")[0]
    return int(tli, 16)


def live_pool(lab) -> str:
    text = Path(db_host_lb(lab)["knowngood_lb_live_file"]).read_text()
    return re.search(r"knowngood-pool:\s*(\w+)", text).group(1)


def db_host_lb(lab) -> dict:
    inventory = json.loads(Path(lab.inventory).with_suffix(".json").read_text())
    return inventory["all"]["children"]["lb"]["hosts"]["lb1"]


PROGRESS_LINE = re.compile(
    r"^db1: (backup|restore|replay) (.+?)(?: \((\d+) %\))?, [^,]+ elapsed, "
    r"(?:about .+ left|done|finishing|estimate unknown)$",
    re.M,
)
SCALE = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}


def progress_amounts(text: str) -> tuple[float, float]:
    """(done, total) of '1.31 GB of 2.20 GB', '3 of 7 WAL segments' or '5.00 MB' (total 0)."""
    text = text.removesuffix(" WAL segments")
    parts = [p.split() for p in text.split(" of ")]
    values = [float(p[0]) * SCALE[p[1]] if len(p) > 1 else float(p[0]) for p in parts]
    return values[0], values[1] if len(values) > 1 else 0.0


def assert_progress_shown_and_recorded(lab, output: str, rep: dict) -> None:
    """The safety backup, the restore and the replay each printed progress lines while they ran:
    amounts that never go back, each phase ending at 100 %; the result in the audit record and
    the run's report carry each phase's summary."""
    seen: dict[str, list[tuple[float, float, int]]] = {}
    for phase, text, pct in PROGRESS_LINE.findall(output):
        seen.setdefault(phase, []).append((*progress_amounts(text), int(pct or 0)))
    assert set(seen) == {"backup", "restore", "replay"}, output
    for phase, points in seen.items():
        amounts = [a for a, _w, _p in points]
        assert amounts == sorted(amounts), (phase, points)
        assert points[-1][2] == 100 and points[-1][0] == points[-1][1] > 0, (phase, points)
    restored = {p["phase"]: p for p in rep["restore_progress"]}
    assert set(restored) == {"restore", "replay"}
    assert restored["restore"]["unit"] == "bytes" and restored["replay"]["unit"] == "segments"
    for summary in restored.values():
        assert summary["finished"] and summary["done"] == summary["total"] > 0
    record = json.loads((lab.root / "audit" / f"{rep['run_id']}.json").read_text())
    events = {e["task"].split(" : ")[-1]: e for e in record["events"]}
    restore_event = events["Restore and replay to the target, paused there"]
    assert restore_event["result"]["progress"]["phases"] == rep["restore_progress"]
    recorded = restore_event["result"]["progress"]["lines"]
    assert recorded and all(line in output for line in recorded), recorded
    assert "(100 %)" in recorded[-1] and recorded[-1].startswith("db1: replay "), recorded
    backup_event = events["Take the pre-restore safety backup to every location"]
    (backup_phase,) = backup_event["result"]["progress"]["phases"]
    assert backup_phase["phase"] == "backup" and backup_phase["done"] > 0


def report(lab) -> dict:
    files = sorted(
        (lab.root / "audit").glob("*.rollback-database.json"), key=lambda p: p.stat().st_mtime
    )
    return json.loads(files[-1].read_text())


class Writer:
    """Inserts a row through the app's own DSN every 50 ms and records each attempt."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.attempts: list[tuple[float, float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            started = time.time()
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=2) as c:
                    c.execute("INSERT INTO write_probe (at) VALUES (now())")
                ok = True
            except psycopg.Error:
                ok = False
            self.attempts.append((started, time.time(), ok))
            time.sleep(0.05)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture(scope="module")
def backed_up(lab_session):
    """Archiving on, and a full backup: the base every restore here starts from."""
    run = lab_session.playbook("setup-backups")
    assert run.rc == 0, run.output
    run = lab_session.playbook("backup", backup_type="full")
    assert run.rc == 0, run.output
    return lab_session


def test_wrong_confirm_is_refused_with_nothing_changed(lab, backed_up):
    lab.seed("v1")
    app_dsn = lab.status["postgres"]["primary_dsn"]
    primary = superuser_dsn(lab, dbname="postgres")
    before = (timeline(primary), live_pool(lab), query(app_dsn, "SELECT count(*) FROM orders"))
    data_dir = Path(lab.status["postgres"]["primary_data_dir"])
    kept = set(data_dir.parent.glob(data_dir.name + ".pre-restore-*"))
    run = lab.playbook(
        "rollback-database",
        target_immediate=True,
        confirm="not-" + cluster(lab),
        rollback_reason="wrong cluster drill",
    )
    assert run.rc != 0
    assert "does not match the cluster" in run.output and "nothing was changed" in run.output
    after = (timeline(primary), live_pool(lab), query(app_dsn, "SELECT count(*) FROM orders"))
    assert after == before
    assert query(primary, "SELECT bool_and(datallowconn) FROM pg_database WHERE datname = 'app'")[
        0
    ][0]
    assert set(data_dir.parent.glob(data_dir.name + ".pre-restore-*")) == kept


class Untouched:
    """What a refused rollback must leave as it found: the live pool and release behind the
    load balancer, the app's data, the server process (not restarted, no recovery), the data
    directory (no aside copy, no recovery files) and the backup catalog (no safety backup)."""

    def __init__(self, lab) -> None:
        self.lab = lab
        self.app_dsn = lab.status["postgres"]["primary_dsn"]
        self.primary = superuser_dsn(lab, dbname="postgres")
        self.data_dir = Path(lab.status["postgres"]["primary_data_dir"])
        self.catalog = Path(db_host(lab)["knowngood_backup"]["catalog_dir"])

    def snapshot(self) -> dict:
        return {
            "pool": live_pool(self.lab),
            "releases": self.lab.live_releases(),
            "orders": query(self.app_dsn, "SELECT count(*), md5(string_agg(item, ',' ORDER BY id)) "
                            "FROM orders"),
            "server": query(self.primary, "SELECT pg_postmaster_start_time(), pg_is_in_recovery(), "
                            "(SELECT bool_and(datallowconn) FROM pg_database)"),
            "timeline": timeline(self.primary),
            "data_dir": sorted(p.name for p in self.data_dir.iterdir() if "signal" in p.name
                               or p.name.startswith("knowngood")),
            "siblings": sorted(p.name for p in self.data_dir.parent.iterdir()
                               if p.name.startswith(self.data_dir.name)),
            "catalog": sorted(str(p.relative_to(self.catalog)) for p in self.catalog.rglob("*")),
        }  # fmt: skip

    def assert_serving_and_writable(self) -> None:
        assert http_json(self.lab.status["lb_url"] + "/db").get("orders") is not None
        with conn(self.app_dsn) as c:  # the app's own role can still write
            c.execute("INSERT INTO orders (item) VALUES ('written after a refusal')")


# Through the runbook in make test: the two refusals that read the archive (a restore point
# made twice; a WAL gap with both S3 regions down and the other copies moved aside). test_pitr
# proves every planner refusal against a real cluster at the engine; the other six through the
# runbook run with make test-extended (about 60 s).
ARCHIVE_REFUSALS = ("occurs 2 times in the archive", "WAL gap: segment")


def test_planner_refusals_that_read_the_archive_stop_before_writes_stop(lab, backed_up):
    """See planner_refusals: the refusals that read the archive."""
    planner_refusals(lab, lambda words: words in ARCHIVE_REFUSALS)


def test_every_other_planner_refusal_stops_before_writes_stop(lab, backed_up):
    """See planner_refusals: the target checks (future, before any backup, past the archive's
    end, unknown name, two kinds of target)."""
    planner_refusals(lab, lambda words: words not in ARCHIVE_REFUSALS)


def planner_refusals(lab, chosen):
    """Each class of refusal the planner makes that `chosen(words)` picks, through the
    runbook: the run fails in the preflight with the planner's reason, before db_stop_writes,
    the safety backup or the restore start, and the service, the writes and the data are as
    they were."""
    from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import pitr
    from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (
        next_segment,
    )
    from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.config import (
        BackupConfig,
    )

    from knowngood.lab import s3
    from knowngood.lab.config import LabConfig

    lab.seed("v1")
    state = Untouched(lab)
    primary = state.primary
    twice, past_gap = (f"kg-{what}-{time.time_ns()}" for what in ("twice", "past-a-gap"))
    with conn(primary) as c:  # a restore point made twice is ambiguous
        c.execute("SELECT pg_create_restore_point(%s)", (twice,))
        c.execute("SELECT pg_create_restore_point(%s)", (twice,))
    with conn(state.app_dsn) as c:
        c.execute("INSERT INTO orders (item) VALUES ('before the gap target')")
    archive_now(lab)
    with conn(primary) as c:
        c.execute("SELECT pg_create_restore_point(%s)", (past_gap,))
    archive_now(lab)
    (db_now,) = query(
        primary, "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS')"
    )[0]
    future = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 86400))
    cases = [
        ("in the future", {"target_time": future}),
        ("no backup before the target", {"target_time": "2001-01-01T00:00:00+00:00"}),
        ("target after the end of the archive", {"target_time": db_now + "+00:00"}),
        ("target after the end of the archive", {"target_lsn": "FF/0"}),
        ("is not in the archive", {"target_name": "kg-never-created"}),
        ("occurs 2 times in the archive", {"target_name": twice}),
        ("needs exactly one of", {"target_name": twice, "target_lsn": "0/1"}),
        ("WAL gap: segment", {"target_name": past_gap}),
    ]
    # The gap: the segment after the newest backup's start, gone from every location that
    # answers (region A and B's S3 down, the local and export copies moved aside).
    host = db_host(lab)
    backup_cfg = {
        **host["knowngood_backup"],
        "encryption_key": host["knowngood_backup_encryption_key"],
        "signing_key": host["knowngood_backup_signing_key"],
    }
    base = pitr.backup_entries(BackupConfig.from_dict(backup_cfg))[-1]
    gap = next_segment(base["wal_start"])
    labcfg = LabConfig.load(lab.root)
    cases = [(words, target) for words, target in cases if chosen(words)]
    assert cases, "no case chosen"
    seen = []
    for words, target in cases:
        hidden = []
        if words.startswith("WAL gap"):
            for index in (0, 1):
                s3.s3_region_down(labcfg, index)
            for copy in (lab.root / "backups").rglob(f"{gap}*"):
                if "spool" not in copy.parts and ".backup" not in copy.name:
                    hidden.append((copy, copy.with_name("hidden-" + copy.name)))
                    copy.rename(hidden[-1][1])
            assert hidden, f"no archived copy of {gap} to hide"
        before = state.snapshot()
        try:
            run = lab.playbook(
                "rollback-database", confirm=cluster(lab), rollback_reason="refusal drill", **target
            )
        finally:
            for copy, aside in hidden:
                aside.rename(copy)
            if hidden:
                for index in (0, 1):
                    s3.s3_region_up(labcfg, lambda _msg: None, index)
        assert run.rc != 0, (words, run.output)
        assert words in run.output and "nothing was changed" in run.output, (words, run.output)
        # Refused in the preflight: no step after it ran.
        for step in (
            "Step 1: stop all write operations",
            "Stop writes, restore, verify",
            "Snapshot this host's managed configuration",
        ):
            assert f"TASK [{step}" not in run.output and "db_stop_writes :" not in run.output
        assert state.snapshot() == before, words
        state.assert_serving_and_writable()
        seen.append(words)
    assert len(seen) == len(cases)


def release_aside(lab, aside: Path, reason: str):
    """rollback-database.yml asked to delete the data directory a rollback kept."""
    return lab.playbook(
        "rollback-database",
        db_release_aside=True,
        aside_dir=str(aside),
        confirm=cluster(lab),
        rollback_reason=reason,
    )


def test_release_deletes_only_this_clusters_own_recorded_aside_copy(lab, tmp_path):
    """db_release_aside with a directory no rollback of this cluster kept (a stopped data
    directory of another cluster beside the live one), a symlink to it, the live data
    directory itself: each refused before anything changes; every directory and file is still
    there and the database answers and takes writes."""
    lab.seed("v1")
    app_dsn = lab.status["postgres"]["primary_dsn"]
    data_dir = Path(lab.status["postgres"]["primary_data_dir"])
    foreign = data_dir.parent / f"{data_dir.name}.pre-restore-foreign"
    link = tmp_path / "aside-link"
    try:
        (foreign / "base" / "1").mkdir(parents=True)
        (foreign / "PG_VERSION").write_text("15\n")
        (foreign / "base" / "1" / "1259").write_bytes(b"\0" * 8192)
        link.symlink_to(foreign)
        for aside, why in (
            (foreign, "is not an aside copy this cluster's rollbacks kept"),
            (link, "is a symlink"),
            (data_dir, "is or holds the live data directory"),
        ):
            run = release_aside(lab, aside, "free the disk")
            assert run.rc != 0, run.output[-3000:]
            assert why in run.output and "nothing was changed" in run.output, run.output[-3000:]
            assert (foreign / "PG_VERSION").read_text() == "15\n"
            assert (foreign / "base" / "1" / "1259").stat().st_size == 8192
            assert (data_dir / "PG_VERSION").exists() and link.is_symlink()
        with conn(app_dsn) as c:
            c.execute("INSERT INTO orders (item) VALUES ('after the refused release')")
        assert query(app_dsn, "SELECT count(*) FROM orders WHERE item = %s",
                     ("after the refused release",)) == [(1,)]  # fmt: skip
    finally:
        shutil.rmtree(foreign, ignore_errors=True)


def test_table_strategy_restores_deleted_rows_keeps_later_writes_and_serves(lab, backed_up):
    lab.seed("v1")
    app_dsn = lab.status["postgres"]["primary_dsn"]
    with conn(app_dsn) as c:
        c.execute("INSERT INTO orders (item) SELECT 'item ' || g FROM generate_series(1, 20) g")
        c.execute("CREATE TABLE audit_log (id serial PRIMARY KEY, note text)")
    time.sleep(1.1)
    (target,) = query(app_dsn, "SELECT to_char(now(), 'YYYY-MM-DD\"T\"HH24:MI:SS.USOF')")[0]
    target = target + ":00" if re.search(r"[+-]\d\d$", target) else target
    time.sleep(1.1)
    with conn(app_dsn) as c:
        c.execute("DELETE FROM orders")  # the bad statement
        c.execute("INSERT INTO audit_log (note) VALUES ('written after the target')")
    archive_now(lab)
    with LoadClient(lab.status["lb_url"] + "/db", threads=2) as traffic:
        run = lab.playbook(
            "rollback-database",
            db_strategy="table",
            tables=["public.orders"],
            target_time=target,
            confirm=cluster(lab),
            rollback_reason="bad DELETE on orders",
            ticket="INC-42",
        )
    assert run.rc == 0, run.output
    assert query(app_dsn, "SELECT count(*) FROM orders")[0][0] == 20
    assert query(app_dsn, "SELECT note FROM audit_log") == [("written after the target",)]
    taken = [m[:34] for m in lab.lock_messages() if m.startswith("lock ")]
    assert taken == ["lock db1 for rollback-database run"]
    assert lab.locked_hosts() == []  # the run lock is given back
    assert traffic.responses and not traffic.failed, traffic.report()
    assert live_pool(lab) == "blue"


def test_pitr_to_deploy_restore_point_stops_writes_and_reseeds_standby(lab, backed_up):
    lab.seed("v1")
    app_dsn = lab.status["postgres"]["primary_dsn"]
    primary = superuser_dsn(lab, dbname="postgres")
    standby = superuser_dsn(lab, "standby_port", dbname="postgres")
    with conn(app_dsn) as c:
        c.execute("CREATE TABLE write_probe (id serial PRIMARY KEY, at timestamptz)")
        c.execute("INSERT INTO orders (item) SELECT 'before ' || g FROM generate_series(1, 5) g")
    deploy = lab.playbook("deploy-code", release_id="v3")
    assert deploy.rc == 0, deploy.output
    points = query(
        app_dsn,
        "SELECT restore_point FROM knowngood_schema_migrations WHERE revision = '0003'",
    )
    assert points and points[0][0].startswith("knowngood-") and points[0][0].endswith("-before-v3")
    point = points[0][0]
    with conn(app_dsn) as c:
        c.execute("INSERT INTO orders (item) SELECT 'after ' || g FROM generate_series(1, 3) g")
    # The code rollback cannot undo 0003 and names this database rollback instead.
    refused = lab.playbook("rollback-code", release_id="v1", rollback_reason="v3 broke")
    assert refused.rc != 0
    assert f"rollback-database.yml -e db_strategy=pitr -e target_name={point}" in refused.output
    archive_now(lab)
    tli_before = timeline(primary)

    with Writer(app_dsn) as writer, LoadClient(lab.status["lb_url"] + "/db", threads=2) as load:
        run = lab.playbook(
            "rollback-database",
            target_name=point,
            confirm=cluster(lab),
            rollback_reason="v3 migration dropped order notes",
            ticket="INC-43",
            knowngood_progress_interval=0.2,
            db_verify_queries=[
                "SELECT count(*) = 5 FROM orders",
                {
                    "name": "no currency yet",
                    "sql": "SELECT NOT EXISTS (SELECT 1 FROM information_schema.columns "
                    "WHERE table_name = 'orders' AND column_name = 'currency')",
                },
            ],
        )
        time.sleep(0.5)
    assert run.rc == 0, run.output
    # It locked the primary, the standby it re-seeds and the load balancer that stopped
    # writes, and gave every lock back.
    locked = [m.split()[1] for m in lab.lock_messages() if "for rollback-database run" in m]
    assert locked == ["db1", "db2", "lb1"]
    assert lab.locked_hosts() == []
    rep = report(lab)
    # Landed before the migration: schema 0001 only, the rows from before it, none from after.
    assert query(app_dsn, "SELECT max(revision) FROM knowngood_schema_migrations") == [("0001",)]
    assert query(app_dsn, "SELECT count(*) FROM orders WHERE item LIKE 'before %%'")[0][0] == 5
    assert query(app_dsn, "SELECT count(*) FROM orders WHERE item LIKE 'after %%'")[0][0] == 0
    # Writes: refused from the stop until the resume, accepted after.
    stopped, resumed = float(rep["writes_stopped_at"]), float(rep["writes_resumed_at"])
    during = [a for a in writer.attempts if a[0] > stopped and a[1] < resumed]
    assert during and not [a for a in during if a[2]], ([a for a in during if a[2]], rep)
    assert any(ok for s, _e, ok in writer.attempts if s > resumed + 0.2)
    # The app was drained, not broken: 503 maintenance while stopped, 200 before and after.
    codes = {code for _t, code, _r in load.responses}
    assert 503 in codes and codes <= {200, 503}, load.report()
    assert live_pool(lab) == "blue"
    # The report names what matters.
    assert rep["backup_used"] and rep["reached_lsn"] and rep["aside_dir"]
    assert rep["safety_backup"]["backup_id"] and rep["wal_bytes_replayed"]
    assert {"db_stop_writes", "db_restore", "db_verify", "db_resume"} <= set(rep["steps"])
    assert_progress_shown_and_recorded(lab, run.output, rep)
    # The new timeline, and the standby streaming on it.
    tli_after = timeline(primary)
    assert tli_after > tli_before
    assert query(standby, "SELECT received_tli, status FROM pg_stat_wal_receiver") == [
        (tli_after, "streaming")
    ]
    with conn(app_dsn) as c:
        c.execute("INSERT INTO orders (item) VALUES ('after the rollback')")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = query(
            superuser_dsn(lab, "standby_port"),
            "SELECT count(*) FROM orders WHERE item = 'after the rollback'",
        )
        if rows[0][0] == 1:
            break
        time.sleep(0.1)
    assert rows[0][0] == 1
    # The kept directory goes only when asked.
    aside = Path(rep["aside_dir"])
    assert aside.exists()
    released = release_aside(lab, aside, "rollback verified")
    assert released.rc == 0, released.output
    assert not aside.exists()
