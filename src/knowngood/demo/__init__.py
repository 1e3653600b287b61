"""`make demo`: the main story on the embedded lab, told with the same runbooks on-call uses.

deploy v1 -> deploy the bad v2 (its canary fails the health gate and is rolled back
automatically) -> deploy v1.1 -> an incident: roll back to the last known-good release
under live traffic -> a risky feature flag goes on and is rolled back by turning it off ->
a broken nginx configuration rolled back to the last known good -> print the ledger ->
backups: set up archiving to six locations, take a full backup, prove it by a real restore,
print the catalog -> database rollbacks: a bad DELETE undone in one table while
a later write elsewhere survives, then a PITR to the restore point a deploy made -> system
failure: app2 and the primary killed under traffic, recovered, RTO and RPO printed ->
governance: a decision, a request signed by the lab's CTO and Infrastructure Lead, the
rollback through `knowngood run` behind its gate, notices, `knowngood audit verify`, the HTML
incident report -> the audit trail.

Each part is a story (STORIES) that can be told on its own with what it needs:
`make demo STORIES=database` or `python -m knowngood.demo --stories flag,config`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from knowngood import demo_config, demo_governance, demo_recovery, runner
from knowngood.cli import audit_list
from knowngood.lab import core
from knowngood.lab.config import DEFAULT_ROOT, LabConfig
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


def print_catalog(cfg: LabConfig) -> None:
    from knowngood.backups import lab_catalog

    for entry in lab_catalog(cfg):
        copies = entry.get("locations") or {}
        ok = sorted(n for n, c in copies.items() if c.get("status") == "ok")
        verified = {v["tier"]: v["ok"] for v in entry.get("verification", [])}
        print(
            f"    {entry['label']:<22} {entry['type']:<11} tl {entry.get('timeline')} "
            f"{entry.get('start_lsn')}..{entry.get('stop_lsn')} "
            f"{entry.get('size', 0) / 2**20:7.1f} MiB -> "
            f"{entry.get('stored_size', 0) / 2**20:6.1f} MiB stored, "
            f"in {len(ok)}/{len(copies)} locations, verified {verified or '-'}"
        )


def sql(dsn: str, statement: str) -> list:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(statement)
        return cur.fetchall() if cur.description else []


def archive_now(cfg: LabConfig) -> None:
    """Close the current WAL segment and wait until it is archived: what the restore replays."""
    from knowngood.lab import infra

    admin = infra.postgres_status(cfg)["superuser_dsn"]
    (segment,) = sql(admin, "SELECT pg_walfile_name(pg_switch_wal())")[0]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (sql(admin, "SELECT last_archived_wal FROM pg_stat_archiver")[0][0] or "") >= segment:
            return
        time.sleep(0.1)


def database_story(cfg: LabConfig, lb: str) -> None:
    """Strategy 3.2: the table strategy under live traffic, then a PITR to a restore point."""
    from knowngood.lab import infra

    pg = infra.postgres_status(cfg)
    app = pg["primary_dsn"]
    say("database: someone runs DELETE FROM orders; a minute later a refund is logged")
    sql(app, "CREATE TABLE IF NOT EXISTS refunds (id serial PRIMARY KEY, note text)")
    sql(app, "INSERT INTO orders (item) SELECT 'order ' || g FROM generate_series(1, 50) g")
    time.sleep(1.1)
    (target,) = sql(app, "SELECT to_char(now(), 'YYYY-MM-DD\"T\"HH24:MI:SS.USOF')")[0]
    target += ":00" if len(target.rsplit("+", 1)[-1]) == 2 else ""
    time.sleep(1.1)
    sql(app, "DELETE FROM orders")
    sql(app, "INSERT INTO refunds (note) VALUES ('refund written after the bad DELETE')")
    archive_now(cfg)
    print(f"    orders now {sql(app, 'SELECT count(*) FROM orders')[0][0]}, target {target}")
    say("bring back only the orders table as of before the DELETE; the app keeps serving")
    with Traffic(lb + "/db", threads=2) as traffic:
        run(
            cfg,
            "rollback-database",
            db_strategy="table",
            tables=["public.orders"],
            target_time=target,
            confirm=pg["name"],
            rollback_reason="bad DELETE on orders",
            ticket="INC-9",
        )
    print(f"    traffic during the table restore: {traffic.report()}")
    print(
        f"    orders {sql(app, 'SELECT count(*) FROM orders')[0][0]}, refunds kept: "
        f"{sql(app, 'SELECT note FROM refunds')}"
    )

    say("deploy v3: the deploy marks a restore point, then runs an irreversible migration")
    run(cfg, "deploy-code", release_id="v3", ticket="CHG-4")
    (point,) = sql(
        app, "SELECT restore_point FROM knowngood_schema_migrations WHERE revision = '0003'"
    )[0]
    print(f"    restore point before the migration: {point}")
    say("the code rollback refuses (0003 cannot be undone) and names the database rollback")
    run(cfg, "rollback-code", expect_ok=False, release_id="v1", rollback_reason="v3 pricing bug")
    archive_now(cfg)
    say(f"PITR to {point}: writes stopped, safety backup, restore, verify, promote, resume")
    run(
        cfg,
        "rollback-database",
        target_name=point,
        confirm=pg["name"],
        rollback_reason="undo v3's irreversible migration",
        ticket="INC-10",
        db_verify_queries=["SELECT count(*) = 50 FROM orders"],
    )
    print(
        "    schema now "
        f"{sql(app, 'SELECT max(revision) FROM knowngood_schema_migrations')[0][0]}, "
        f"standby streaming: {infra.postgres_status(cfg)['standby_streaming']}"
    )
    say("and the code follows the database back: roll back to v1")
    run(cfg, "rollback-code", release_id="v1", rollback_reason="back on schema 0001")


def deploy_story(cfg: LabConfig, lb: str) -> None:
    say("deploy v1, gradually: canary first, then half, then all, each batch behind a gate")
    run(cfg, "deploy-code", release_id="v1", ticket="CHG-1")

    say("deploy v2, which raises errors and latency: its canary must fail the gate")
    run(cfg, "deploy-code", expect_ok=False, release_id="v2", ticket="CHG-2")

    say("deploy v1.1 (good)")
    run(cfg, "deploy-code", release_id="v1.1", ticket="CHG-3")


def code_story(cfg: LabConfig, lb: str) -> None:
    say("incident: roll v1.1 back to the last known-good release, under live traffic")
    with Traffic(lb + "/") as traffic:
        time.sleep(0.5)
        run(cfg, "rollback-code", rollback_reason="checkout complaints after v1.1", ticket="INC-7")
        time.sleep(0.5)
    print("    traffic during the rollback: " + traffic.report())


def flag_story(cfg: LabConfig, lb: str) -> None:
    say("a risky code path behind a feature flag goes on, errors follow")
    run(
        cfg,
        "rollback-flag",
        flag="new_checkout",
        code_flag_enabled=True,
        rollback_reason="demo: switch the risky path on",
    )
    sample_traffic(lb, "with the flag on")

    say("the fastest rollback there is: turn the flag off")
    run(
        cfg,
        "rollback-flag",
        flag="new_checkout",
        rollback_reason="checkout errors 34%",
        ticket="INC-8",
    )
    sample_traffic(lb, "with the flag off")


def config_story(cfg: LabConfig, lb: str) -> None:
    demo_config.config_story(cfg, lb)


def backups_story(cfg: LabConfig, lb: str) -> None:
    say("backups: archive WAL to two local disks, two S3 regions, cold storage and an export")
    run(cfg, "setup-backups")
    say("take a full backup to every location")
    run(cfg, "backup", backup_type="full")
    say("prove it: integrity of every copy, freshness, and a real restore with a sentinel row")
    run(cfg, "verify-backup")
    say("the backup catalog")
    print_catalog(cfg)


def recovery_story(cfg: LabConfig, lb: str) -> None:
    demo_recovery.recovery_story(cfg, lb, run=run, say=say)


def governance_story(cfg: LabConfig, lb: str) -> None:
    report = demo_governance.run(cfg, say)
    print(f"    incident report (HTML, one file): {report}")


# Each story, in the order the demo tells them, with the stories it needs told first.
STORIES: dict[str, tuple[Callable[[LabConfig, str], None], tuple[str, ...]]] = {
    "deploy": (deploy_story, ()),
    "code": (code_story, ("deploy",)),
    "flag": (flag_story, ("deploy",)),
    "config": (config_story, ("deploy",)),
    "backups": (backups_story, ()),
    "database": (database_story, ("deploy", "backups")),
    "recovery": (recovery_story, ("deploy", "backups")),
    "governance": (governance_story, ()),
}


def plan(wanted: list[str]) -> list[str]:
    """The stories to tell for `wanted`, with what they need, in the demo's order."""
    unknown = sorted(set(wanted) - set(STORIES))
    if unknown:
        raise SystemExit(f"unknown stories: {', '.join(unknown)}; choose from {', '.join(STORIES)}")
    chosen: set[str] = set()
    todo = list(wanted)
    while todo:
        name = todo.pop()
        if name not in chosen:
            chosen.add(name)
            todo.extend(STORIES[name][1])
    return [name for name in STORIES if name in chosen]


def print_trail(cfg: LabConfig) -> None:
    """What happened: the release ledger of app1 and the newest audit records."""
    ledger = cfg.host_root(0) / ".knowngood" / "ledger.jsonl"
    if ledger.exists():
        say("what happened: the release ledger of app1")
        for line in ledger.read_text().splitlines():
            event = json.loads(line)
            print(
                f"    {event['ts']}  {event['release_id']:<5} {event['status']:<12} "
                f"{event.get('reason', '')} {event.get('ticket', '')}"
            )
    say(f"the audit trail ({cfg.root / 'audit'})")
    for line in audit_list(cfg.root / "audit" / "index.jsonl", last=6):
        print("    " + line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="knowngood.demo", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--stories",
        default=",".join(STORIES),
        help=f"comma-separated stories to tell (with what they need): {', '.join(STORIES)}",
    )
    parser.add_argument(
        "--only",
        action="store_true",
        help="tell exactly these stories: the lab already holds what they need",
    )
    args = parser.parse_args(argv)
    wanted = [name for name in args.stories.split(",") if name]
    stories = [name for name in plan(wanted) if name in wanted] if args.only else plan(wanted)
    root = Path(os.environ.get("KNOWNGOOD_LAB_DIR", str(DEFAULT_ROOT)))
    say(f"bringing up the lab in {root}")
    cfg = LabConfig.load(root) if (root / "lab.json").exists() else LabConfig(root=root)
    status = core.up(cfg, progress=lambda m: print("    " + m, flush=True))
    if not args.only:
        core.reset(cfg)
    lb = status["lb_url"]
    timings = []
    for name in stories:
        started = time.monotonic()
        STORIES[name][0](cfg, lb)
        timings.append(f"{name} {time.monotonic() - started:.0f}s")
    print_trail(cfg)
    print(f"\nStories told: {', '.join(timings)}")
    print("Drills with measured RTO/RPO: `make drill` (or `knowngood drill run primary_failover`).")
    print("The lab keeps running: `knowngood lab status`, `knowngood lab down` to remove it.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
