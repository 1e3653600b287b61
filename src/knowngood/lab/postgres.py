"""The lab's PostgreSQL 15: a primary and a streaming standby.

`postgres_up` is idempotent (a running, healthy cluster is left alone); `postgres_down`
tolerates a cluster that is already stopped.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import shutil
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knowngood.errors import LabError
from knowngood.lab.config import PG_BIN, LabConfig
from knowngood.lab.process import (
    LOOPBACK,
    Account,
    Progress,
    alive,
    clean_env,
    daemon_log,
    daemon_pidfile,
    ensure_base,
    ensure_dir,
    read_pidfile,
    require_free,
    run_command,
    spawn_daemon,
    stop_pids,
    wait_until,
    write_if_changed,
)

PG_OS_USER = "postgres"
PG_SUPERUSER = "postgres"
APP_ROLE = "app"
APP_DB = "app"
_UNIX_SOCKET_MAX = 107  # sun_path is 108 bytes including the NUL


@dataclass(frozen=True)
class _PgNode:
    role: str  # "primary" or "standby"
    port: int
    data_dir: Path

    @property
    def name(self) -> str:
        return f"postgres-{self.role}"


def pg_nodes(cfg: LabConfig) -> tuple[_PgNode, _PgNode]:
    return (
        _PgNode("primary", cfg.pg_primary_port, cfg.pg_dir / "primary"),
        _PgNode("standby", cfg.pg_standby_port, cfg.pg_dir / "standby"),
    )


def _pg_socket_dir(cfg: LabConfig) -> Path:
    return cfg.run_dir / "postgres"


def _pg_archive_script(cfg: LabConfig) -> Path:
    return cfg.pg_dir / "archive-wal.sh"


def pg_slot(cfg: LabConfig) -> str:
    # Slot names allow only lower-case letters, digits and underscores.
    return re.sub(r"[^a-z0-9_]", "_", f"{cfg.name}_standby".lower())


def _pg_marker(node: _PgNode) -> Path:
    # Outside the data dir, so pg_basebackup never copies the primary's marker to the standby.
    return node.data_dir.with_name(f".{node.role}.initialized")


def pg_account() -> Account:
    try:
        pw = pwd.getpwnam(PG_OS_USER)
    except KeyError as err:
        raise LabError(f"postgres: no '{PG_OS_USER}' OS user; install postgresql-15") from err
    return Account(pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))


def _traversable_by(path: Path, account: Account) -> bool:
    st = path.stat()
    groups = set(os.getgrouplist(pwd.getpwuid(account.uid).pw_name, account.gid))
    if st.st_uid == account.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in groups:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _pg_preflight(cfg: LabConfig, account: Account) -> None:
    for tool in ("initdb", "postgres", "pg_ctl", "pg_basebackup"):
        if not (PG_BIN / tool).exists():
            raise LabError(f"postgres: {PG_BIN / tool} missing (set KNOWNGOOD_PG_BIN?)")
    for p in reversed((cfg.root, *cfg.root.parents)):
        if p.exists() and not _traversable_by(p, account):
            raise LabError(
                f"postgres: {p} (mode {stat.filemode(p.stat().st_mode)}) cannot be traversed by "
                f"the '{PG_OS_USER}' user, which must reach {cfg.pg_dir}; "
                f"run 'chmod o+x {p}' or choose another lab root (KNOWNGOOD_LAB_DIR)"
            )
    sock = _pg_socket_dir(cfg) / f".s.PGSQL.{max(cfg.pg_primary_port, cfg.pg_standby_port)}"
    if len(str(sock).encode()) > _UNIX_SOCKET_MAX:
        raise LabError(
            f"postgres: socket path {sock} is too long for a unix socket; choose a shorter lab root"
        )


def pg_env(cfg: LabConfig) -> dict[str, str]:
    return clean_env(cfg.pg_dir, {"PGCONNECT_TIMEOUT": "5"})


def _conf_value(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


def _pg_settings(cfg: LabConfig, node: _PgNode) -> dict[str, str | int]:
    archive = shlex.quote(str(cfg.wal_archive_dir))
    return {
        "listen_addresses": LOOPBACK,
        "port": node.port,
        "unix_socket_directories": str(_pg_socket_dir(cfg)),
        # The standby gets its own name so monitoring and logs can tell the two apart.
        "cluster_name": cfg.name if node.role == "primary" else f"{cfg.name}-standby",
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": f"{shlex.quote(str(_pg_archive_script(cfg)))} %p %f",
        "archive_timeout": 60,
        # Only read during recovery: lets the standby (or a PITR restore) catch up from the archive.
        "restore_command": f"cp {archive}/%f %p",
        "max_wal_senders": 10,
        "max_replication_slots": 10,
        "wal_keep_size": "128MB",
        "hot_standby": "on",
        "hot_standby_feedback": "on",
        "logging_collector": "off",  # stderr already lands in <log_dir>/<name>.log
        "log_line_prefix": "%m [%p] %q%u@%d ",
        "log_connections": "off",
    }


def _pg_conf_text(cfg: LabConfig, node: _PgNode) -> str:
    lines = [f"# written by knowngood lab for the {node.role}; rewritten on every lab up"]
    lines += [f"{k} = {_conf_value(v)}" for k, v in _pg_settings(cfg, node).items()]
    return "\n".join(lines) + "\n"


_PG_HBA = """\
# knowngood lab: trust on loopback only; the servers listen on 127.0.0.1 and nowhere else.
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  trust
host    all          all   127.0.0.0/8    trust
local   replication  all                  trust
host    replication  all   127.0.0.0/8    trust
"""


_ARCHIVE_SCRIPT = """\
#!/bin/sh
# archive_command for the knowngood lab: archive-wal.sh %p %f
# Succeeds when the same segment is already archived (so a retry after a crash is not stuck),
# refuses to overwrite a different one, and never exposes a half-copied file to restore_command.
set -eu
src="$1"
dest={archive}/"$2"
if [ -f "$dest" ]; then
    exec cmp -s "$src" "$dest"
fi
cp "$src" "$dest.tmp.$$"
mv "$dest.tmp.$$" "$dest"
"""


def _pg_write_config(cfg: LabConfig, node: _PgNode, account: Account) -> bool:
    """(Re)write our settings into the data dir; True if anything changed."""
    conf = node.data_dir / "postgresql.conf"
    include = "include = 'kglab.conf'"
    main = conf.read_text()
    changed = False
    if include not in main.splitlines():
        tail = f"\n\n# knowngood lab settings (last wins)\n{include}\n"
        conf.write_text(main.rstrip("\n") + tail)
        changed = True
    changed |= write_if_changed(node.data_dir / "kglab.conf", _pg_conf_text(cfg, node), 0o600)
    changed |= write_if_changed(node.data_dir / "pg_hba.conf", _PG_HBA, 0o600)
    for name in ("postgresql.conf", "kglab.conf", "pg_hba.conf"):
        os.chown(node.data_dir / name, account.uid, account.gid)
    return changed


def _pg_layout(cfg: LabConfig, account: Account) -> None:
    ensure_base(cfg)
    ensure_dir(cfg.pg_dir, 0o755, owner=account)
    ensure_dir(cfg.wal_archive_dir, 0o750, owner=account)
    ensure_dir(_pg_socket_dir(cfg), 0o755, owner=account)
    script = _ARCHIVE_SCRIPT.format(archive=shlex.quote(str(cfg.wal_archive_dir)))
    write_if_changed(_pg_archive_script(cfg), script, 0o755)


def _pg_fresh_data_dir(node: _PgNode, account: Account) -> None:
    # A data dir without our marker is debris from an interrupted init: start over.
    if node.data_dir.exists():
        shutil.rmtree(node.data_dir)
    ensure_dir(node.data_dir, 0o700, owner=account)


def _pg_init_primary(cfg: LabConfig, node: _PgNode, account: Account, progress: Progress) -> None:
    if _pg_marker(node).exists():
        return
    _pg_fresh_data_dir(node, account)
    t0 = time.monotonic()
    run_command(
        [
            PG_BIN / "initdb",
            "-D",
            node.data_dir,
            "--data-checksums",
            "-U",
            PG_SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        ],
        what="postgres: initdb",
        timeout=120,
        account=account,
        env=pg_env(cfg),
        cwd=cfg.pg_dir,
    )
    _pg_write_config(cfg, node, account)
    _pg_marker(node).touch()
    progress(f"postgres: primary initialised in {node.data_dir} ({time.monotonic() - t0:.1f}s)")


def _pg_init_standby(
    cfg: LabConfig, primary: _PgNode, node: _PgNode, account: Account, progress: Progress
) -> None:
    if _pg_marker(node).exists():
        return
    _pg_fresh_data_dir(node, account)
    t0 = time.monotonic()
    run_command(
        [
            PG_BIN / "pg_basebackup",
            "-h",
            LOOPBACK,
            "-p",
            str(primary.port),
            "-U",
            PG_SUPERUSER,
            "-D",
            node.data_dir,
            "-R",
            "-S",
            pg_slot(cfg),
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-password",
            "-l",
            f"{cfg.name} standby",
        ],
        what="postgres: pg_basebackup",
        timeout=600,
        account=account,
        env=pg_env(cfg),
        cwd=cfg.pg_dir,
    )
    _pg_write_config(cfg, node, account)
    _pg_marker(node).touch()
    progress(f"postgres: standby cloned from primary ({time.monotonic() - t0:.1f}s)")


def pg_pid(node: _PgNode) -> int | None:
    # postmaster.pid is authoritative: a runbook may have restarted postgres with pg_ctl.
    pid = read_pidfile(node.data_dir / "postmaster.pid")
    return pid if pid is not None and alive(pid, "postgres") else None


def _pg_connect(port: int, dbname: str = "postgres", user: str = PG_SUPERUSER) -> Any:
    import psycopg

    return psycopg.connect(
        host=LOOPBACK, port=port, user=user, dbname=dbname, connect_timeout=3, autocommit=True
    )


def pg_query(port: int, sql: str, params: Sequence[Any] = (), dbname: str = "postgres") -> list:
    with _pg_connect(port, dbname) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def _pg_accepts(node: _PgNode) -> bool:
    try:
        pg_query(node.port, "SELECT 1")
        return True
    except Exception:
        return False


def pg_start(cfg: LabConfig, node: _PgNode, account: Account, progress: Progress) -> bool:
    """Start node unless it already runs; True if it was started now."""
    if pg_pid(node) is not None:
        if _pg_write_config(cfg, node, account):
            pg_query(node.port, "SELECT pg_reload_conf()")
        wait_until(
            lambda: _pg_accepts(node),
            what=f"postgres: {node.role}",
            timeout=60,
            log=daemon_log(cfg, node.name),
        )
        return False
    _pg_write_config(cfg, node, account)
    require_free(LOOPBACK, node.port, f"postgres: {node.role}")
    proc = spawn_daemon(
        cfg,
        node.name,
        [PG_BIN / "postgres", "-D", node.data_dir],
        cwd=cfg.pg_dir,
        env=pg_env(cfg),
        account=account,
    )
    waited = wait_until(
        lambda: _pg_accepts(node),
        what=f"postgres: {node.role}",
        timeout=60,
        log=daemon_log(cfg, node.name),
        proc=proc,
    )
    progress(f"postgres: {node.role} started on {LOOPBACK}:{node.port} ({waited:.1f}s)")
    return True


def _pg_bootstrap_objects(cfg: LabConfig, primary: _PgNode) -> None:
    """Replication slot, app role and app database; each created only if missing."""
    slot = pg_slot(cfg)
    pg_query(
        primary.port,
        "SELECT pg_create_physical_replication_slot(%s) "
        "WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = %s)",
        (slot, slot),
    )
    if not pg_query(primary.port, "SELECT 1 FROM pg_roles WHERE rolname = %s", (APP_ROLE,)):
        pg_query(primary.port, f'CREATE ROLE "{APP_ROLE}" LOGIN')
    if not pg_query(primary.port, "SELECT 1 FROM pg_database WHERE datname = %s", (APP_DB,)):
        pg_query(primary.port, f'CREATE DATABASE "{APP_DB}" OWNER "{APP_ROLE}"')
    # Deploys mark the moment before each migration (code_migrations_restore_point) as the
    # migrating role; production grants the same to its migration role. Function privileges
    # live in each database's catalog: granted where the app connects.
    pg_query(
        primary.port,
        f'GRANT EXECUTE ON FUNCTION pg_create_restore_point(text) TO "{APP_ROLE}"',
        dbname=APP_DB,
    )
    # amcheck in a schema of its own, so a reset of the app schema leaves it for pg_amcheck,
    # which a database rollback runs read-only on the restored, paused instance.
    pg_query(primary.port, "CREATE SCHEMA IF NOT EXISTS amcheck", dbname=APP_DB)
    pg_query(primary.port, "CREATE EXTENSION IF NOT EXISTS amcheck SCHEMA amcheck", dbname=APP_DB)


def pg_streaming(standby: _PgNode) -> bool:
    try:
        rows = pg_query(standby.port, "SELECT status FROM pg_stat_wal_receiver")
    except Exception:
        return False
    return bool(rows) and rows[0][0] == "streaming"


def postgres_up(cfg: LabConfig, progress: Progress) -> None:
    """Primary, app role/database, replication slot and a streaming standby."""
    account = pg_account()
    _pg_preflight(cfg, account)
    _pg_layout(cfg, account)
    primary, standby = pg_nodes(cfg)
    _pg_init_primary(cfg, primary, account, progress)
    pg_start(cfg, primary, account, progress)
    _pg_bootstrap_objects(cfg, primary)
    _pg_init_standby(cfg, primary, standby, account, progress)
    standby_started = pg_start(cfg, standby, account, progress)
    if pg_query(standby.port, "SELECT pg_is_in_recovery()")[0][0]:
        waited = wait_until(
            lambda: pg_streaming(standby),
            what="postgres: standby streaming",
            timeout=60,
            log=daemon_log(cfg, standby.name),
        )
        if standby_started:
            progress(f"postgres: standby streaming from primary ({waited:.1f}s)")
    else:
        # A promoted standby (failover drill) is left as it is: rebuilding it is a runbook's job.
        progress("postgres: standby is not in recovery (promoted?); leaving it alone")
        return
    if apply_synchronous(cfg):
        state = "on" if synchronous_declaration(cfg)["enabled"] else "off"
        progress(f"postgres: synchronous replication {state}")


def synchronous_declaration(cfg: LabConfig, enabled: bool | None = None) -> dict:
    """knowngood_db_synchronous for the lab: on with `knowngood lab up --synchronous`.

    Each node's application_name is its cluster_name (the walreceiver's default), which its
    kglab.conf sets and a re-seed carries over."""
    return {
        "enabled": bool(cfg.extra.get("synchronous")) if enabled is None else enabled,
        "method": "ANY",
        "num_sync": 1,
        "commit": "on",
        "names": {"db1": cfg.name, "db2": f"{cfg.name}-standby"},
        "without_standby": "async",
    }


def apply_synchronous(cfg: LabConfig, declaration: dict | None = None) -> bool:
    """The primary (base+432) runs with the declaration's settings (PostgreSQL's defaults when
    it is off); True if anything changed. A standby cloned from a primary carries the primary's
    postgresql.auto.conf, so every change of roles ends here."""
    from knowngood.modutils import module_utils

    replication = module_utils("replication")
    postgres_utils = module_utils("postgres")
    declaration = declaration or synchronous_declaration(cfg)
    primary, _standby = pg_nodes(cfg)
    with _pg_connect(primary.port, "postgres") as conn:
        if declaration["enabled"]:
            streaming = list(postgres_utils.streaming_standbys(conn))
            desired = replication.plan(declaration, "db1", (), streaming)["settings"]
        else:
            desired = {"synchronous_standby_names": "", "synchronous_commit": "on"}
        before = postgres_utils.settings(conn, desired)
        changes = {name: value for name, value in desired.items() if before[name] != value}
        postgres_utils.alter_system(conn, changes)
        changed = bool(changes)
        if changed:
            wait_until(
                lambda: postgres_utils.settings(conn, desired) == desired,
                what="postgres: synchronous settings reloaded",
                timeout=10,
            )
    return changed


def postgres_down(cfg: LabConfig) -> None:
    """pg_ctl stop -m fast, standby first so it does not spin reconnecting to a gone primary."""
    for node in reversed(pg_nodes(cfg)):
        pid = pg_pid(node)
        if pid is not None:
            # Signals below are the fallback if pg_ctl cannot do it; they also reap our own
            # postmaster child so no zombie outlives the lab.
            with contextlib.suppress(LabError):
                _pg_ctl_stop(cfg, node)
            stop_pids([(pid, "postgres")], timeout=10)
        daemon_pidfile(cfg, node.name).unlink(missing_ok=True)


def _pg_ctl_stop(cfg: LabConfig, node: _PgNode) -> None:
    argv = [PG_BIN / "pg_ctl", "stop", "-D", node.data_dir, "-m", "fast", "-w", "-t", "60"]
    run_command(
        argv,
        what=f"postgres: stop {node.role}",
        timeout=90,
        account=pg_account(),
        env=pg_env(cfg),
        cwd=cfg.pg_dir,
    )


def postgres_status(cfg: LabConfig) -> dict[str, Any]:
    primary, standby = pg_nodes(cfg)
    running = {n.role: pg_pid(n) is not None and _pg_accepts(n) for n in (primary, standby)}
    return {
        "name": cfg.name,
        "primary_dsn": f"postgresql://{APP_ROLE}@{LOOPBACK}:{primary.port}/{APP_DB}",
        "standby_dsn": f"postgresql://{APP_ROLE}@{LOOPBACK}:{standby.port}/{APP_DB}",
        "superuser_dsn": f"postgresql://{PG_SUPERUSER}@{LOOPBACK}:{primary.port}/postgres",
        "primary_data_dir": str(primary.data_dir),
        "standby_data_dir": str(standby.data_dir),
        "wal_archive_dir": str(cfg.wal_archive_dir),
        "primary_port": primary.port,
        "standby_port": standby.port,
        "bin_dir": str(PG_BIN),
        "running": running,
        "standby_streaming": running["standby"] and pg_streaming(standby),
    }
