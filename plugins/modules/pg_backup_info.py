#!/usr/bin/python
# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: pg_backup_info
short_description: Read the backup catalog of a PostgreSQL cluster
version_added: "0.2.0"
description:
  - Every backup with label, type, parent, start and stop LSN and time, timeline, size,
    checksums, the locations holding a committed copy, and the last verification result.
  - With C(refresh=true) the locations are listed first, so the answer says which copies
    really exist now (a location that cannot be reached is reported, not skipped).
options:
  label:
    description: Return only this backup (and fail if it is unknown).
    type: str
  refresh:
    description: Reconcile the catalog with what every location holds before answering.
    type: bool
    default: false
  check_locations:
    description: Probe every location (reachable, writable, credentials, encryption key) and
      report each in C(location_status).
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
- name: Read the catalog, checking every location
  knowngood.runbooks.pg_backup_info:
    config: "{{ knowngood_backup }}"
    encryption_key: "{{ knowngood_backup_encryption_key }}"
    refresh: true
  register: __backup_catalog
"""

RETURN = r"""
backups:
  description: Catalog entries, oldest first.
  returned: always
  type: list
  elements: dict
newest:
  description: Label of the newest backup of each type (C(full), C(incremental), C(any)).
  returned: always
  type: dict
unreachable_locations:
  description: Locations that could not be listed during a refresh, with the error.
  returned: always
  type: dict
location_status:
  description: With C(check_locations), each location's C(ok), C(error) and C(unavailable)
    (down or timing out, as opposed to misconfigured).
  returned: always
  type: dict
config:
  description: The configuration in force, secrets masked.
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.catalog import Catalog
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (
    BackupError,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.module import (
    argument_spec,
    config_from_params,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.store import (
    open_locations,
    probe_locations,
)


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            label={"type": "str"},
            refresh={"type": "bool", "default": False},
            check_locations={"type": "bool", "default": False},
        ),
        supports_check_mode=True,
    )
    result = {
        "changed": False,
        "backups": [],
        "newest": {},
        "unreachable_locations": {},
        "location_status": {},
    }
    try:
        cfg = config_from_params(module.params)
        result["config"] = cfg.public()
        catalog = Catalog(cfg)
        if module.params["check_locations"]:
            result["location_status"] = probe_locations(cfg)
        if module.params["refresh"]:
            refreshed = catalog.refresh(open_locations(cfg)) or {}
            result["unreachable_locations"] = refreshed.get("unreachable", {})
        entries = catalog.entries()
        label = module.params["label"]
        if label:
            entries = [e for e in entries if e.get("label") == label]
            if not entries:
                raise BackupError(f"no backup labelled {label!r} in the catalog")
        result["backups"] = entries
        for kind in ("full", "incremental"):
            newest = catalog.newest(kind)
            result["newest"][kind] = newest["label"] if newest else None
        newest_any = catalog.newest()
        result["newest"]["any"] = newest_any["label"] if newest_any else None
    except BackupError as err:
        module.fail_json(msg=str(err), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
