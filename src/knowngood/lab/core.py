"""knowngood lab up|down|status: a small production on this one machine.

App hosts (apps), each optionally behind its own sshd (sshd), the app runtime in a blue and a
green instance per host, nginx in front with blue and green pools (nginx), PostgreSQL primary
and standby (postgres), Prometheus (prometheus), two S3 regions (s3) and the flag service
(flags); process holds how they all run, inventory what the runbooks are told.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tarfile
import time
from pathlib import Path
from typing import Any

from knowngood.lab import governance
from knowngood.lab.apps import POOLS, app_pidfile, app_url, apps_down, apps_up, host_layout
from knowngood.lab.config import LabConfig
from knowngood.lab.flags import flagservice_up
from knowngood.lab.inventory import write_inventory
from knowngood.lab.nginx import nginx_down, nginx_paths, nginx_reload, nginx_up, write_nginx_config
from knowngood.lab.postgres import pg_nodes, pg_pid, postgres_down, postgres_status, postgres_up
from knowngood.lab.process import Progress, alive, read_pid, read_pidfile, stop_pid, wait_http
from knowngood.lab.prometheus import prometheus_down, prometheus_status, prometheus_up
from knowngood.lab.s3 import s3_down, s3_status, s3_up
from knowngood.lab.sshd import sshd_down, sshd_status, sshd_up


def pids(cfg: LabConfig) -> dict[str, int]:
    """Live lab daemons by name, from the pidfiles under run_dir (postgres from postmaster.pid)."""
    found: dict[str, int] = {}
    if cfg.run_dir.is_dir():
        for path in sorted(cfg.run_dir.glob("*.pid")):
            pid = read_pidfile(path)
            if pid is not None and alive(pid):
                found[path.stem] = pid
    for node in pg_nodes(cfg):
        pid = pg_pid(node)
        if pid is not None:
            found[node.name] = pid
    return found


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


RELEASES_SRC = Path(__file__).parent / "releases"


def build_artifacts(cfg: LabConfig) -> dict[str, Path]:
    """Pack every built-in release as <id>.tar.gz, the way a CI system would hand them over."""
    out = cfg.root / "artifacts"
    out.mkdir(parents=True, exist_ok=True)
    built = {}
    for src in sorted(RELEASES_SRC.iterdir()):
        if not (src / "release.json").exists():
            continue
        target = out / f"{src.name}.tar.gz"
        if not target.exists():
            tmp = target.with_suffix(".tmp")
            with tarfile.open(tmp, "w:gz") as archive:
                for path in sorted(src.rglob("*")):
                    if "__pycache__" in path.parts:
                        continue
                    archive.add(path, arcname=str(path.relative_to(src)), recursive=False)
            tmp.rename(target)
        built[src.name] = target
    return built


def up(cfg: LabConfig, progress: Progress = print) -> dict:
    started = time.monotonic()
    for d in (cfg.root, cfg.run_dir, cfg.log_dir):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o755)
    cfg.save()
    build_artifacts(cfg)
    progress(f"lab: {cfg.hosts} app hosts under {cfg.root} ({'ssh' if cfg.ssh else 'local'})")
    postgres_up(cfg, progress)
    dsn = postgres_status(cfg)["primary_dsn"]
    apps_up(cfg, progress, dsn)
    nginx_up(cfg, progress)
    flagservice_up(cfg, progress)
    targets, labels = [], {}
    for i in range(cfg.hosts):
        for pool in POOLS:
            target = f"127.0.0.1:{cfg.app_ports(i)[pool]}"
            targets.append(target)
            labels[target] = {"host": cfg.host_name(i), "pool": pool}
    prometheus_up(cfg, progress, targets, labels)
    s3_up(cfg, progress)
    governance.write_witness(cfg)  # the audit trail's witness: the object-locked cold bucket
    if cfg.ssh:
        for i in range(cfg.hosts):
            sshd_up(cfg, progress, i)
    # The export location stands for removable media: a mounted, writable directory.
    (cfg.root / "backups" / "export").mkdir(parents=True, exist_ok=True)
    write_inventory(cfg)
    progress(f"lab: up in {time.monotonic() - started:.1f}s; inventory {cfg.inventory_path}")
    return status(cfg)


def down(cfg: LabConfig, progress: Progress = print) -> None:
    if cfg.ssh:
        for i in range(cfg.hosts):
            sshd_down(cfg, i)
    apps_down(cfg)
    stop_pid(cfg.run_dir / "flagservice.pid")
    nginx_down(cfg)
    prometheus_down(cfg)
    s3_down(cfg)
    postgres_down(cfg)
    shutil.rmtree(cfg.root, ignore_errors=True)
    progress(f"lab: stopped everything and removed {cfg.root}")


def reset(cfg: LabConfig) -> None:
    """Empty every host, the app schema and the load balancer's choice, keeping processes up.

    Tests and drills start from the same blank production this way without paying for a
    new lab each time.
    """
    import psycopg

    for index in range(cfg.hosts):
        root = cfg.host_root(index)
        for name in ("releases", "slots", "shared", ".knowngood"):
            shutil.rmtree(root / name, ignore_errors=True)
        current = root / "current"
        if current.is_dir() and not current.is_symlink():
            shutil.rmtree(current)  # a test (or a person) put a real directory there
        current.unlink(missing_ok=True)
        host_layout(cfg, index)
        for pool in POOLS:
            pid = read_pid(app_pidfile(cfg, index, pool))
            if pid:
                os.kill(pid, signal.SIGHUP)
    paths = nginx_paths(cfg)
    write_nginx_config(cfg)
    shutil.copy(paths["pools"] / "blue.conf", paths["live"])
    nginx_reload(cfg)
    superuser = postgres_status(cfg)["superuser_dsn"].rsplit("/", 1)[0] + "/app"
    with psycopg.connect(superuser, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public AUTHORIZATION app")
    for index in range(cfg.hosts):
        for pool in POOLS:
            wait_http(app_url(cfg, index, pool) + "/version", 5, ok=lambda c: c == 503)


def status(cfg: LabConfig) -> dict:
    pg = postgres_status(cfg)
    return {
        "root": str(cfg.root),
        "lb_url": f"http://127.0.0.1:{cfg.lb_port}",
        "hosts": [
            {
                "name": cfg.host_name(i),
                "address": cfg.host_address(i),
                "root": str(cfg.host_root(i)),
                "app_url": app_url(cfg, i, "blue"),
                "app_urls": {pool: app_url(cfg, i, pool) for pool in POOLS},
                "running": {
                    pool: read_pid(app_pidfile(cfg, i, pool)) is not None for pool in POOLS
                },
            }
            for i in range(cfg.hosts)
        ],
        "postgres": {
            k: pg[k]
            for k in (
                "name",
                "primary_dsn",
                "standby_dsn",
                "primary_data_dir",
                "standby_data_dir",
                "wal_archive_dir",
                "running",
                "standby_streaming",
            )
            if k in pg
        },
        "prometheus_url": f"http://127.0.0.1:{cfg.prometheus_port}",
        "s3": s3_status(cfg),
        "inventory": str(cfg.inventory_path),
        "flag_service_url": f"http://127.0.0.1:{cfg.flag_service_port}",
        "flag_service_running": read_pid(cfg.run_dir / "flagservice.pid") is not None,
        "ssh": cfg.ssh,
        "nginx_running": read_pid(nginx_paths(cfg)["pid"]) is not None,
    }


def status_json(cfg: LabConfig) -> str:
    return json.dumps(status(cfg), indent=2)
