"""The lab's load balancer: nginx with blue, green and maintenance pools."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from knowngood.errors import LabError
from knowngood.lab.apps import POOLS
from knowngood.lab.config import LabConfig
from knowngood.lab.process import Progress, descendants, read_pid, running, stop_pid, wait_http

# Not an app pool: the load balancer's own 503 page, made live while a database rollback has
# writes stopped (lb_pool pool=maintenance), like any other pool.
MAINTENANCE_POOL = "maintenance"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def nginx_paths(cfg: LabConfig) -> dict[str, Path]:
    base = cfg.root / "nginx"
    return {
        "base": base,
        "conf": base / "nginx.conf",
        "live": base / "live_pool.conf",
        "pools": base / "pools",
        "pid": cfg.run_dir / "nginx.pid",
    }


def nginx_commands(cfg: LabConfig) -> dict[str, list[str]]:
    p = nginx_paths(cfg)
    base = [NGINX, "-p", str(p["base"]), "-c", str(p["conf"])]
    return {
        "start": base,
        "test": base + ["-t", "-q"],
        "reload": base + ["-s", "reload"],
        "stop": base + ["-s", "quit"],
    }


def write_nginx_config(cfg: LabConfig) -> None:
    p = nginx_paths(cfg)
    p["pools"].mkdir(parents=True, exist_ok=True)
    tmp = p["base"] / "tmp"
    tmp.mkdir(exist_ok=True)
    tmp.chmod(0o1777)
    for pool in POOLS:
        servers = "\n".join(
            f"    server 127.0.0.1:{cfg.app_ports(i)[pool]} max_fails=0;" for i in range(cfg.hosts)
        )
        (p["pools"] / f"{pool}.conf").write_text(
            f"# knowngood-pool: {pool}\nupstream app_live {{\n{servers}\n    keepalive 32;\n}}\n"
        )
    (p["pools"] / f"{MAINTENANCE_POOL}.conf").write_text(
        f"# knowngood-pool: {MAINTENANCE_POOL}\nupstream app_live {{\n"
        f"    server 127.0.0.1:{cfg.maintenance_port} max_fails=0;\n    keepalive 8;\n}}\n"
    )
    if not p["live"].exists():
        shutil.copy(p["pools"] / "blue.conf", p["live"])
    else:  # host count may have changed: refresh the live pool's members, keep its colour
        text = p["live"].read_text()
        live = next(
            (n for n in (*POOLS, MAINTENANCE_POOL) if f"knowngood-pool: {n}" in text), "blue"
        )
        shutil.copy(p["pools"] / f"{live}.conf", p["live"])
    p["conf"].write_text(f"""# knowngood lab load balancer; the live pool is {p["live"]}
worker_processes 2;
pid {p["pid"]};
error_log {cfg.log_dir / "nginx-error.log"} warn;
events {{ worker_connections 4096; }}
http {{
    access_log {cfg.log_dir / "nginx-access.log"};
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {p["live"]};
    server {{
        listen 127.0.0.1:{cfg.lb_port};
        location = /lb-health {{ return 200 "ok\\n"; }}
        location / {{
            proxy_pass http://app_live;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 1s;
            proxy_read_timeout 10s;
            proxy_next_upstream error timeout http_502 non_idempotent;
            add_header X-Upstream $upstream_addr always;
        }}
    }}
    server {{
        listen 127.0.0.1:{cfg.maintenance_port};
        location / {{
            default_type application/json;
            add_header Retry-After 30 always;
            return 503 '{{"error": "maintenance", "detail": "writes are stopped"}}\n';
        }}
    }}
}}
""")


def nginx_up(cfg: LabConfig, progress: Progress) -> None:
    write_nginx_config(cfg)
    cmds = nginx_commands(cfg)
    test = subprocess.run(cmds["test"], capture_output=True, text=True)
    if test.returncode != 0:
        raise LabError(f"nginx -t failed: {test.stderr.strip()}")
    if read_pid(nginx_paths(cfg)["pid"]):
        nginx_reload(cfg)
        return
    subprocess.run(cmds["start"], check=True, capture_output=True)
    wait_http(f"http://127.0.0.1:{cfg.lb_port}/lb-health", 10, ok=lambda c: c == 200)
    progress(f"nginx: load balancer on http://127.0.0.1:{cfg.lb_port}")


def nginx_reload(cfg: LabConfig, timeout: float = 10.0) -> None:
    """Reload, then wait until the workers of the previous configuration are gone: until
    then a new connection can still land on one that routes to the previous pool."""
    master = read_pid(nginx_paths(cfg)["pid"])
    old_workers = descendants(master) if master else []
    subprocess.run(nginx_commands(cfg)["reload"], check=True, capture_output=True)
    deadline = time.monotonic() + timeout
    while any(running(pid) for pid in old_workers) and time.monotonic() < deadline:
        time.sleep(0.02)


def nginx_down(cfg: LabConfig) -> None:
    pidfile = nginx_paths(cfg)["pid"]
    if read_pid(pidfile):
        subprocess.run(nginx_commands(cfg)["stop"], capture_output=True)
        deadline = time.monotonic() + 5
        while read_pid(pidfile) and time.monotonic() < deadline:
            time.sleep(0.05)
        stop_pid(pidfile)
