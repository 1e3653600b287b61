"""Put the lab's PostgreSQL pair back in its original roles after a failover drill.

recover-system.yml promotes the standby (port base+433) and re-seeds the fenced old primary
(base+432) as its standby. The inventory, the backup configuration and every later runbook
name base+432 as the primary, so drills and tests end with a planned switchover back:
stop the current primary cleanly (its shutdown checkpoint reaches the standby), prove the
standby replayed it, promote the standby, re-clone the other node as its standby, and drop the
apps' DSN override. No committed transaction is lost on the way.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from knowngood.errors import LabError
from knowngood.lab import postgres, process
from knowngood.lab.config import PG_BIN, LabConfig


def _role(port: int) -> str:
    """primary, standby or down."""
    try:
        return (
            "standby" if postgres.pg_query(port, "SELECT pg_is_in_recovery()")[0][0] else "primary"
        )
    except Exception:
        return "down"


def _pg_ctl(cfg: LabConfig, *args: str | Path, what: str) -> None:
    process.run_command(
        [PG_BIN / "pg_ctl", *args],
        what=what,
        timeout=120,
        account=postgres.pg_account(),
        env=postgres.pg_env(cfg),
        cwd=cfg.pg_dir,
    )


def _control(cfg: LabConfig, data_dir: Path) -> dict[str, str]:
    out = process.run_command(
        [PG_BIN / "pg_controldata", "-D", data_dir],
        what="pg_controldata",
        timeout=30,
        account=postgres.pg_account(),
        env=postgres.pg_env(cfg),
        cwd=cfg.pg_dir,
    ).stdout
    return {
        k.strip(): v.strip() for k, _sep, v in (line.partition(":") for line in out.splitlines())
    }


def _lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def _wait(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise LabError(f"{what}: not reached after {timeout:.0f}s")


def reclone_standby(cfg: LabConfig, primary_port: int, node_dir: Path, log: Path) -> None:
    """node_dir becomes a fresh streaming standby of the server on primary_port."""
    account = postgres.pg_account()
    slot = postgres.pg_slot(cfg)
    postgres.pg_query(
        primary_port,
        "SELECT pg_create_physical_replication_slot(%s) "
        "WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = %s)",
        (slot, slot),
    )
    aside = node_dir.with_name(node_dir.name + ".switchover")
    shutil.rmtree(aside, ignore_errors=True)
    if node_dir.exists():
        node_dir.rename(aside)
    process.run_command(
        [
            PG_BIN / "pg_basebackup",
            "-h",
            process.LOOPBACK,
            "-p",
            str(primary_port),
            "-U",
            postgres.PG_SUPERUSER,
            "-D",
            node_dir,
            "-R",
            "-S",
            slot,
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-password",
            "-l",
            "knowngood lab switchover",
        ],
        what="pg_basebackup",
        timeout=600,
        account=account,
        env=postgres.pg_env(cfg),
        cwd=cfg.pg_dir,
    )
    for name in ("postgresql.conf", "kglab.conf", "pg_hba.conf", "pg_ident.conf"):
        if (aside / name).exists():
            shutil.copy2(aside / name, node_dir / name)
            shutil.chown(node_dir / name, account.uid, account.gid)
    _pg_ctl(cfg, "start", "-D", node_dir, "-l", log, "-w", "-t", "60", what="start standby")
    shutil.rmtree(aside, ignore_errors=True)


def restore_topology(cfg: LabConfig, progress: Callable[[str], None] = print) -> bool:
    """Primary on base+432 and a streaming standby on base+433 again; True if anything moved."""
    primary, standby = postgres.pg_nodes(cfg)
    roles = {primary.role: _role(primary.port), standby.role: _role(standby.port)}
    moved = False
    if roles == {"primary": "primary", "standby": "standby"} and postgres.pg_streaming(standby):
        _drop_dsn_overrides(cfg)
        # A recovery may have left the lab's synchronous settings rewritten for the other node.
        return postgres.apply_synchronous(cfg)
    started = time.monotonic()
    if roles["standby"] == "primary":
        if roles["primary"] != "standby" or not postgres.pg_streaming(primary):
            log = cfg.pg_dir / "primary.log"
            reclone_standby(cfg, standby.port, primary.data_dir, log)
            _wait(lambda: postgres.pg_streaming(primary), "old primary streaming")
        _pg_ctl(cfg, "stop", "-D", standby.data_dir, "-m", "fast", "-w", "-t", "60", what="stop")
    if _role(primary.port) == "standby":
        control = _control(cfg, standby.data_dir)
        if control.get("Database cluster state") == "shut down":
            # The other node was the primary: its shutdown checkpoint must be replayed here
            # before promotion, or its last commits would be lost.
            final = _lsn(control["Latest checkpoint location"])
            _wait(
                lambda: (
                    _lsn(postgres.pg_query(primary.port, "SELECT pg_last_wal_replay_lsn()")[0][0])
                    >= final
                ),
                "shutdown checkpoint replayed",
            )
        _pg_ctl(cfg, "promote", "-D", primary.data_dir, "-w", "-t", "60", what="promote")
        moved = True
    if _role(primary.port) != "primary":
        raise LabError(
            f"lab postgres: no primary to restore from ({roles}); run knowngood lab down/up"
        )
    if not postgres.pg_streaming(standby):
        subprocess.run(
            [
                "runuser",
                "-u",
                postgres.PG_OS_USER,
                "--",
                str(PG_BIN / "pg_ctl"),
                "stop",
                "-D",
                str(standby.data_dir),
                "-m",
                "fast",
                "-w",
            ],
            capture_output=True,
            check=False,
        )
        reclone_standby(cfg, primary.port, standby.data_dir, cfg.pg_dir / "standby.log")
        _wait(lambda: postgres.pg_streaming(standby), "standby streaming")
        moved = True
    _drop_dsn_overrides(cfg)
    # The promoted node runs with the postgresql.auto.conf of the clone it was made from, whose
    # synchronous_standby_names named this node itself: it would wait for no one, forever.
    moved |= postgres.apply_synchronous(cfg)
    if moved:
        progress(
            f"postgres: primary on {primary.port}, standby streaming "
            f"({time.monotonic() - started:.1f}s)"
        )
    return moved


def _drop_dsn_overrides(cfg: LabConfig) -> None:
    for index in range(cfg.hosts):
        Path(cfg.host_root(index) / "shared" / "database.json").unlink(missing_ok=True)
