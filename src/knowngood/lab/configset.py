"""The lab's managed configuration (knowngood_config_* inventory vars): what a configuration
rollback may snapshot and revert on each host, and how each service validates and reloads.

nginx: the main configuration and the pool definitions. The live pool file is left out on
purpose: it is the blue/green switch, state that lb_pool owns, not configuration to roll back.
PostgreSQL: the primary's configuration files, checked with `postgres -C` (which parses the
whole configuration and rejects an unknown name, a bad value or a syntax error while the
server runs); restart only when a changed parameter's pg_settings.context is 'postmaster'.
App hosts: shared/app.conf, which the app runtime validates (`appserver --check-config`) and
re-reads on SIGHUP (`appserver --reload` with both instances' pidfiles), so a revert reloads the
app and nothing else.
"""

from __future__ import annotations

import sys

from knowngood.lab import apps, nginx, postgres
from knowngood.lab.config import LabConfig


def store_vars(cfg: LabConfig, host: str) -> dict:
    return {
        "knowngood_config_store": str(cfg.root / "config-store" / host),
        "knowngood_config_git_repo": str(cfg.root / "config-git" / host),
    }


def app_vars(cfg: LabConfig, index: int) -> dict:
    conf = str(apps.app_config_path(cfg, index))
    runtime = [sys.executable, "-m", "knowngood.lab.appserver"]
    pidfiles = [str(apps.app_pidfile(cfg, index, pool)) for pool in apps.POOLS]
    return {
        **store_vars(cfg, cfg.host_name(index)),
        "knowngood_config_services": [
            {
                "name": "app",
                "paths": [conf],
                "validate": [*runtime, "--check-config", conf],
                "reload": [*runtime, "--reload", *pidfiles],
                "restart": [],
                "restart_on": "never",
            }
        ],
    }


def lb_vars(cfg: LabConfig) -> dict:
    paths = nginx.nginx_paths(cfg)
    cmds = nginx.nginx_commands(cfg)
    return {
        **store_vars(cfg, "lb1"),
        "knowngood_config_services": [
            {
                "name": "nginx",
                "paths": [str(paths["conf"]), str(paths["pools"])],
                "validate": cmds["test"],
                "reload": cmds["reload"],
                "restart": [],
                "restart_on": "never",
            }
        ],
    }


def db_vars(cfg: LabConfig, pg: dict) -> dict:
    data = pg["primary_data_dir"]
    run_as = ["runuser", "-u", postgres.PG_OS_USER, "--"]
    pg_ctl = [*run_as, f"{pg['bin_dir']}/pg_ctl", "-D", data]
    superuser = pg["superuser_dsn"]
    return {
        **store_vars(cfg, "db1"),
        "knowngood_config_services": [
            {
                "name": "postgresql",
                "paths": [
                    f"{data}/{name}" for name in ("postgresql.conf", "kglab.conf", "pg_hba.conf")
                ],
                "validate": [
                    *run_as,
                    f"{pg['bin_dir']}/postgres",
                    "-D",
                    data,
                    "-C",
                    "data_directory",
                ],
                "reload": [*pg_ctl, "reload"],
                # -l: the restarted server must not hold the caller's output pipes open.
                "restart": [
                    *pg_ctl,
                    "restart",
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    "60",
                    "-l",
                    str(cfg.pg_dir / "primary-restart.log"),
                ],
                "restart_on": "postgresql",
                "dsn": superuser,
            }
        ],
        "knowngood_config_db_dsn": superuser,
    }
