#!/usr/bin/python
# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: backup_verify
short_description: Prove PostgreSQL backups, in tiers, and record the result in the catalog
version_added: "0.2.0"
description:
  - C(integrity) checks every stored object of every copy against the backup's manifest,
    export manifest signatures, and WAL continuity from each backup's start to the newest
    archived segment, naming every gap.
  - C(freshness) judges the ages of the newest full, incremental and WAL against the policy and
    that every backup is in every required location.
  - C(restore) restores the newest backup (or C(label)) into a scratch cluster on a spare port,
    replays WAL to the end of the archive, runs pg_amcheck, checks a sentinel row written just
    before the test, removes the scratch cluster and reports the restore time as a measured RTO.
  - The task fails when a tier fails (unless C(fail_on_problem=false)); every tier's result is
    written to the catalog either way.
  - In check mode the restore tier (which starts a cluster) is skipped.
options:
  tiers:
    description: Tiers to run, in order.
    type: list
    elements: str
    choices: [integrity, freshness, restore]
    default: [integrity, freshness, restore]
  label:
    description: Backup to prove (default the newest).
    type: str
  scratch_dir:
    description: Where the scratch cluster lives during the restore test (must be reachable by
      the PostgreSQL OS user); default under the spool directory.
    type: path
  scratch_port:
    description: Spare port for the scratch cluster (default a free port the kernel picks).
    type: int
  sentinel:
    description: Write a sentinel row before the restore test and require it after replay.
    type: bool
    default: true
  fail_on_problem:
    description: Fail the task when any tier fails.
    type: bool
    default: true
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - knowngood.runbooks.backup
  - knowngood.runbooks.attributes
attributes:
  check_mode:
    support: partial
    details: The restore tier is skipped in check mode.
  diff_mode:
    support: none
author:
  - knowngood contributors (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Prove the newest backup by restoring it
  knowngood.runbooks.backup_verify:
    config: "{{ knowngood_backup }}"
    encryption_key: "{{ knowngood_backup_encryption_key }}"
    signing_key: "{{ knowngood_backup_signing_key }}"
    tiers: [integrity, freshness, restore]
  register: __backup_verify_result
"""

RETURN = r"""
ok:
  description: True when every tier that ran passed.
  returned: always
  type: bool
tiers:
  description: Result of each tier with its numbers (problems named by file, location, segment).
  returned: always
  type: dict
problems:
  description: One line per problem found, across tiers.
  returned: always
  type: list
  elements: str
rto_seconds:
  description: Measured restore time of the restore tier, null when it did not run.
  returned: always
  type: float
backup_id:
  description: Label of the backup the restore tier proved.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

# kg-wal's entry point: imported so that Ansible ships every source the restore test installs.
# pylint: disable-next=unused-import
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import tool  # noqa: F401
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (
    BackupError,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.module import (
    argument_spec,
    config_from_params,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.verify import verify
from ansible_collections.knowngood.runbooks.plugins.module_utils.progress import Progress

TIERS = ["integrity", "freshness", "restore"]


def _problems(tiers):
    lines = []
    for name, tier in tiers.items():
        if tier.get("ok") is False:
            found = tier.get("problems") or [tier.get("error") or "failed"]
            lines.extend(f"{name}: {p}" for p in found)
    return lines


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            tiers={"type": "list", "elements": "str", "choices": TIERS, "default": TIERS},
            label={"type": "str"},
            scratch_dir={"type": "path"},
            scratch_port={"type": "int"},
            sentinel={"type": "bool", "default": True},
            fail_on_problem={"type": "bool", "default": True},
        ),
        supports_check_mode=True,
    )
    params = module.params
    result = {"changed": False, "ok": False, "tiers": {}, "problems": [], "rto_seconds": None}
    result["backup_id"] = params["label"]
    try:
        cfg = config_from_params(params)
        tiers = [t for t in TIERS if t in params["tiers"]]
        if module.check_mode and "restore" in tiers:
            tiers.remove("restore")
            module.warn("check mode: the restore tier (it starts a scratch cluster) is skipped")
        outcome = verify(
            cfg,
            tiers=tuple(tiers),
            label=params["label"],
            scratch_dir=params["scratch_dir"],
            scratch_port=params["scratch_port"],
            sentinel=params["sentinel"],
            meter=Progress(params["progress_file"]),
        )
    except BackupError as err:
        module.fail_json(msg=str(err), **result)
    result["tiers"] = outcome.get("tiers", {})
    result["ok"] = bool(outcome.get("ok"))
    result["problems"] = _problems(result["tiers"])
    restore = result["tiers"].get("restore") or {}
    result["rto_seconds"] = restore.get("rto_seconds")
    result["backup_id"] = restore.get("label") or outcome.get("label") or params["label"]
    if not result["ok"] and params["fail_on_problem"]:
        module.fail_json(
            msg="backup verification failed: " + "; ".join(result["problems"]), **result
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
