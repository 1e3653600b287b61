"""The lab's app hosts: each a root directory with a blue and a green app instance."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from knowngood.lab.config import LabConfig
from knowngood.lab.process import Progress, read_pid, spawn, stop_pid, wait_http

POOLS = ("blue", "green")


# Each app host's own configuration (appserver --config), managed by configuration rollback.
DEFAULT_APP_CONFIG = {"response_headers": {"Cache-Control": "no-store"}, "db_connect_timeout_s": 2}


def app_config_path(cfg: LabConfig, index: int) -> Path:
    return cfg.host_root(index) / "shared" / "app.conf"


def host_layout(cfg: LabConfig, index: int) -> None:
    root = cfg.host_root(index)
    for sub in ("releases", "slots", "shared"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    conf = app_config_path(cfg, index)
    if not conf.exists():
        conf.write_text(json.dumps(DEFAULT_APP_CONFIG, indent=1) + "\n")
        conf.chmod(0o644)
    current = root / "current"
    if not current.is_symlink() and not current.exists():
        current.symlink_to("slots/blue")


def app_pidfile(cfg: LabConfig, index: int, pool: str) -> Path:
    return cfg.run_dir / f"{cfg.host_name(index)}-{pool}.pid"


def app_url(cfg: LabConfig, index: int, pool: str) -> str:
    return f"http://127.0.0.1:{cfg.app_ports(index)[pool]}"


def apps_up(cfg: LabConfig, progress: Progress, dsn: str, only: set[int] | None = None) -> None:
    started = []
    for index in range(cfg.hosts):
        if only is not None and index not in only:
            continue
        host_layout(cfg, index)
        for pool in POOLS:
            pidfile = app_pidfile(cfg, index, pool)
            if read_pid(pidfile):
                continue
            root = cfg.host_root(index)
            spawn(
                [
                    sys.executable,
                    "-m",
                    "knowngood.lab.appserver",
                    "--link",
                    str(root / "slots" / pool),
                    "--port",
                    str(cfg.app_ports(index)[pool]),
                    "--pool",
                    pool,
                    "--host",
                    cfg.host_name(index),
                    "--dsn",
                    dsn,
                    "--flags",
                    str(root / "shared" / "flags.json"),
                    "--dsn-file",
                    str(root / "shared" / "database.json"),
                    "--config",
                    str(app_config_path(cfg, index)),
                ],
                cfg.log_dir / f"{cfg.host_name(index)}-{pool}.log",
                pidfile,
            )
            started.append((index, pool))
    for index, pool in started:
        wait_http(app_url(cfg, index, pool) + "/metrics", 15)
    if started:
        progress(f"apps: started {len(started)} instances on {cfg.hosts} hosts")


def apps_down(cfg: LabConfig) -> None:
    """Ask every instance to stop at once, then wait: 60 instances stop in about the time of one."""
    pidfiles = list(cfg.run_dir.glob("app*-*.pid"))
    for pidfile in pidfiles:
        pid = read_pid(pidfile)
        if pid:
            os.kill(pid, signal.SIGTERM)
    for pidfile in pidfiles:
        stop_pid(pidfile)
