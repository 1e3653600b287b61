#!/usr/bin/python
# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: config_snapshot
short_description: Versioned, content-addressed snapshots of a host's configuration, and revert
version_added: "0.1.0"
description:
  - Keeps a content-addressed store per host (I(store)) of the managed configuration declared
    by I(services) - file contents by sha256, and a manifest per snapshot with paths, hashes,
    modes, owners, who, when, run id, label, host and service set. The snapshot id is the hash
    of the manifest.
  - C(state=present) snapshots the live configuration (an unchanged configuration returns the
    newest snapshot with the same content, C(changed=false)).
  - C(state=known_good) records I(snapshot_id) (default, the live configuration) as verified.
  - C(state=restored) makes the live files equal to I(snapshot_id) (default, the last known
    good) - it takes a safety snapshot of what is live, writes only the changed tracked files
    atomically, runs each affected service's validate command against the files in place
    (under the store's lock; neither nginx nor PostgreSQL read their files before a reload),
    puts the previous files back if validation fails, and with I(activate) reloads or restarts
    only the services whose files changed, putting the previous files back and reactivating if
    that fails.
  - Refused with nothing changed, each with its own message - an unknown snapshot id, a snapshot
    of another host or another service set, a managed path with C(..), a symlink that leaves
    the managed set, a file that is not UTF-8 text.
  - Check mode and diff mode show the change with secret values masked.
options:
  state:
    description: End state.
    type: str
    choices: [present, known_good, restored]
    default: present
  store:
    description: Directory of this host's snapshot store (created 0700).
    type: path
    required: true
  host:
    description: Identity of this host (the inventory name), recorded and checked on revert.
    type: str
    required: true
  services:
    description:
      - The managed set. Each item has C(name), C(paths) (absolute files or directories),
        C(validate), C(reload), C(restart) (argv lists), C(restart_on) (C(never), C(always), or
        C(postgresql) - restart only when a changed parameter has C(pg_settings.context =
        'postmaster'), looked up through C(dsn)).
    type: list
    elements: dict
    required: true
  snapshot_id:
    description: Snapshot to mark or restore.
    type: str
  limit:
    description: With C(restored), only these services' files are reverted.
    type: list
    elements: str
  activate:
    description: With C(restored), reload or restart the affected services after writing.
    type: bool
    default: true
  safety_snapshot:
    description: With C(restored), snapshot the live configuration before writing.
    type: bool
    default: true
  label:
    description: Label recorded in the snapshot.
    type: str
    default: ""
  kind:
    description: Why the snapshot was taken (C(manual), C(safety), C(pre-change), C(post-change)).
    type: str
    default: manual
  run_id:
    description: Run id recorded; defaults to the environment's C(KNOWNGOOD_RUN_ID).
    type: str
  who:
    description: Who asked, recorded.
    type: str
  reason:
    description: Why, recorded with a known-good mark.
    type: str
    default: ""
  git_repo:
    description: Also commit every new snapshot (secrets masked) into this git repository.
    type: path
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - knowngood.runbooks.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
requirements:
  - psycopg (only for C(restart_on=postgresql))
author:
  - knowngood contributors (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Snapshot the managed configuration before a change
  knowngood.runbooks.config_snapshot:
    state: present
    store: /var/lib/knowngood/config
    host: "{{ inventory_hostname }}"
    services: "{{ knowngood_config_services }}"
    label: before deploy
    kind: pre-change

- name: Revert nginx to the last known good configuration
  knowngood.runbooks.config_snapshot:
    state: restored
    store: /var/lib/knowngood/config
    host: "{{ inventory_hostname }}"
    services: "{{ knowngood_config_services }}"
    limit: [nginx]
"""

RETURN = r"""
snapshot_id:
  description: The snapshot taken, marked or restored.
  returned: always
  type: str
safety_snapshot_id:
  description: With C(restored), the snapshot of what was live before; null otherwise.
  returned: always
  type: str
changes:
  description: Tracked files that differ (or differed) from the target, and how.
  returned: always
  type: list
  elements: dict
untracked:
  description: Files under managed directories that the target does not track (never touched).
  returned: always
  type: list
  elements: str
services:
  description: Per affected service, C(action) (reload or restart), C(command),
    C(restart_params), C(why) and C(files).
  returned: always
  type: list
  elements: dict
log:
  description: What was done, in order.
  returned: always
  type: list
  elements: str
msg:
  description: One line saying what was (or in check mode would be) done, for run summaries.
  returned: success
  type: str
  sample: "restored 3f9c0e1d2a4b5c6d: nginx.conf written and validated; next: reload nginx"
duration_ms:
  description: Wall time in milliseconds.
  returned: always
  type: int
"""

from ansible_collections.knowngood.runbooks.plugins.module_utils import module_main
from ansible_collections.knowngood.runbooks.plugins.module_utils.config_snapshot_task import (
    ARGUMENT_SPEC,
    run,
)


def main():
    module_main.main(run, ARGUMENT_SPEC)


if __name__ == "__main__":
    main()
