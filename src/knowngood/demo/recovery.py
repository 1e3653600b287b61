"""`make demo`, system failure recovery (strategy 3.4 and section 6).

recovery_story(cfg, lb): under live traffic and a writer committing numbered rows, app host
app2 and the primary database die at once. recover-system.yml classifies the failure, drains
app2, fences the dead primary, promotes the standby, repoints the app, restarts app2 from its
known good release, verifies, and returns the hosts batch by batch. The story prints the
measured RTO (failure -> verify green) and RPO (acknowledged commits missing on the new
primary), then switches the database back to its original roles so the lab stays usable.

"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path

from knowngood.demo.story import run, say, sql
from knowngood.lab import pgswitch, postgres, process
from knowngood.lab.config import LabConfig
from knowngood.traffic import Traffic


class NumberedWriter:
    """Commits rows 1, 2, 3, ... on one connection; `acknowledged` is the last one the
    database confirmed, so anything up to it missing later is lost data."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.acknowledged = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psycopg

        with contextlib.suppress(psycopg.Error), psycopg.connect(self.dsn, autocommit=True) as c:
            while not self._stop.is_set():
                c.execute("INSERT INTO rpo_probe (n) VALUES (%s)", (self.acknowledged + 1,))
                self.acknowledged += 1

    def __enter__(self) -> NumberedWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _sql(dsn: str, statement: str, params: tuple = ()) -> list:
    return sql(dsn, statement, params, connect_timeout=3)


def story(cfg: LabConfig, lb: str) -> dict:
    """Kill app2 and the primary, recover, print RTO and RPO; returns the measured numbers."""
    pg = postgres.postgres_status(cfg)
    primary = f"host=127.0.0.1 port={cfg.pg_primary_port} user=postgres dbname=app"
    standby = f"host=127.0.0.1 port={cfg.pg_standby_port} user=postgres dbname=app"
    _sql(primary, "DROP TABLE IF EXISTS rpo_probe")
    _sql(primary, "CREATE TABLE rpo_probe (n bigint PRIMARY KEY)")

    say("system failure: app2 and the primary database die under live traffic")
    with Traffic(lb + "/db", threads=2) as traffic, NumberedWriter(primary) as writer:
        time.sleep(1.5)
        failed_at = time.monotonic()
        for pool in ("blue", "green"):
            with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
                os.kill(int((cfg.run_dir / f"app2-{pool}.pid").read_text()), signal.SIGKILL)
        postmaster = Path(pg["primary_data_dir"]) / "postmaster.pid"
        process.kill_tree(int(postmaster.read_text().split()[0]))
        time.sleep(0.5)
        acknowledged = writer.acknowledged
        print(f"    killed app2 and db1; the writer had {acknowledged} commits acknowledged")

        say("recover: classify, drain, fence db1, promote db2, repoint, rebuild app2, verify")
        run(
            cfg,
            "recover-system",
            rollback_reason="app2 and the primary died",
            ticket="INC-9",
            confirm=pg["name"],
        )
        rto = time.monotonic() - failed_at
        time.sleep(0.5)
    reports = sorted(
        (cfg.root / "audit").glob("*.recover-system.json"), key=lambda p: p.stat().st_mtime
    )
    report = json.loads(reports[-1].read_text())
    present = _sql(
        standby, "SELECT count(*) FROM rpo_probe WHERE n BETWEEN 1 AND %s", (acknowledged,)
    )[0][0]
    lost = acknowledged - present
    for line in report["classification"]["evidence"]:
        print(f"    evidence: {line}")
    print(
        f"    class {report['classification']['class']}; fenced "
        f"{[f['node'] for f in report['fenced']]}; promoted {report['promoted']['node']}; "
        f"rebuilt {report['rebuilt_hosts']}; re-seeded {report['reseeded_standbys']}"
    )
    verify = report.get("verify") or {}
    for check in verify.get("checks", []):
        print(f"    verify {check['status']:<12} {check['check']:<20} {check['detail'][:90]}")
    for batch in report["batches"]:
        print(
            f"    batch {','.join(batch['hosts']):<6} returned {batch['returned'] or '-'}: "
            f"{batch['requests']} requests, {batch['errors']} errors, p95 {batch['p95_ms']} ms"
        )
    print(f"    traffic during the failure and recovery: {traffic.report()}")
    print(
        f"    MEASURED: RTO {rto:.1f}s from the failure to verify green "
        f"(runbook {report['rto_seconds']}s, every host back {report['full_capacity_seconds']}s); "
        f"RPO {lost} of {acknowledged} acknowledged commits lost (asynchronous replication)"
    )

    say("switch the database back to db1 (a planned switchover loses nothing)")
    pgswitch.restore_topology(cfg, progress=lambda m: print("    " + m))
    _sql(primary, "DROP TABLE IF EXISTS rpo_probe")
    return {"rto_seconds": round(rto, 1), "rpo_commits_lost": lost, "acknowledged": acknowledged}
