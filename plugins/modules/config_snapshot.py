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

import getpass
import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.knowngood.runbooks.plugins.module_utils import config_snapshot as cs


def present(module, store, services, result):
    params = module.params
    if module.check_mode:
        found = cs.collect(services)
        entries = [entry for entry, _data in found]
        content_id = cs.content_of(
            {"host": params["host"], "set": cs.service_set(services), "files": entries}
        )
        same = [
            sid
            for sid in store.snapshot_ids()
            if store.read_manifest(sid).get("content_id") == content_id
        ]
        result["snapshot_id"] = same[-1] if same else None
        result["changed"] = not same
        return
    with store.lock():
        doc, created = cs.take(
            store,
            services,
            params["host"],
            params["label"],
            params["run_id"],
            params["who"],
            params["kind"],
        )
        if created and params["git_repo"]:
            cs.git_mirror(params["git_repo"], doc, cs.collect(services), result["log"])
    result["snapshot_id"] = doc["snapshot_id"]
    result["changed"] = created
    result["log"].append(("took" if created else "unchanged since") + " " + doc["snapshot_id"])


def known_good(module, store, services, result):
    params = module.params
    sid = params["snapshot_id"]
    if not sid:
        present(module, store, services, result)
        sid = result["snapshot_id"]
        if sid is None:  # check mode, and the live configuration was never snapshotted
            result["changed"] = True
            return
    manifest = store.read_manifest(sid)
    cs.check_target(manifest, services, params["host"])
    result["snapshot_id"] = sid
    if store.last_known_good() == sid:
        return
    result["changed"] = True
    if not module.check_mode:
        store.mark_known_good(sid, params["run_id"], params["who"], params["reason"])
        result["log"].append("marked %s known-good" % sid)


def restored(module, store, services, result):
    params = module.params
    sid = params["snapshot_id"] or store.last_known_good()
    if not sid:
        raise cs.ConfigError("no known-good snapshot in %s: name one with snapshot_id" % store.root)
    manifest = store.read_manifest(sid)
    cs.check_target(manifest, services, params["host"])
    result["snapshot_id"] = sid
    changes, untracked = cs.plan(store, manifest, services, params["limit"])
    result["changes"] = cs.summary(changes)
    result["untracked"] = untracked
    if not changes:
        return
    result["changed"] = True
    result["services"] = cs.actions(services, changes)
    if module._diff:
        result["diff"] = cs.diffs(changes)
    if module.check_mode:
        return
    with store.lock():
        if params["safety_snapshot"]:
            safety, _created = cs.take(
                store,
                services,
                params["host"],
                "before restoring %s" % sid,
                params["run_id"],
                params["who"],
                "safety",
            )
            result["safety_snapshot_id"] = safety["snapshot_id"]
            result["log"].append("safety snapshot %s" % safety["snapshot_id"])
        # Re-plan under the lock: the live files are what the swap must put back on failure.
        changes, untracked = cs.plan(store, manifest, services, params["limit"])
        try:
            cs.swap_in(services, changes, result["log"])
        except cs.ConfigError:
            result["changed"] = False
            raise
        if not params["activate"]:
            return
        failure = cs.activate(result["services"], result["log"])
        if failure:
            cs.undo(changes, result["log"])
            again = cs.activate(result["services"], result["log"])
            raise cs.ConfigError(
                "%s; the previous configuration was put back%s"
                % (failure, "" if again is None else " but reactivating it failed too: " + again)
            )


def outcome(module, result):
    """One line for the run summary and the audit record, which keep msg but not log."""
    params = module.params
    sid = result["snapshot_id"] or "(none yet)"
    if params["state"] == "present":
        if not result["changed"]:
            return "unchanged since snapshot %s" % sid
        what = "%s: %s" % (params["kind"], params["label"]) if params["label"] else params["kind"]
        if module.check_mode:
            return "would take a new snapshot (%s)" % what
        return "took snapshot %s (%s)" % (sid, what)
    if params["state"] == "known_good":
        if not result["changed"]:
            return "%s is already the last known good" % sid
        return ("would mark %s known-good" if module.check_mode else "marked %s known-good") % sid
    if not result["changed"]:
        return "already at snapshot %s, nothing to restore" % sid
    files = ", ".join(os.path.basename(c["path"]) for c in result["changes"])
    acts = ", ".join("%s %s" % (a["action"], a["service"]) for a in result["services"])
    if module.check_mode:
        return "would restore %s: %s; then %s" % (sid, files, acts)
    if params["activate"]:
        return "restored %s: %s; %s done" % (sid, files, acts)
    return "restored %s: %s written and validated; next: %s" % (sid, files, acts)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(
                type="str", choices=["present", "known_good", "restored"], default="present"
            ),
            store=dict(type="path", required=True),
            host=dict(type="str", required=True),
            services=dict(type="list", elements="dict", required=True),
            snapshot_id=dict(type="str"),
            limit=dict(type="list", elements="str"),
            activate=dict(type="bool", default=True),
            safety_snapshot=dict(type="bool", default=True),
            label=dict(type="str", default=""),
            kind=dict(type="str", default="manual"),
            run_id=dict(type="str"),
            who=dict(type="str"),
            reason=dict(type="str", default=""),
            git_repo=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    started = time.time()
    params = module.params
    params["run_id"] = params["run_id"] or os.environ.get("KNOWNGOOD_RUN_ID", "")
    params["who"] = params["who"] or os.environ.get("KNOWNGOOD_USER") or getpass.getuser()
    result = dict(
        changed=False,
        snapshot_id=None,
        safety_snapshot_id=None,
        changes=[],
        untracked=[],
        services=[],
        log=[],
    )
    try:
        services = cs.normalize_services(params["services"])
        store = cs.Store(params["store"])
        handler = {"present": present, "known_good": known_good, "restored": restored}
        handler[params["state"]](module, store, services, result)
    except (cs.ConfigError, OSError, ValueError) as exc:
        result.pop("diff", None)
        module.fail_json(msg=str(exc), duration_ms=int((time.time() - started) * 1000), **result)
    module.exit_json(
        msg=outcome(module, result), duration_ms=int((time.time() - started) * 1000), **result
    )


if __name__ == "__main__":
    main()
