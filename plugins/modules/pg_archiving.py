#!/usr/bin/python
# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: pg_archiving
short_description: Configure continuous WAL archiving to every backup location
version_added: "0.2.0"
description:
  - Checks every location first (reachable, writable, credentials, encryption key), so a bad
    location fails the task before the cluster is touched.
  - Installs the WAL tool (C(kg-wal push) and C(kg-wal fetch), run by the PostgreSQL OS user
    under the system Python) with its configuration, readable only by that user.
  - Sets C(archive_command), C(restore_command) and C(archive_timeout) with ALTER SYSTEM and
    reloads. C(archive_mode=off) needs a restart, done only when C(allow_restart=true).
  - Proves archiving works by switching WAL and waiting until the segment is archived.
  - On a hot standby the settings are written all the same (ALTER SYSTEM writes no WAL) and
    reloaded. A standby does not archive, but once promoted it archives to every location from
    the first WAL of its new timeline, history file included. There is no proof to take on a
    standby (it cannot switch WAL); C(in_recovery) says so.
options:
  tool_dir:
    description: Directory for the WAL tool; the PostgreSQL OS user must be able to reach it.
    type: path
    required: true
  tool_python:
    description: Interpreter for the WAL tool (needs boto3, lz4, zstandard, cryptography when
      the locations use them).
    type: path
    default: /usr/bin/python3
  archive_timeout:
    description: Seconds after which a partly filled segment is archived anyway (bounds RPO).
    type: int
    default: 60
  allow_restart:
    description: Restart the cluster when archive_mode must be switched on.
    type: bool
    default: false
  verify:
    description: Switch WAL and wait until the segment is archived (skipped on a standby).
    type: bool
    default: true
  check_locations:
    description:
      - Prove every location first (reachable, writable, credentials) and fail before any
        change when one is not.
      - Turn off only where waiting on a location must not block the task (a promotion); the
        WAL tool queues the copies for a location that is down and backfills them.
    type: bool
    default: true
  wait_timeout:
    description: Seconds to wait for the proof segment.
    type: int
    default: 60
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - knowngood.runbooks.backup
  - knowngood.runbooks.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
author:
  - knowngood contributors (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Archive WAL continuously to every backup location
  knowngood.runbooks.pg_archiving:
    config: "{{ knowngood_backup }}"
    encryption_key: "{{ knowngood_backup_encryption_key }}"
    tool_dir: /var/lib/postgresql/knowngood
    archive_timeout: 60
"""

RETURN = r"""
settings:
  description: archive_mode, archive_command, restore_command and archive_timeout now in force.
  returned: always
  type: dict
changed_settings:
  description: Settings this run changed.
  returned: always
  type: list
  elements: str
tool:
  description: Path of the installed WAL tool.
  returned: always
  type: str
archived_segment:
  description: Segment switched and archived as proof, null when not verified.
  returned: always
  type: str
in_recovery:
  description: The server is a standby; the settings apply once it is promoted.
  returned: always
  type: bool
locations:
  description: Location names checked, in order.
  returned: always
  type: list
  elements: str
queries:
  description: SQL executed.
  returned: always
  type: list
  elements: str
"""

import grp
import os
import pwd
import time

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.knowngood.runbooks.plugins.module_utils import postgres
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import install as wal_tool

# kg-wal's own entry point: imported so that Ansible ships every source install_tool copies.
# pylint: disable-next=unused-import
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import tool  # noqa: F401
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (
    BackupError,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.module import (
    argument_spec,
    config_from_params,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.store import (
    probe_locations,
)

HAS_PSYCOPG = postgres.has_psycopg()

SETTINGS = ("archive_mode", "archive_command", "restore_command", "archive_timeout")


def _current(conn):
    rows = conn.execute(
        "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", (list(SETTINGS),)
    ).fetchall()
    return dict(rows)


def _restart(module, cfg):
    if not cfg.pg.data_dir:
        raise BackupError("archive_mode needs a restart and config.pg.data_dir is not set")
    argv = ["runuser", "-u", cfg.pg.os_user, "--", cfg.pg.binary("pg_ctl"), "restart"]
    argv += ["-D", cfg.pg.data_dir, "-m", "fast", "-w", "-t", "120"]
    rc, out, err = module.run_command(argv)
    if rc != 0:
        raise BackupError(f"restart for archive_mode=on failed: {(out + err).strip()[-2000:]}")


def _check_locations(cfg):
    for status in probe_locations(cfg).values():
        if not status["ok"]:
            raise BackupError(status["error"])


def _wait_archived(conn, name, timeout):
    deadline = time.monotonic() + timeout
    row = None
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT last_archived_wal, last_failed_wal, last_failed_time FROM pg_stat_archiver"
        ).fetchone()
        if row[0] and row[0] >= name:
            return
        time.sleep(0.2)
    raise BackupError(
        f"segment {name} was not archived within {timeout}s "
        f"(last archived {row[0]}, last failed {row[1]} at {row[2]}); "
        "the PostgreSQL log names the archive_command error"
    )


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            tool_dir={"type": "path", "required": True},
            tool_python={"type": "path", "default": "/usr/bin/python3"},
            archive_timeout={"type": "int", "default": 60},
            allow_restart={"type": "bool", "default": False},
            verify={"type": "bool", "default": True},
            check_locations={"type": "bool", "default": True},
            wait_timeout={"type": "int", "default": 60},
        ),
        supports_check_mode=True,
    )
    if not HAS_PSYCOPG:
        module.fail_json(msg=missing_required_lib("psycopg"))
    params = module.params
    result = {
        "changed": False,
        "settings": {},
        "changed_settings": [],
        "tool": os.path.join(params["tool_dir"], "kg-wal"),
        "archived_segment": None,
        "in_recovery": False,
        "locations": [],
        "queries": [],
    }
    try:
        cfg = config_from_params(params)
        result["locations"] = [loc.name for loc in cfg.locations]
        if not 1 <= params["archive_timeout"] <= 3600:
            raise BackupError("archive_timeout must be between 1 and 3600 seconds")
        try:
            grp.getgrgid(pwd.getpwnam(cfg.pg.os_user).pw_gid)
        except KeyError as err:
            raise BackupError(f"no OS user {cfg.pg.os_user!r} for PostgreSQL") from err
        if params["check_locations"]:
            _check_locations(cfg)
        conn = cfg.pg.connect()
        before = _current(conn)
        result["in_recovery"] = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        if before.get("archive_mode") == "off" and not params["allow_restart"]:
            raise BackupError(
                "archive_mode is off and switching it on needs a restart; "
                "run again with allow_restart=true in a maintenance window"
            )
        if module.check_mode:
            current = wal_tool.tool_is_current(cfg, params["tool_dir"], params["tool_python"])
            tool = {"changed": not current, **wal_tool.tool_commands(params["tool_dir"])}
        else:
            tool = wal_tool.install_tool(
                cfg, params["tool_dir"], python=params["tool_python"], owner=cfg.pg.os_user
            )
        result["tool"] = tool["tool"]
        desired = {
            "archive_mode": "on",
            "archive_command": tool["archive_command"],
            "restore_command": tool["restore_command"],
            "archive_timeout": str(params["archive_timeout"]),
        }
        changes = [k for k in SETTINGS if before.get(k) != desired[k]]
        result["changed_settings"] = changes
        result["changed"] = bool(changes) or tool["changed"]
        if module._diff:
            result["diff"] = postgres.settings_diff(before, desired, SETTINGS)
        if module.check_mode:
            result["settings"] = before
            module.exit_json(**result)
        result["queries"] += postgres.alter_system(conn, {k: desired[k] for k in changes})
        if "archive_mode" in changes:
            conn.close()
            _restart(module, cfg)
            conn = cfg.pg.connect()
        time.sleep(0.2 if changes else 0)
        result["settings"] = _current(conn)
        if params["verify"] and not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
            # A switch with no WAL since the last one does nothing and names the segment
            # before, archived under the old settings; a backup's .backup file then sorts after
            # it and passed for the proof. A commit record first makes the switch real.
            conn.execute("SELECT pg_current_xact_id()")
            result["queries"].append("SELECT pg_current_xact_id()")
            name = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
            result["queries"].append("SELECT pg_walfile_name(pg_switch_wal())")
            _wait_archived(conn, name, params["wait_timeout"])
            result["archived_segment"] = name
    except BackupError as err:
        module.fail_json(msg=str(err), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
