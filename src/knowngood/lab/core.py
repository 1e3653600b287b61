"""knowngood lab up|down|status: a small production on this one machine.

App hosts (each a root directory, optionally behind its own sshd), the app runtime in a
blue and a green instance per host, nginx in front with blue and green pools, and the
services in infra.py (PostgreSQL primary and standby, Prometheus, two S3 regions).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from knowngood.errors import LabError
from knowngood.lab import governance, infra
from knowngood.lab.config import LabConfig

Progress = Callable[[str], None]
RELEASES_SRC = Path(__file__).parent / "releases"
POOLS = ("blue", "green")
# Not an app pool: the load balancer's own 503 page, made live while a database rollback has
# writes stopped (lb_pool pool=maintenance), like any other pool.
MAINTENANCE_POOL = "maintenance"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def _quiet(_msg: str) -> None:
    return None


# ------------------------------------------------------------------ processes


def read_pid(pidfile: Path) -> int | None:
    """The pid in pidfile if that process is alive and belongs to this lab.

    Every process the lab starts names the lab's directory on its command line. A pidfile
    left behind by a lab whose processes died may hold a pid the system has since given to
    something else (another lab's app, say): that process is not ours to signal.
    """
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    lab_root = str(pidfile.parent.parent).encode()
    return pid if lab_root in cmdline else None


def spawn(argv: list[str], log: Path, pidfile: Path) -> int:
    """Start a detached process that outlives the CLI; its pid goes to pidfile."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
    pidfile.write_text(f"{proc.pid}\n")
    return proc.pid


def running(pid: int) -> bool:
    """Alive and not a zombie: the lab's daemons outlive the CLI that started them, so
    nobody but a slow init reaps them, and a zombie still answers kill(pid, 0)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def stop_pid(pidfile: Path, timeout: float = 5.0) -> None:
    pid = read_pid(pidfile)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while running(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if running(pid):
            os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def wait_http(url: str, timeout: float, ok: Callable[[int], bool] = lambda c: c < 600) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            code, _ = http_get(url, timeout=1)
            if ok(code):
                return
            last = code
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise LabError(f"{url} not ready after {timeout}s (last: {last})")


# ------------------------------------------------------------------ releases


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


# ------------------------------------------------------------------ app hosts


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


# ------------------------------------------------------------------ nginx


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
    old_workers = infra.descendants(master) if master else []
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


# ------------------------------------------------------------------ flag service


def flag_token_file(cfg: LabConfig) -> Path:
    return cfg.root / "secrets" / "flag-service.token"


def flagservice_up(cfg: LabConfig, progress: Progress) -> None:
    """The HTTP flag service for the feature_flag module's http backend."""
    token_file = flag_token_file(cfg)
    if not token_file.exists():
        token_file.parent.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
    pidfile = cfg.run_dir / "flagservice.pid"
    if read_pid(pidfile):
        return
    spawn(
        [
            sys.executable,
            "-m",
            "knowngood.lab.flagservice",
            "--port",
            str(cfg.flag_service_port),
            "--state",
            str(cfg.root / "flagservice" / "flags.json"),
            "--token-file",
            str(token_file),
        ],
        cfg.log_dir / "flagservice.log",
        pidfile,
    )
    wait_http(f"http://127.0.0.1:{cfg.flag_service_port}/health", 10, ok=lambda c: c == 200)
    progress(f"flags: flag service on http://127.0.0.1:{cfg.flag_service_port}")


# ------------------------------------------------------------------ inventory


def inventory(cfg: LabConfig) -> dict:
    from knowngood.lab import configset

    pg = infra.postgres_status(cfg)
    hosts = {}
    for i in range(cfg.hosts):
        name = cfg.host_name(i)
        hv: dict = {
            "knowngood_app_root": str(cfg.host_root(i)),
            "knowngood_app_urls": {pool: app_url(cfg, i, pool) for pool in POOLS},
            "knowngood_app_pidfile": str(cfg.run_dir / f"{name}-{{pool}}.pid"),
            "knowngood_flags_file": str(cfg.host_root(i) / "shared" / "flags.json"),
            # Recovery repoints the app here and starts a lost host's instances with this.
            "knowngood_app_dsn_file": str(cfg.host_root(i) / "shared" / "database.json"),
            "knowngood_app_start_command": [
                sys.executable,
                "-m",
                "knowngood.lab.service",
                "--root",
                str(cfg.root),
                "start",
                name,
            ],
            **configset.app_vars(cfg, i),
        }
        if cfg.ssh:
            ssh = infra.ssh_client_options(cfg)
            hv.update(
                {
                    "ansible_connection": "ssh",
                    "ansible_host": cfg.host_address(i),
                    "ansible_user": "root",
                    "ansible_ssh_private_key_file": ssh["private_key_file"],
                    "ansible_ssh_common_args": ssh["common_args"],
                }
            )
        else:
            hv["ansible_connection"] = "local"
        hosts[name] = hv
    cmds = nginx_commands(cfg)
    np = nginx_paths(cfg)
    local = {"ansible_connection": "local"}
    return {
        "all": {
            "vars": {
                "ansible_python_interpreter": sys.executable,
                "knowngood_lab_root": str(cfg.root),
                "knowngood_lb_url": f"http://127.0.0.1:{cfg.lb_port}",
                "knowngood_prometheus_url": f"http://127.0.0.1:{cfg.prometheus_port}",
                "knowngood_artifact_dir": str(cfg.root / "artifacts"),
                "knowngood_audit_dir": str(cfg.root / "audit"),
                "knowngood_log_files": [str(cfg.log_dir / "*.log"), str(cfg.pg_dir / "*.log")],
                "knowngood_db_dsn": pg["primary_dsn"],
                "knowngood_db_cluster": pg["name"],
                # The lab's services share two cores with the controller and whatever else runs:
                # Prometheus latency and throughput of another minute's window measure that
                # load as much as the service, so here they report rather than decide. Every
                # probe is still judged against a baseline taken in the same run.
                "verify_metrics_speed_decides": False,
                "knowngood_flag_service_url": f"http://127.0.0.1:{cfg.flag_service_port}",
                "knowngood_flag_service_token_file": str(flag_token_file(cfg)),
                **governance.inventory_vars(cfg),  # decision matrix, approvers, contacts
            },
            "children": {
                "app": {"hosts": hosts},
                "lb": {
                    "hosts": {
                        "lb1": {
                            **local,
                            "knowngood_lb_live_file": str(np["live"]),
                            "knowngood_lb_pools_dir": str(np["pools"]),
                            "knowngood_lb_test_command": cmds["test"],
                            "knowngood_lb_reload_command": cmds["reload"],
                            "knowngood_lb_start_command": cmds["start"],
                            **configset.lb_vars(cfg),
                        }
                    }
                },
                "db": {
                    "hosts": {
                        "db1": {
                            **local,
                            "knowngood_db_data_dir": pg["primary_data_dir"],
                            # pg_ctl logs here when a runbook starts it (postgres writes it).
                            "knowngood_db_log_file": str(cfg.pg_dir / "primary.log"),
                            **backup_vars(cfg),
                            **configset.db_vars(cfg, pg),
                        }
                    }
                },
                # The streaming standby, for runbooks that must re-seed it (a database
                # rollback leaves the primary on a new timeline).
                "db_standby": {"hosts": {"db2": {**local, **standby_vars(cfg, pg)}}},
            },
        }
    }


def backup_secrets(cfg: LabConfig) -> dict[str, str]:
    """The lab's backup keys, made once per lab (0600); production keeps them in a vault."""
    path = cfg.root / "secrets" / "backup-keys.json"
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        keys = {
            "encryption_key": secrets.token_urlsafe(32),
            "signing_key": secrets.token_urlsafe(32),
        }
        path.write_text(json.dumps(keys))
        path.chmod(0o600)
    return json.loads(path.read_text())


def backup_config(cfg: LabConfig) -> dict:
    """knowngood_backup for the lab's primary: two local disks, both S3 regions, an object-locked
    cold bucket and an export directory standing in for removable media."""
    pg = infra.postgres_status(cfg)
    access, secret = infra.s3_credentials(cfg)
    s3 = infra.s3_status(cfg)
    backups = cfg.root / "backups"

    def region(name: str, region_name: str, **extra) -> dict:
        return {
            "name": name,
            "type": "s3",
            "endpoint_url": s3[region_name]["endpoint"],
            "region": region_name,
            "bucket": s3[region_name]["bucket"],
            "prefix": "backups",
            "access_key": access,
            "secret_key": secret,
            # A region outage must not stall WAL archiving: the local disks are required, the
            # remote copies are retried, queued as pending and backfilled, and reported.
            "required": False,
            **extra,
        }

    return {
        "cluster": pg["name"],
        "engine": "native",
        "pg": {
            "host": "127.0.0.1",
            "port": pg["primary_port"],
            "user": "postgres",
            "data_dir": pg["primary_data_dir"],
            "bin_dir": pg["bin_dir"],
            "os_user": "postgres",
        },
        "compression": "lz4",
        "parallel": 2,
        "spool_dir": str(backups / "spool"),
        "catalog_dir": str(backups / "catalog"),
        "locations": [
            {"name": "local-a", "type": "local", "path": str(backups / "local-a")},
            {"name": "local-b", "type": "local", "path": str(backups / "local-b")},
            region("s3-region-a", "region-a"),
            region("s3-region-b", "region-b"),
            region(
                "cold",
                "region-b",
                bucket=infra.COLD_BUCKET,
                prefix="",
                storage_class="GLACIER",
                object_lock_days=1,
            ),
            {
                "name": "export",
                "type": "export",
                "path": str(backups / "export"),
                "required": False,
            },
        ],
    }


def backup_vars(cfg: LabConfig) -> dict:
    keys = backup_secrets(cfg)
    return {
        "knowngood_backup": backup_config(cfg),
        "knowngood_backup_encryption_key": keys["encryption_key"],
        "knowngood_backup_signing_key": keys["signing_key"],
        "knowngood_backup_tool_dir": str(cfg.pg_dir / "knowngood"),
        "knowngood_backup_cron_file": str(cfg.root / "cron.d" / "knowngood-backup"),
    }


def standby_vars(cfg: LabConfig, pg: dict) -> dict:
    return {
        "knowngood_db_standby": {
            "primary_host": "127.0.0.1",
            "primary_port": pg["primary_port"],
            "port": pg["standby_port"],
            "data_dir": pg["standby_data_dir"],
            "slot": infra.pg_slot(cfg),
            "bin_dir": pg["bin_dir"],
            "os_user": infra.PG_OS_USER,
            "user": infra.PG_SUPERUSER,
            "log_file": str(cfg.pg_dir / "standby.log"),
            # The lab keeps its settings in kglab.conf inside the data dir: carried over a
            # re-seed, or the clone would come up with the primary's port and name.
            "keep_files": ["postgresql.conf", "kglab.conf", "pg_hba.conf", "pg_ident.conf"],
        },
        # Its own WAL tool (setup-backups configures the standby too): the primary's, on the
        # same lab machine, must keep naming the primary for its scheduled backups.
        "knowngood_backup_tool_dir": str(cfg.pg_dir / "knowngood-standby"),
    }


def write_inventory(cfg: LabConfig) -> Path:
    import yaml

    inv = inventory(cfg)
    cfg.inventory_path.parent.mkdir(parents=True, exist_ok=True)
    # 0600: the lab's inventory carries its backup keys and S3 credentials.
    for path, text in (
        (cfg.inventory_path, yaml.safe_dump(inv, sort_keys=False)),
        # The checkout's inventories/lab script reads the JSON twin.
        (cfg.inventory_path.with_suffix(".json"), json.dumps(inv, indent=1)),
    ):
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(text)
    return cfg.inventory_path


# ------------------------------------------------------------------ whole lab


def up(cfg: LabConfig, progress: Progress = print) -> dict:
    started = time.monotonic()
    for d in (cfg.root, cfg.run_dir, cfg.log_dir):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o755)
    cfg.save()
    build_artifacts(cfg)
    progress(f"lab: {cfg.hosts} app hosts under {cfg.root} ({'ssh' if cfg.ssh else 'local'})")
    infra.postgres_up(cfg, progress)
    dsn = infra.postgres_status(cfg)["primary_dsn"]
    apps_up(cfg, progress, dsn)
    nginx_up(cfg, progress)
    flagservice_up(cfg, progress)
    targets, labels = [], {}
    for i in range(cfg.hosts):
        for pool in POOLS:
            target = f"127.0.0.1:{cfg.app_ports(i)[pool]}"
            targets.append(target)
            labels[target] = {"host": cfg.host_name(i), "pool": pool}
    infra.prometheus_up(cfg, progress, targets, labels)
    infra.s3_up(cfg, progress)
    governance.write_witness(cfg)  # the audit trail's witness: the object-locked cold bucket
    if cfg.ssh:
        for i in range(cfg.hosts):
            infra.sshd_up(cfg, progress, i)
    # The export location stands for removable media: a mounted, writable directory.
    (cfg.root / "backups" / "export").mkdir(parents=True, exist_ok=True)
    write_inventory(cfg)
    progress(f"lab: up in {time.monotonic() - started:.1f}s; inventory {cfg.inventory_path}")
    return status(cfg)


def down(cfg: LabConfig, progress: Progress = print) -> None:
    if cfg.ssh:
        for i in range(cfg.hosts):
            infra.sshd_down(cfg, i)
    apps_down(cfg)
    stop_pid(cfg.run_dir / "flagservice.pid")
    nginx_down(cfg)
    infra.prometheus_down(cfg)
    infra.s3_down(cfg)
    infra.postgres_down(cfg)
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
    superuser = infra.postgres_status(cfg)["superuser_dsn"].rsplit("/", 1)[0] + "/app"
    with psycopg.connect(superuser, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public AUTHORIZATION app")
    for index in range(cfg.hosts):
        for pool in POOLS:
            wait_http(app_url(cfg, index, pool) + "/version", 5, ok=lambda c: c == 503)


def status(cfg: LabConfig) -> dict:
    pg = infra.postgres_status(cfg)
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
        "s3": infra.s3_status(cfg),
        "inventory": str(cfg.inventory_path),
        "flag_service_url": f"http://127.0.0.1:{cfg.flag_service_port}",
        "flag_service_running": read_pid(cfg.run_dir / "flagservice.pid") is not None,
        "ssh": cfg.ssh,
        "nginx_running": read_pid(nginx_paths(cfg)["pid"]) is not None,
    }


def status_json(cfg: LabConfig) -> str:
    return json.dumps(status(cfg), indent=2)
