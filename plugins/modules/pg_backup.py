#!/usr/bin/python
# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: pg_backup
short_description: Take a PostgreSQL backup to every location, or expire old ones
version_added: "0.2.0"
description:
  - C(state=present) takes a full or incremental backup with the configured engine and stores
    it in every location; the catalog entry is written last, so a crash never leaves a backup
    that looks valid.
  - A location that is down is retried with backoff, then reported in C(incomplete_locations);
    the backup completes in the others. Use C(require_all_locations) to fail the task then.
  - C(state=expired) applies the retention policy across all locations; it refuses while no
    backup is verified, never expires the newest verified backup, its chain or anything newer
    (so it can run right after a backup nothing verified yet), and never expires what the
    recovery window needs.
options:
  state:
    description: C(present) takes a backup; C(expired) applies retention.
    type: str
    choices: [present, expired]
    default: present
  backup_type:
    description: Full or incremental (the files changed since the previous backup).
    type: str
    choices: [full, incremental]
    default: full
  fallback_full:
    description: Take a full backup when an incremental has no full to build on.
    type: bool
    default: false
  label:
    description:
      - Label for the new backup (default one from the time and type).
      - When a committed backup with this label exists nothing is taken, so re-runs converge.
    type: str
  require_all_locations:
    description: Fail when any location did not receive the backup.
    type: bool
    default: false
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - knowngood.runbooks.backup
  - knowngood.runbooks.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
author:
  - knowngood contributors (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Take the hourly incremental backup
  knowngood.runbooks.pg_backup:
    config: "{{ knowngood_backup }}"
    encryption_key: "{{ knowngood_backup_encryption_key }}"
    backup_type: incremental
  register: __backup_take_result

- name: Expire what the retention policy no longer needs
  knowngood.runbooks.pg_backup:
    config: "{{ knowngood_backup }}"
    encryption_key: "{{ knowngood_backup_encryption_key }}"
    state: expired
"""

RETURN = r"""
backup_id:
  description: Label of the backup taken (or found), null for C(state=expired).
  returned: always
  type: str
backup:
  description: Catalog entry of the backup (type, parent, LSNs, times, timeline, sizes, locations).
  returned: always
  type: dict
incomplete_locations:
  description: Locations that did not receive the backup, with the error each gave.
  returned: always
  type: dict
expired:
  description: Labels expired (C(state=expired); in check mode, the ones that would be).
  returned: always
  type: list
  elements: str
kept:
  description: Labels retention keeps, with the reason in C(reasons).
  returned: always
  type: list
  elements: str
reasons:
  description: Why each backup is kept or expired.
  returned: always
  type: dict
duration_s:
  description: Seconds the task took.
  returned: always
  type: float
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import (
    engine as backup_engine,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.catalog import (
    Catalog,
    expire,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (
    BackupError,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.module import (
    argument_spec,
    config_from_params,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.store import (
    open_locations,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils.progress import Progress


def _present(module, cfg, result):
    params = module.params
    catalog = Catalog(cfg)
    if params["label"]:
        existing = catalog.get(params["label"])
        if existing:
            result.update(backup_id=existing["label"], backup=existing)
            return
    no_parent = params["backup_type"] == "incremental" and not catalog.newest("full")
    if no_parent and not params["fallback_full"]:
        raise BackupError(
            "no full backup in the catalog to build an incremental on; take a full backup "
            "first (backup_type=full) or set fallback_full"
        )
    if module.check_mode:
        result["changed"] = True
        return
    entry = backup_engine.take_backup(
        cfg,
        params["backup_type"],
        label=params["label"],
        fallback_full=params["fallback_full"],
        meter=Progress(params["progress_file"]),
    )
    result.update(changed=True, backup_id=entry["label"], backup=entry)
    result["incomplete_locations"] = {
        name: copy.get("error") or copy.get("status")
        for name, copy in (entry.get("locations") or {}).items()
        if copy.get("status") != "ok"
    }
    if result["incomplete_locations"] and params["require_all_locations"]:
        raise BackupError(
            f"backup {entry['label']} is missing from "
            f"{sorted(result['incomplete_locations'])}: {result['incomplete_locations']}"
        )
    for name, error in result["incomplete_locations"].items():
        module.warn(f"backup {entry['label']} did not reach location {name}: {error}")


def _expired(module, cfg, result):
    catalog = Catalog(cfg)
    plan = catalog.retention_plan()
    result.update(kept=plan["keep"], expired=plan["expire"], reasons=plan["reasons"])
    if not plan["expire"] or module.check_mode:
        result["changed"] = bool(plan["expire"])
        return
    done = expire(cfg, plan, open_locations(cfg))
    result.update(changed=True, expired=done.get("expired", plan["expire"]))
    for note in done.get("warnings", []):
        module.warn(note)


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            state={"type": "str", "choices": ["present", "expired"], "default": "present"},
            backup_type={"type": "str", "choices": ["full", "incremental"], "default": "full"},
            fallback_full={"type": "bool", "default": False},
            label={"type": "str"},
            require_all_locations={"type": "bool", "default": False},
        ),
        supports_check_mode=True,
    )
    started = time.monotonic()
    result = {
        "changed": False,
        "backup_id": None,
        "backup": {},
        "incomplete_locations": {},
        "expired": [],
        "kept": [],
        "reasons": {},
    }
    try:
        cfg = config_from_params(module.params)
        if module.params["state"] == "present":
            _present(module, cfg, result)
        else:
            _expired(module, cfg, result)
    except BackupError as err:
        result["duration_s"] = round(time.monotonic() - started, 3)
        module.fail_json(msg=str(err), **result)
    result["duration_s"] = round(time.monotonic() - started, 3)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
