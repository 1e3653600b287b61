"""playbooks/recover-system.yml and playbooks/verify.yml on the lab, each scenario for real.

An app host killed under traffic (partial): drained, rebuilt from its known good release,
returned batch by batch. The primary killed while a writer commits numbered rows: fenced,
the standby promoted, the app repointed, the old primary re-seeded as a standby; the rows
missing afterwards are the measured data-loss window (none under synchronous replication,
whose settings follow the failover). A table's data file damaged on disk:
verify.yml fails it (pg_amcheck, checksums), recover-system refuses to fail over blindly and
names the repair, rollback-database.yml's table strategy repairs it and verify passes again.
Each prints its measured RTO (failure -> verify green) and RPO.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import LoadClient, http_json

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def inventory(lab) -> dict:
    return json.loads(Path(lab.inventory).with_suffix(".json").read_text())


def pg(lab) -> dict:
    return inventory(lab)["all"]["children"]["db"]["hosts"]["db1"]["knowngood_backup"]["pg"]


def superuser(port: int, dbname: str = "app") -> str:
    return f"host=127.0.0.1 port={port} user=postgres dbname={dbname} connect_timeout=3"


def query(dsn: str, sql: str, params=()) -> list:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def latest(lab, suffix: str) -> dict:
    files = sorted((lab.root / "audit").glob(f"*.{suffix}.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(files[-1].read_text())


def cfg(lab):
    from knowngood.lab.config import LabConfig

    return LabConfig.load(lab.root)


def kill_tree(pid: int) -> None:
    from knowngood.lab import process

    for victim in [pid, *process.descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


@pytest.fixture
def recoverable(lab):
    """The lab, put back afterwards: every app instance running, db1 primary, db2 streaming."""
    yield lab
    from knowngood.lab import apps, nginx, pgswitch, process

    config = cfg(lab)
    pgswitch.restore_topology(config, progress=lambda _m: None)
    apps.apps_up(config, lambda _m: None, lab.status["postgres"]["primary_dsn"])
    if not process.read_pid(nginx.nginx_paths(config)["pid"]):
        nginx.nginx_up(config, lambda _m: None)


class Writer:
    """Commits numbered rows on one connection as fast as it can; the numbers acknowledged
    are what a client was told is durable."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.acknowledged = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psycopg

        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                n = 0
                while not self._stop.is_set():
                    conn.execute("INSERT INTO rpo_probe (n) VALUES (%s)", (n + 1,))
                    n += 1
                    self.acknowledged = n
        except psycopg.Error as exc:
            self.error = str(exc).splitlines()[0]

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


def kill_primary_under_writes(dsn: str, data_dir: Path, at_least: int) -> tuple[int, float]:
    """SIGKILL the primary while a writer commits numbered rows into a new rpo_probe table;
    (commits acknowledged to the writer, monotonic time of the kill)."""
    query(dsn, "CREATE TABLE rpo_probe (n int PRIMARY KEY)")
    with Writer(dsn) as writer:
        time.sleep(1.5)
        killed_at = time.monotonic()
        kill_tree(int((data_dir / "postmaster.pid").read_text().split()[0]))
        time.sleep(0.3)
    assert writer.error and writer.acknowledged > at_least, (writer.error, writer.acknowledged)
    return writer.acknowledged, killed_at


def test_app_host_killed_is_drained_rebuilt_and_returned_in_batches(recoverable):
    lab = recoverable
    lab.seed("v1", "v1.1")
    config = cfg(lab)
    with LoadClient(lab.status["lb_url"] + "/db", threads=2) as traffic:
        time.sleep(1)
        killed_at = time.monotonic()
        for pool in ("blue", "green"):
            os.kill(int((config.run_dir / f"app2-{pool}.pid").read_text()), signal.SIGKILL)
        run = lab.playbook("recover-system", rollback_reason="app2 died", ticket="INC-7")
        rto = time.monotonic() - killed_at
    assert run.rc == 0, run.output
    # The run lock on every host the recovery may change, all given back after step 6.
    locked = sorted(m.split()[1] for m in lab.lock_messages() if m.startswith("lock "))
    assert locked == ["app1", "app2", "app3", "db1", "db2", "lb1"], lab.lock_messages()
    assert lab.locked_hosts() == []
    report = latest(lab, "recover-system")
    assert report["classification"]["class"] == "partial"
    assert any("app2" in line for line in report["classification"]["evidence"])
    assert report["drained"] == ["app2"] and report["rebuilt_hosts"] == {"app2": "v1.1"}
    assert report["promoted"] is None and report["fenced"] == []
    # Gradual: three batches, app2 back in rotation only in its own batch, every batch proven.
    assert [b["hosts"] for b in report["batches"]] == [["app1"], ["app2"], ["app3"]]
    assert [b["returned"] for b in report["batches"]] == [
        [],
        ["127.0.0.1:" + str(config.app_ports(1)["blue"])],
        [],
    ]
    assert all(b["errors"] == 0 for b in report["batches"])
    assert report["verify"]["verdict"] in ("pass", "inconclusive")
    assert "down" not in Path(config.root / "nginx" / "live_pool.conf").read_text()
    assert http_json(lab.status["hosts"][1]["app_urls"]["blue"] + "/version")["release"] == "v1.1"
    # nginx retries a dead upstream on the next one: users saw at most a handful of failures.
    assert len(traffic.failed) <= 3, traffic.report()
    print(
        f"\nMEASURED partial (app host killed): RTO {rto:.1f}s to verify green "
        f"(runbook {report['rto_seconds']}s, full capacity {report['full_capacity_seconds']}s), "
        f"RPO 0 (no data on app hosts); traffic {traffic.report()}"
    )
    # That a run on the healthy lab it leaves finds nothing to recover is proved by
    # test_fair_verdicts (recover-system on a healthy lab, under load): not run twice here.


@pytest.fixture(scope="module")
def backed_up(lab_session):
    """Archiving on, and a full backup: what a table restore or a rebuild starts from."""
    run = lab_session.playbook("setup-backups")
    assert run.rc == 0, run.output
    run = lab_session.playbook("backup", backup_type="full")
    assert run.rc == 0, run.output
    return lab_session


def archive_now(dsn: str) -> None:
    """Switch the WAL segment and wait until the archiver has it."""
    (segment,) = query(dsn, "SELECT pg_walfile_name(pg_switch_wal())")[0]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        (last,) = query(dsn, "SELECT last_archived_wal FROM pg_stat_archiver")[0]
        if last and last >= segment:
            return
        time.sleep(0.1)
    raise AssertionError(f"{segment} not archived in 30s")


def test_corrupted_table_is_detected_by_verify_and_repaired_by_a_table_restore(
    recoverable, backed_up
):
    from knowngood.lab import postgres, process
    from knowngood.lab.config import PG_BIN

    lab = recoverable
    lab.seed("v1")
    config = cfg(lab)
    primary = superuser(pg(lab)["port"])
    data_dir = Path(pg(lab)["data_dir"])
    try:
        query(primary, "CREATE TABLE ledger (id int PRIMARY KEY, note text)")
        query(
            primary,
            "INSERT INTO ledger SELECT g, repeat('x', 200) || g FROM generate_series(1, 2000) g",
        )
        time.sleep(1.1)
        (target,) = query(primary, "SELECT to_char(now(), 'YYYY-MM-DD\"T\"HH24:MI:SS.USOF')")[0]
        target = target + ":00" if target[-3] in "+-" else target
        time.sleep(1.1)
        query(primary, "CREATE TABLE after_target (n int)")  # a commit past the target
        archive_now(primary)
        query(primary, "CHECKPOINT")
        (relpath,) = query(primary, "SELECT pg_relation_filepath('ledger')")[0]

        # Damage block 1 on disk while the server is down, as a failing disk would.
        def pg_ctl(*args):
            process.run_command(
                [PG_BIN / "pg_ctl", *args],
                what="pg_ctl",
                timeout=60,
                account=postgres.pg_account(),
                env=postgres.pg_env(config),
                cwd=config.pg_dir,
            )

        pg_ctl("stop", "-D", data_dir, "-m", "fast", "-w")
        damaged_at = time.monotonic()
        with open(data_dir / relpath, "r+b") as handle:
            handle.seek(8192 + 4000)
            handle.write(b"\xde\xad\xbe\xef" * 64)
        pg_ctl("start", "-D", data_dir, "-l", config.pg_dir / "primary.log", "-w")

        # Latency is not what this test is about: a loaded test machine must not decide it.
        verify = lab.playbook("verify", verify_checks=["data", "ux"], verify_max_p95_ms=5000)
        assert verify.rc != 0, verify.output
        found = latest(lab, "verify")
        status = {c["check"]: c["status"] for c in found["checks"]}
        assert status["data_amcheck"] == "fail" and status["ux_home"] == "pass", found["checks"]
        assert "ledger" in next(
            c["detail"] for c in found["checks"] if c["check"] == "data_amcheck"
        )

        # Corruption is not failed over blindly: recovery stops, changes nothing, names the repair.
        stop = lab.playbook("recover-system", rollback_reason="checksum errors")
        assert stop.rc != 0, stop.output
        assert "rollback-database.yml" in stop.output and "public.ledger" in stop.output, (
            stop.output
        )
        assert query(superuser(pg(lab)["port"] + 1), "SELECT pg_is_in_recovery()") == [(True,)]
        assert not (data_dir / "knowngood.fenced").exists()

        # The repair it names: the table as it was at the target, from the backup and the WAL.
        # db_verify checks the whole database except the damaged copy the restore renames aside.
        repair_started = time.monotonic()
        repair = lab.playbook(
            "rollback-database",
            db_strategy="table",
            tables=["public.ledger"],
            target_time=target,
            confirm=lab.status["postgres"]["name"],
            rollback_reason="ledger block damaged on disk",
            ticket="INC-77",
        )
        repair_seconds = time.monotonic() - repair_started
        assert repair.rc == 0, repair.output
        (aside,) = [
            t["renamed_to"] for t in latest(lab, "rollback-database")["tables"] if "renamed_to" in t
        ]
        assert aside.startswith("public.ledger__pre_restore_")
        assert re.search(r"excluded \[\W*" + re.escape(aside), repair.output), repair.output
        assert query(primary, "SELECT count(*), max(id) FROM ledger") == [(2000, 2000)]
        assert query(primary, "SELECT count(*) FROM after_target") == [(0,)]  # untouched

        healthy = lab.playbook("verify", verify_checks=["data", "ux"], verify_max_p95_ms=5000)
        rto = time.monotonic() - damaged_at
        assert healthy.rc == 0, healthy.output
        checks = {c["check"]: c for c in latest(lab, "verify")["checks"]}
        assert checks["data_amcheck"]["status"] == "pass", checks["data_amcheck"]
        assert "__pre_restore_" in checks["data_amcheck"]["detail"]  # says what it left out
        assert checks["data_checksums"]["status"] in ("pass", "skipped"), checks["data_checksums"]
        # The copy kept aside is still damaged: the exclusion is what lets verify pass, not luck.
        with pytest.raises(Exception, match="checksum|invalid page"):
            query(primary, f"SELECT count(*) FROM {aside}")
        print(
            f"\nMEASURED corruption (table data file damaged): RTO {rto:.1f}s from the damage to "
            f"verify green (detect, refuse to fail over, table restore "
            f"{repair_seconds:.1f}s, verify); "
            f"RPO 0 for the table (2000 of 2000 rows back; later commits to other tables kept)"
        )
    finally:
        # A damaged table left behind would break every later backup of the session's lab.
        query(
            primary,
            "DO $$DECLARE r record; BEGIN FOR r IN SELECT oid::regclass AS t FROM pg_class "
            "WHERE relkind = 'r' AND (relname LIKE 'ledger%%' OR relname = 'after_target') "
            "LOOP EXECUTE format('DROP TABLE %%s', r.t); END LOOP; END$$",
        )


def test_complete_outage_with_region_a_down_is_rebuilt_in_order_from_region_b(
    recoverable, backed_up
):
    """Everything down: both database nodes (the primary's disk with them), every app instance,
    the load balancer, and region A: its S3 endpoint and its local backup disks.
    recover-system rebuilds the primary from the newest backup and the archive in region B,
    re-seeds the standby from it, then the app hosts, then the load balancer, and serves."""
    import shutil

    from knowngood.lab import faults, nginx, process, s3

    lab = recoverable
    lab.seed("v1")
    config = cfg(lab)
    cluster = lab.status["postgres"]["name"]
    primary, standby = (superuser(p) for p in (pg(lab)["port"], pg(lab)["port"] + 1))
    data_dir = Path(lab.status["postgres"]["primary_data_dir"])
    standby_dir = Path(lab.status["postgres"]["standby_data_dir"])
    backups = config.root / "backups"
    lost = data_dir.with_name(data_dir.name + ".lost-by-test")
    query(primary, "CREATE TABLE rpo_probe (n int PRIMARY KEY)")
    with Writer(primary) as writer:
        time.sleep(1.0)
        archive_now(primary.replace("dbname=app", "dbname=postgres"))
        archived = writer.acknowledged  # every row up to here is in an archived segment
        time.sleep(0.5)
        killed_at = time.monotonic()
        for directory in (data_dir, standby_dir):
            kill_tree(int((directory / "postmaster.pid").read_text().split()[0]))
        time.sleep(0.3)
    for index in range(config.hosts):
        faults.break_app_host(config, config.host_name(index))
    faults.break_lb(config)
    acknowledged = writer.acknowledged
    assert writer.error and acknowledged > archived > 0, (writer.error, archived, acknowledged)
    data_dir.rename(lost)  # the primary's disk is gone
    # Region A is down: its S3 endpoint stops, and its local disks no longer mount (a file
    # where the directory was: neither readable nor creatable).
    s3.s3_region_down(config, 0)
    for name in ("local-a", "local-b"):
        (backups / name).rename(backups / f"{name}.down-by-test")
        (backups / name).write_text("")
    try:
        refused = lab.playbook("recover-system", rollback_reason="region a lost")
        assert refused.rc != 0 and f"confirm={cluster}" in refused.output, refused.output
        assert not data_dir.exists()  # nothing rebuilt without the cluster's name
        assert not process.read_pid(nginx.nginx_paths(config)["pid"])  # nor started

        run = lab.playbook(
            "recover-system", rollback_reason="region a lost", ticket="INC-8", confirm=cluster
        )
        rto = time.monotonic() - killed_at
        assert run.rc == 0, run.output
        report = latest(lab, "recover-system")
        assert report["classification"]["class"] == "outage", report["classification"]
        rebuilt = report["rebuilt_database"]
        assert rebuilt["node"] == "db1" and report["primary"] == "db1", rebuilt
        # From a location outside region A: region B's S3, or the export copy when the newest
        # backup's region-B copy is missing (a backup taken while region B was marked down).
        assert rebuilt["restored_from"] in ("s3-region-b", "export", "cold"), rebuilt
        assert {"local-a", "local-b", "s3-region-a"} <= set(rebuilt["locations_down"]), rebuilt
        assert report["reseeded_standbys"] == ["db2"]
        # In order: the database, then the app hosts, then the load balancer in front of them.
        order = [
            run.output.index(f"TASK [knowngood.runbooks.recover_restore : {name}")
            for name in ("Restore the newest", "Rebuild every failed app host", "Start the load")
        ]
        assert order == sorted(order), order
        hosts = [config.host_name(i) for i in range(config.hosts)]
        assert sorted(report["rebuilt_hosts"]) == hosts and report["lb_started"] is True
        assert query(primary, "SELECT pg_is_in_recovery()") == [(False,)]
        assert query(standby, "SELECT status FROM pg_stat_wal_receiver") == [("streaming",)]
        assert report["verify"]["verdict"] in ("pass", "inconclusive"), report["verify"]
        assert http_json(lab.status["lb_url"] + "/db").get("orders") == 0
        present, highest = query(
            primary,
            "SELECT count(*), coalesce(max(n), 0) FROM rpo_probe WHERE n BETWEEN 1 AND %s",
            (acknowledged,),
        )[0]
        # A consistent prefix of the commits comes back, with no hole. How long it is depends on
        # what region B held: the local disks are required by the archiver, the S3 copies are
        # queued and backfilled, so region B can lag the archive the primary reported.
        assert present == highest and 0 < present <= acknowledged, (present, highest)
        print(
            f"\nMEASURED complete outage, region A down: RTO {rto:.1f}s to verify green "
            f"(runbook {report['rto_seconds']}s; steps {report['steps']}; restore "
            f"{rebuilt['steps']}); rebuilt from {rebuilt['backup_id']} read from "
            f"{rebuilt['restored_from']} (down: {rebuilt['locations_down']}); RPO "
            f"{acknowledged - present} of {acknowledged} acknowledged commits lost "
            f"({archived} were in segments archived locally before the crash)"
        )
    finally:
        for name in ("local-a", "local-b"):
            if (backups / f"{name}.down-by-test").exists():
                (backups / name).unlink(missing_ok=True)
                (backups / f"{name}.down-by-test").rename(backups / name)
        s3.s3_region_up(config, lambda _m: None, 0)
        if data_dir.exists():
            shutil.rmtree(lost, ignore_errors=True)
        else:  # not rebuilt: the next test gets the old directory back
            lost.rename(data_dir)


def synchronous(lab, enabled: bool = True) -> dict:
    """The lab's primary made synchronous (or not) as `knowngood lab up --synchronous` does;
    the declaration, for the runbook's -e knowngood_db_synchronous."""
    from knowngood.lab import postgres

    config = cfg(lab)
    declaration = postgres.synchronous_declaration(config, enabled=enabled)
    postgres.apply_synchronous(config, declaration)
    return declaration


def sync_states(dsn: str) -> list:
    return query(dsn, "SELECT application_name, sync_state FROM pg_stat_replication")


def test_primary_killed_under_synchronous_replication_fails_over_losing_no_commit(recoverable):
    """The primary waits for the standby on every commit (knowngood_db_synchronous). Killed
    while a writer commits numbered rows: fenced, the standby promoted with the synchronous
    settings rewritten for it (its only standby is the fenced old primary, so it runs
    asynchronous, loudly, instead of blocking every commit), the app repointed, the old
    primary re-seeded as a standby and the new primary synchronous again, waiting for it. No
    acknowledged commit is lost."""
    lab = recoverable
    lab.seed("v1")
    ports = (pg(lab)["port"], pg(lab)["port"] + 1)
    primary, standby = (superuser(p) for p in ports)
    cluster = lab.status["postgres"]["name"]
    data_dir = Path(pg(lab)["data_dir"])
    declaration = synchronous(lab)
    deadline = time.monotonic() + 30
    while sync_states(primary) != [(f"{cluster}-standby", "quorum")]:
        assert time.monotonic() < deadline, sync_states(primary)
        time.sleep(0.2)
    acknowledged, killed_at = kill_primary_under_writes(primary, data_dir, at_least=20)

    # Without the cluster's name nothing is fenced and nothing promoted.
    refused = lab.playbook(
        "recover-system", rollback_reason="db1 died", knowngood_db_synchronous=declaration
    )
    assert refused.rc != 0 and f"confirm={cluster}" in refused.output, refused.output
    assert lab.locked_hosts() == []  # the failed run gave its locks back
    assert query(standby, "SELECT pg_is_in_recovery()") == [(True,)]
    assert not (data_dir / "knowngood.fenced").exists()

    with LoadClient(lab.status["lb_url"] + "/db", threads=2) as traffic:
        run = lab.playbook(
            "recover-system",
            rollback_reason="db1 died",
            confirm=cluster,
            knowngood_db_synchronous=declaration,
        )
        rto = time.monotonic() - killed_at
        time.sleep(0.5)
    assert run.rc == 0, run.output
    report = latest(lab, "recover-system")
    assert report["classification"]["class"] == "partial"
    assert report["fenced"] == [{"node": "db1", "answer": "refuses connections"}]
    assert report["promoted"]["node"] == "db2" and report["primary"] == "db2"
    assert report["reseeded_standbys"] == ["db1"]
    # The new primary takes writes, the old one streams from it read-only, the app uses it.
    assert query(standby, "SELECT pg_is_in_recovery()") == [(False,)]
    assert query(primary, "SELECT status FROM pg_stat_wal_receiver") == [("streaming",)]
    assert query(
        primary.replace("dbname=app", "dbname=postgres"), "SELECT pg_is_in_recovery()"
    ) == [(True,)]
    assert http_json(lab.status["lb_url"] + "/db").get("orders") == 0
    # Serving again at the end; users saw errors only between the kill and the repoint.
    assert all(code == 200 for _at, code, _rel in traffic.responses[-10:]), traffic.report()
    failed_at = [at for at, _code, _rel in traffic.failed]
    window = (max(failed_at) - min(failed_at)) if failed_at else 0.0

    # Promoted asynchronous (its only standby was fenced), recorded loudly; synchronous again,
    # waiting for the re-seeded old primary, by the end of the run.
    sync = report["synchronous"]
    assert sync["degraded_at_promotion"] and "DEGRADED: db2 runs ASYNCHRONOUS" in sync["warning"]
    assert sync["at_promotion"]["settings"]["synchronous_standby_names"] == ""
    assert f"WARNING synchronous replication: {sync['warning']}" in run.output
    assert sync["restored"] and sync["standbys"] == [cluster], sync
    assert query(standby, "SELECT current_setting('synchronous_standby_names')") == [
        (f'ANY 1 ("{cluster}")',)
    ]
    assert sync_states(standby) == [(cluster, "quorum")]
    record = json.loads(
        max((lab.root / "audit").glob("*.json"), key=lambda p: p.stat().st_mtime).read_text()
    )
    audited = [e["result"] for e in record.get("events", []) if e["result"].get("degraded")]
    assert audited and audited[0]["warning"] == sync["warning"], record.get("events", [])[-3:]
    # A commit now waits for db1 and returns: no acknowledged row was lost.
    query(standby + " options='-c statement_timeout=5000'", "INSERT INTO rpo_probe VALUES (-1)")
    present = query(
        standby, "SELECT count(*) FROM rpo_probe WHERE n BETWEEN 1 AND %s", (acknowledged,)
    )[0][0]
    assert present == acknowledged, (present, acknowledged)
    print(
        f"\nMEASURED primary killed (synchronous replication): RTO {rto:.1f}s to verify green "
        f"(runbook {report['rto_seconds']}s); RPO 0 of {acknowledged} acknowledged commits "
        f"lost; asynchronous from the promotion until the restore step; users saw errors for "
        f"{window:.1f}s; traffic {traffic.report()}"
    )


def test_primary_killed_with_asynchronous_replication_measures_the_data_loss(recoverable):
    """Without synchronous replication the rows a writer was told are durable but the standby
    had not received are lost: the test measures and prints them (0 on one machine, where
    the standby keeps up)."""
    lab = recoverable
    lab.seed("v1")
    ports = (pg(lab)["port"], pg(lab)["port"] + 1)
    primary, standby = (superuser(p) for p in ports)
    cluster = lab.status["postgres"]["name"]
    data_dir = Path(pg(lab)["data_dir"])
    synchronous(lab, enabled=False)
    assert sync_states(primary) == [(f"{cluster}-standby", "async")]
    acknowledged, killed_at = kill_primary_under_writes(primary, data_dir, at_least=100)

    run = lab.playbook("recover-system", rollback_reason="db1 died", confirm=cluster)
    rto = time.monotonic() - killed_at
    assert run.rc == 0, run.output
    report = latest(lab, "recover-system")
    assert report["promoted"]["node"] == "db2" and report["fenced"][0]["node"] == "db1"
    assert report["synchronous"] is None
    present = query(
        standby, "SELECT count(*) FROM rpo_probe WHERE n BETWEEN 1 AND %s", (acknowledged,)
    )[0][0]
    lost = acknowledged - present
    assert 0 <= lost < acknowledged
    print(
        f"\nMEASURED primary killed (async replication): RTO {rto:.1f}s to verify green "
        f"(runbook {report['rto_seconds']}s); RPO {lost} of {acknowledged} acknowledged "
        f"commits lost; standby had received {report['promoted']['received_lsn']}"
    )


def backup_cfg(lab):
    from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.config import (
        parse_config,
    )

    hv = inventory(lab)["all"]["children"]["db"]["hosts"]["db1"]
    data = dict(hv["knowngood_backup"])
    data["encryption_key"] = hv["knowngood_backup_encryption_key"]
    data["signing_key"] = hv["knowngood_backup_signing_key"]
    return parse_config(data)


def test_promoted_standby_archives_its_timeline_to_the_backup_locations(recoverable, backed_up):
    """After a failover the new timeline's history file and WAL reach the backup locations, so
    a restore from backups can follow the new timeline to its newest commit."""
    from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import (
        pitr,
    )
    from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import (
        wal as backup_wal,
    )
    from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.store import (
        open_locations,
    )

    lab = recoverable
    lab.seed("v1")
    cluster = lab.status["postgres"]["name"]
    primary, standby = (superuser(p, "postgres") for p in (pg(lab)["port"], pg(lab)["port"] + 1))
    data_dir = Path(pg(lab)["data_dir"])
    # Every full segment archived before the kill: the old primary's unarchived tail is a
    # different gap (a standby with archive_mode=on does not archive what it received).
    archive_now(primary)
    kill_tree(int((data_dir / "postmaster.pid").read_text().split()[0]))
    run = lab.playbook("recover-system", rollback_reason="db1 died", confirm=cluster)
    assert run.rc == 0, run.output
    promoted = latest(lab, "recover-system")["promoted"]
    assert promoted["node"] == "db2", promoted
    timeline = int(promoted["timeline"])
    history = f"{timeline:08X}.history"

    # A commit on the new timeline, archived by the new primary itself.
    query(standby, "CREATE TABLE IF NOT EXISTS after_failover (n int)")
    query(standby, "INSERT INTO after_failover VALUES (1)")
    archive_now(standby)
    cfg = backup_cfg(lab)
    held = {
        loc.name: backup_wal._find(cfg, loc, history) is not None
        for loc in open_locations(cfg)
        if loc.type in ("local", "s3")
    }
    # The required local disks hold it at once; S3 copies may be queued, never lost.
    pending = backup_wal.pending_copies(cfg)
    assert held["local-a"] and held["local-b"], held
    assert all(held[name] or history in pending.get(name, []) for name in held), (held, pending)
    assert history in promoted.get("history_archived", ""), promoted  # proven at promotion

    # The read-only preflight of a restore to the newest point follows the new timeline.
    req = pitr.Request(state="planned", target_latest=True)
    plan = pitr.plan(cfg, req, pitr.parse_target(req))
    (current,) = query(standby, "SELECT pg_walfile_name(pg_current_wal_lsn())")[0]
    assert plan["timeline_path"][-1] == timeline and plan["wal_to"][:8] == f"{timeline:08X}", plan
    print(
        f"\nMEASURED failover archiving: timeline {timeline} history in {sorted(held)} "
        f"(pending {pending}); restore plan reaches {plan['wal_to']} (primary writes {current})"
    )
