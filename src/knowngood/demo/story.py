"""What every demo story uses: a headline, a traffic sample, a runbook run, SQL, an archive."""

from __future__ import annotations

import json
import time

from knowngood import runner
from knowngood.lab.config import LabConfig
from knowngood.traffic import Traffic


def say(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def sample_traffic(lb: str, label: str, seconds: float = 2) -> None:
    """Two users for a couple of seconds: what the site looks like right now."""
    with Traffic(lb + "/", threads=2) as traffic:
        time.sleep(seconds)
    print(f"    traffic {label}: {traffic.report()}")


def run(cfg: LabConfig, runbook: str, expect_ok: bool = True, **extravars: object) -> None:
    request = runner.RunRequest(
        runbook=runbook,
        inventory=str(cfg.inventory_path),
        extravars=extravars,
        audit_dir=cfg.root / "audit",
        quiet=True,
    )
    started = time.monotonic()
    result = runner.run(request)
    verdict = "as expected" if (result.status == "successful") == expect_ok else "UNEXPECTED"
    print(
        f"    {runbook} {json.dumps(extravars)}: {result.status} in "
        f"{time.monotonic() - started:.1f}s ({verdict})"
    )
    for line in runner.summarize(result.record)[1:]:
        print("    " + line.strip()[:160])
    if verdict == "UNEXPECTED":
        raise SystemExit(f"demo stopped: {runbook} ended {result.status}; see {result.record_path}")


def sql(dsn: str, statement: str, params: tuple = (), connect_timeout: int | None = None) -> list:
    import psycopg

    timeout = {} if connect_timeout is None else {"connect_timeout": connect_timeout}
    with psycopg.connect(dsn, autocommit=True, **timeout) as conn:
        cur = conn.execute(statement, params or None)
        return cur.fetchall() if cur.description else []


def archive_now(cfg: LabConfig) -> None:
    """Close the current WAL segment and wait until it is archived: what the restore replays."""
    from knowngood.lab import postgres

    admin = postgres.postgres_status(cfg)["superuser_dsn"]
    (segment,) = sql(admin, "SELECT pg_walfile_name(pg_switch_wal())")[0]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (sql(admin, "SELECT last_archived_wal FROM pg_stat_archiver")[0][0] or "") >= segment:
            return
        time.sleep(0.1)
