#!/usr/bin/python
# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: config_snapshot_info
short_description: Read a host's configuration snapshots and plan a revert without changing anything
version_added: "0.1.0"
description:
  - Lists the snapshots in I(store), the last known good, and - for I(snapshot_id) (default,
    the last known good) - the tracked files that differ from the live ones, the services that
    would be reloaded or restarted (with the PostgreSQL parameters that force a restart), and a
    unified diff with secret values masked.
  - Fails with a clear message, before anything changes, for an unknown snapshot, a snapshot of
    another host or service set, a managed path with C(..), a symlink that leaves the managed
    set and a file that is not UTF-8 text.
options:
  store:
    description: Directory of this host's snapshot store.
    type: path
    required: true
  host:
    description: Identity of this host (the inventory name).
    type: str
    required: true
  services:
    description: The managed set (see M(knowngood.runbooks.config_snapshot)).
    type: list
    elements: dict
    required: true
  snapshot_id:
    description: Snapshot to plan a revert to; empty means the last known good.
    type: str
    default: ""
  limit:
    description: Only these services.
    type: list
    elements: str
  require_target:
    description: Fail when there is no target (no I(snapshot_id) and no known good).
    type: bool
    default: true
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - knowngood.runbooks.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
requirements:
  - psycopg (only for C(restart_on=postgresql))
author:
  - knowngood contributors (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Plan the revert to the last known good configuration
  knowngood.runbooks.config_snapshot_info:
    store: /var/lib/knowngood/config
    host: "{{ inventory_hostname }}"
    services: "{{ knowngood_config_services }}"
  register: plan
"""

RETURN = r"""
snapshots:
  description: Snapshots, oldest first (id, when, label, kind, run_id, who, known_good).
  returned: always
  type: list
  elements: dict
last_known_good:
  description: Id of the last snapshot marked known-good, or null.
  returned: always
  type: str
snapshot_id:
  description: The target planned against, or null.
  returned: always
  type: str
changes:
  description: Tracked files that differ from the target, and how.
  returned: always
  type: list
  elements: dict
untracked:
  description: Files under managed directories the target does not track (never touched).
  returned: always
  type: list
  elements: str
services:
  description: Services a revert would reload or restart, with C(restart_params) and C(why).
  returned: always
  type: list
  elements: dict
diff:
  description: Unified diff of the revert, secret values masked.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.knowngood.runbooks.plugins.module_utils import config_snapshot as cs


def listing(store):
    marked = {event["snapshot_id"] for event in store.known_good()}
    out = []
    for sid in store.snapshot_ids():
        doc = store.read_manifest(sid)
        out.append(
            {
                "snapshot_id": sid,
                "when": doc.get("when"),
                "label": doc.get("label"),
                "kind": doc.get("kind"),
                "run_id": doc.get("run_id"),
                "who": doc.get("who"),
                "files": len(doc.get("files", [])),
                "known_good": sid in marked,
            }
        )
    return out


def main():
    module = AnsibleModule(
        argument_spec=dict(
            store=dict(type="path", required=True),
            host=dict(type="str", required=True),
            services=dict(type="list", elements="dict", required=True),
            snapshot_id=dict(type="str", default=""),
            limit=dict(type="list", elements="str"),
            require_target=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    params = module.params
    result = dict(
        changed=False,
        snapshots=[],
        last_known_good=None,
        snapshot_id=None,
        changes=[],
        untracked=[],
        services=[],
        diff="",
    )
    try:
        services = cs.normalize_services(params["services"])
        store = cs.Store(params["store"])
        # Walk the live set even with no target: a bad path or file is refused up front.
        cs.collect(services)
        result["snapshots"] = listing(store)
        result["last_known_good"] = store.last_known_good()
        sid = params["snapshot_id"] or result["last_known_good"]
        if not sid:
            if params["require_target"]:
                raise cs.ConfigError(
                    "no known-good snapshot in %s: name one with config_snapshot_id" % store.root
                )
            module.exit_json(**result)
        manifest = store.read_manifest(sid)
        cs.check_target(manifest, services, params["host"])
        changes, untracked = cs.plan(store, manifest, services, params["limit"])
        result.update(
            snapshot_id=sid,
            changes=cs.summary(changes),
            untracked=untracked,
            services=cs.actions(services, changes),
            diff=cs.unified(changes),
        )
    except (cs.ConfigError, OSError, ValueError) as exc:
        module.fail_json(msg=str(exc), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
