"""The lab's Ansible inventory: every host, its variables, and the backup configuration."""

from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path

import yaml

from knowngood.lab import governance
from knowngood.lab.apps import POOLS, app_url
from knowngood.lab.config import LabConfig
from knowngood.lab.flags import flag_token_file
from knowngood.lab.nginx import nginx_commands, nginx_paths
from knowngood.lab.postgres import (
    PG_OS_USER,
    PG_SUPERUSER,
    pg_slot,
    postgres_status,
    synchronous_declaration,
)
from knowngood.lab.s3 import COLD_BUCKET, s3_credentials, s3_status
from knowngood.lab.sshd import ssh_client_options


def inventory(cfg: LabConfig) -> dict:
    from knowngood.lab import configset

    pg = postgres_status(cfg)
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
            ssh = ssh_client_options(cfg)
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
                # Synchronous replication (`knowngood lab up --synchronous`); recover-system
                # rewrites the settings for whichever node it promotes.
                "knowngood_db_synchronous": synchronous_declaration(cfg),
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
                # Its own config store, so its host run lock is this lab's: without one the
                # lock falls back to /var/lib/knowngood/config/run.lock, which every lab on
                # the machine (each test worker's, the demo's, the bench's) would share.
                "db_standby": {
                    "hosts": {
                        "db2": {
                            **local,
                            **standby_vars(cfg, pg),
                            **configset.store_vars(cfg, "db2"),
                        }
                    }
                },
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
    pg = postgres_status(cfg)
    access, secret = s3_credentials(cfg)
    s3 = s3_status(cfg)
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
                bucket=COLD_BUCKET,
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
            "slot": pg_slot(cfg),
            "bin_dir": pg["bin_dir"],
            "os_user": PG_OS_USER,
            "user": PG_SUPERUSER,
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
