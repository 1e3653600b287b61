"""Failures injected on purpose into the lab, for drills and demos, and the way back.

`knowngood lab break app-host NAME | db-primary | nginx-config | lb | region-a | everything`
and `knowngood lab heal`. What a break does is what the real failure looks like from outside:
processes killed with SIGKILL, a data directory gone, an S3 endpoint and the local backup disks
unreachable. Healing puts the lab's shape back (db1 primary and db2 streaming, every app
instance, the load balancer, region A, the disks); what recovered in between stays recovered.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from knowngood.errors import FaultError
from knowngood.lab import apps, nginx, pgswitch, postgres, process, s3
from knowngood.lab.config import LabConfig

LOST = ".lost-by-drill"
REGION_A_DISKS = ("local-a", "local-b")


def _postmaster(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _data_dirs(cfg: LabConfig) -> list[Path]:
    status = postgres.postgres_status(cfg)
    return [Path(status["primary_data_dir"]), Path(status["standby_data_dir"])]


def break_app_host(cfg: LabConfig, name: str) -> list[int]:
    names = [cfg.host_name(i) for i in range(cfg.hosts)]
    if name not in names:
        raise FaultError(f"no app host {name!r}; hosts: {', '.join(names)}")
    killed = []
    for pool in apps.POOLS:
        pid = process.read_pid(cfg.run_dir / f"{name}-{pool}.pid")
        if pid:
            process.kill_tree(pid)
            killed.append(pid)
    return killed


def _primary_dir(cfg: LabConfig) -> Path:
    """The node accepting writes now (after a failover that may be db2's directory)."""
    for data_dir in _data_dirs(cfg):
        pid = _postmaster(data_dir)
        if pid and not (data_dir / "standby.signal").exists():
            return data_dir
    raise FaultError("no running primary to break")


def break_db_primary(cfg: LabConfig) -> Path:
    data_dir = _primary_dir(cfg)
    process.kill_tree(_postmaster(data_dir) or 0)
    return data_dir


def break_region_a(cfg: LabConfig) -> dict[str, object]:
    """Region A lost: both database nodes and the primary's disk, region A's S3 endpoint, and
    the local backup disks (a file where each directory was: neither readable nor creatable)."""
    primary = _primary_dir(cfg)
    for data_dir in _data_dirs(cfg):
        pid = _postmaster(data_dir)
        if pid:
            process.kill_tree(pid)
    primary.rename(primary.with_name(primary.name + LOST))
    s3.s3_region_down(cfg, 0)
    backups = cfg.root / "backups"
    for name in REGION_A_DISKS:
        disk = backups / name
        if disk.is_dir():
            disk.rename(backups / f"{name}{LOST}")
            disk.write_text("")
    return {"primary_lost": str(primary), "s3": "region-a down", "disks": list(REGION_A_DISKS)}


def break_lb(cfg: LabConfig) -> int:
    """The load balancer's master and workers killed (the host or its process lost)."""
    pid = process.read_pid(nginx.nginx_paths(cfg)["pid"])
    if not pid:
        raise FaultError("the load balancer is not running")
    process.kill_tree(pid)
    return pid


def break_everything(cfg: LabConfig) -> dict[str, object]:
    """A complete outage: region A lost (both database nodes, the primary's disk, region A's
    S3 endpoint and local backup disks), every app instance and the load balancer."""
    lost = break_region_a(cfg)
    lost["apps"] = {
        cfg.host_name(i): break_app_host(cfg, cfg.host_name(i)) for i in range(cfg.hosts)
    }
    lost["lb"] = break_lb(cfg)
    return lost


BAD_UPSTREAM = "proxy_pass http://127.0.0.1:9/;"  # the discard port: nothing listens


def break_nginx_config(cfg: LabConfig) -> Path:
    """A configuration push that breaks the load balancer: every request goes where nothing
    listens. It passes `nginx -t` (it is valid configuration), as real bad pushes do."""
    conf = nginx.nginx_paths(cfg)["conf"]
    text = conf.read_text()
    if "proxy_pass http://app_live;" not in text:
        raise FaultError(f"{conf} has no app_live upstream to break (already broken?)")
    conf.write_text(text.replace("proxy_pass http://app_live;", BAD_UPSTREAM))
    nginx.nginx_reload(cfg)
    return conf


def heal(cfg: LabConfig, progress: Callable[[str], None] = print) -> None:
    backups = cfg.root / "backups"
    for name in REGION_A_DISKS:
        aside = backups / f"{name}{LOST}"
        if aside.is_dir():
            if (backups / name).is_file():
                (backups / name).unlink()
            if not (backups / name).exists():
                aside.rename(backups / name)
                progress(f"heal: backup disk {name} back")
    s3.s3_region_up(cfg, progress, 0)
    for data_dir in _data_dirs(cfg):
        aside = data_dir.with_name(data_dir.name + LOST)
        if aside.exists() and data_dir.exists():
            shutil.rmtree(aside)  # the node was rebuilt: its lost disk is history
        elif aside.exists():
            aside.rename(data_dir)
    nodes = postgres.pg_nodes(cfg)
    if all(postgres.pg_pid(node) is None for node in nodes):
        # Nothing recovered the database (a drill that failed early): start the nodes from
        # their disks, the old primary first, and let the switchover below sort out roles.
        account = postgres.pg_account()
        for node in nodes:
            if (node.data_dir / "PG_VERSION").exists():
                postgres.pg_start(cfg, node, account, progress)
    pgswitch.restore_topology(cfg, progress=progress)
    apps.apps_up(cfg, progress, postgres.postgres_status(cfg)["primary_dsn"])
    if not process.read_pid(nginx.nginx_paths(cfg)["pid"]):
        nginx.nginx_up(cfg, progress)
    progress(
        "heal: db1 primary, db2 streaming, every app instance and the load balancer running, "
        "region A up"
    )
