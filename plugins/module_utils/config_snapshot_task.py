# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What knowngood.runbooks.config_snapshot does: its argument spec and its three states.

The module and its in-process action (plugins/action/config_snapshot.py) both call run() with
an object carrying params, check_mode and _diff (AnsibleModule, or the action's stand-in).
"""

import getpass
import os
import time

from ansible_collections.knowngood.runbooks.plugins.module_utils import config_snapshot as cs

ARGUMENT_SPEC = dict(
    state=dict(type="str", choices=["present", "known_good", "restored"], default="present"),
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
)


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


def run(module):
    """(failed, result) of one task."""
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
        result.update(msg=str(exc), duration_ms=int((time.time() - started) * 1000))
        return True, result
    result.update(msg=outcome(module, result), duration_ms=int((time.time() - started) * 1000))
    return False, result
