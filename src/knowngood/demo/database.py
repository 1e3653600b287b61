"""Database story (strategy 3.2): the table strategy under live traffic, then a PITR to the
restore point a deploy made."""

from __future__ import annotations

import time

from knowngood.demo.story import archive_now, run, say, sql
from knowngood.lab.config import LabConfig
from knowngood.traffic import Traffic


def story(cfg: LabConfig, lb: str) -> None:
    """Strategy 3.2: the table strategy under live traffic, then a PITR to a restore point."""
    from knowngood.lab import postgres

    pg = postgres.postgres_status(cfg)
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
        f"standby streaming: {postgres.postgres_status(cfg)['standby_streaming']}"
    )
    say("and the code follows the database back: roll back to v1")
    run(cfg, "rollback-code", release_id="v1", rollback_reason="back on schema 0001")
