# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the release module does, independent of how it is invoked.

The module calls run() with its AnsibleModule; the release action plugin calls the same run()
in the controller's worker for hosts reached over the local connection (the controller is
then the host), which spares a Python interpreter per host on the rollback's critical path.
Anything that needs the outside world goes through the `module` object: params,
check_mode, run_command(argv), warn(msg).
"""

import json
import os
import shutil
import signal
import tarfile
import tempfile
import time

from ansible.module_utils.urls import open_url
from ansible_collections.knowngood.runbooks.plugins.module_utils.release import (
    Layout,
    ReleaseError,
    append_event,
    check_archive_members,
    describe,
    find,
    host_state,
    read_current,
    read_ledger,
    read_slot,
    summarize,
    swap_symlink,
    tree_checksum,
    validate_release_id,
)

ARGUMENT_SPEC = dict(
    root=dict(type="path", required=True),
    release_id=dict(type="str", required=True),
    state=dict(
        type="str",
        default="current",
        choices=[
            "present",
            "current",
            "staged",
            "known_good",
            "bad",
            "rolled_back",
        ],
    ),
    strategy=dict(type="str", default="symlink", choices=["symlink", "blue_green"]),
    pool=dict(type="str", choices=["blue", "green"]),
    src=dict(type="path"),
    source=dict(type="str"),
    require_status=dict(type="list", elements="str"),
    previous_status=dict(type="str", choices=["known-good", "bad", "rolled-back"]),
    expect_current=dict(type="str"),
    reload_pidfile=dict(type="path"),
    reload_signal=dict(type="str", default="HUP"),
    reload_command=dict(type="list", elements="str"),
    wait_url=dict(type="str"),
    wait_timeout=dict(type="float", default=10),
    keep_releases=dict(type="int", default=0),
    run_id=dict(type="str"),
    user=dict(type="str"),
    reason=dict(type="str"),
    ticket=dict(type="str"),
)

REQUIRED_IF = [
    ("state", "present", ("release_id", "src")),
    ("state", "current", ("release_id",)),
    ("state", "staged", ("release_id", "pool")),
    ("state", "known_good", ("release_id",)),
    ("state", "bad", ("release_id",)),
    ("state", "rolled_back", ("release_id",)),
]

MUTUALLY_EXCLUSIVE = [("reload_pidfile", "reload_command")]

VERDICTS = {"known_good": "known-good", "bad": "bad", "rolled_back": "rolled-back"}


def _event(params, release_id, status, **extra):
    event = {"release_id": release_id, "status": status}
    for key in ("run_id", "user", "reason", "ticket"):
        if params.get(key):
            event[key] = params[key]
    event.update({k: v for k, v in extra.items() if v is not None})
    return event


def _fill(template, pool):
    return template.replace("{pool}", pool or "default")


def _reload(module, pool):
    params = module.params
    if params["reload_command"]:
        argv = [_fill(arg, pool) for arg in params["reload_command"]]
        rc, _out, err = module.run_command(argv)
        if rc != 0:
            raise ReleaseError("reload command %s failed (rc=%d): %s" % (argv, rc, err.strip()))
        return "ran %s" % " ".join(argv)
    if params["reload_pidfile"]:
        pidfile = _fill(params["reload_pidfile"], pool)
        try:
            with open(pidfile) as handle:
                pid = int(handle.read().strip())
        except (OSError, ValueError) as exc:
            raise ReleaseError("cannot read pid from %s: %s" % (pidfile, exc)) from exc
        signum = getattr(signal, "SIG" + params["reload_signal"].upper().replace("SIG", ""))
        try:
            os.kill(pid, signum)
        except OSError as exc:
            raise ReleaseError("cannot signal pid %d from %s: %s" % (pid, pidfile, exc)) from exc
        return "sent SIG%s to pid %d" % (params["reload_signal"].upper(), pid)
    return None


def _serves(url, release_id):
    try:
        response = open_url(url, timeout=2, validate_certs=False)
        body = response.read().decode("utf-8", "replace")
    except Exception:
        return False
    try:
        return json.loads(body).get("release") == release_id
    except (ValueError, AttributeError):
        return release_id in body


def _wait_serving(module, pool, release_id):
    url = module.params["wait_url"]
    if not url:
        return None
    url = _fill(url, pool)
    deadline = time.time() + module.params["wait_timeout"]
    while True:
        if _serves(url, release_id):
            return "%s serves %s" % (url, release_id)
        if time.time() > deadline:
            raise ReleaseError(
                "%s did not serve %s within %ss after the switch"
                % (url, release_id, module.params["wait_timeout"])
            )
        time.sleep(0.02)


def _require_known(summary, release_id, allowed):
    entry = find(summary, release_id)
    if entry is None:
        raise ReleaseError(
            "release %s is not in the ledger: register it first (state=present); "
            "known releases: %s"
            % (release_id, ", ".join(r["release_id"] for r in summary) or "none")
        )
    if allowed and entry["status"] not in allowed:
        raise ReleaseError(
            "release %s has status %s, refusing (allowed: %s)"
            % (release_id, entry["status"], ", ".join(allowed))
        )
    return entry


def _check_artifact(src):
    if not src or not os.path.exists(src):
        raise ReleaseError("src %r does not exist" % (src,))
    if os.path.isdir(src):
        return
    try:
        with tarfile.open(src) as archive:
            check_archive_members(archive.getmembers(), src)
    except tarfile.TarError as exc:
        raise ReleaseError("artifact %s is not a readable tar archive: %s" % (src, exc)) from exc


def _unpack(src, tree):
    """Every member checked against the release first (check_archive_members), then unpacked
    into the empty staging tree; tarfile's data filter checks again where Python has it."""
    try:
        with tarfile.open(src) as archive:
            members = archive.getmembers()
            check_archive_members(members, src)
            os.mkdir(tree, 0o755)
            if hasattr(tarfile, "data_filter"):
                archive.extractall(tree, members=members, filter="data")
            else:
                archive.extractall(tree, members=members)
    except tarfile.TarError as exc:  # unreadable, or refused by the data filter
        raise ReleaseError("artifact %s cannot be unpacked safely: %s" % (src, exc)) from exc


def _install(module, layout, release_id):
    """Unpack src into releases/<id> through a temporary directory and a rename."""
    src = module.params["src"]
    if not src or not os.path.exists(src):
        raise ReleaseError("src %r does not exist" % (src,))
    if not os.path.isdir(layout.releases):
        os.makedirs(layout.releases, 0o755)
    staging = tempfile.mkdtemp(prefix=".incoming-%s-" % release_id, dir=layout.releases)
    try:
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(staging, "tree"), symlinks=True)
        else:
            _unpack(src, os.path.join(staging, "tree"))
        os.rename(os.path.join(staging, "tree"), layout.release_dir(release_id))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _prune(layout, state, keep):
    if not keep:
        return []
    protected = {state["current"], state["last_known_good"]}
    protected.update(v for v in state["slots"].values() if v)
    order = {r["release_id"]: i for i, r in enumerate(state["releases"])}
    candidates = sorted(
        (rid for rid in state["installed"] if rid not in protected),
        key=lambda rid: order.get(rid, -1),
    )
    excess = len(state["installed"]) - keep
    removed = []
    for rid in candidates:
        if excess <= 0:
            break
        shutil.rmtree(layout.release_dir(rid))
        removed.append(rid)
        excess -= 1
    return removed


class Plan:
    """What a call would do; computed from read-only helpers so check mode is exact."""

    def __init__(self):
        self.actions = []
        self.events = []
        self.switch = None  # (link_path, link_target, pool_to_reload)
        self.install = False
        self.before = {}
        self.after = {}


def plan_call(module, layout):
    params = module.params
    state = params["state"]
    plan = Plan()
    current, live_pool = read_current(layout)
    plan.before = {"current": current, "live_pool": live_pool}
    plan.after = dict(plan.before)

    release_id = validate_release_id(params["release_id"])
    summary = summarize(read_ledger(layout))
    entry = find(summary, release_id)

    if state == "present":
        exists = os.path.isdir(layout.release_dir(release_id))
        if not exists:
            _check_artifact(params["src"])  # check mode refuses an unsafe artifact as well
            plan.install = True
            plan.actions.append("install %s from %s" % (release_id, params["src"]))
        elif entry and entry.get("checksum"):
            actual = tree_checksum(layout.release_dir(release_id))
            if actual != entry["checksum"]:
                raise ReleaseError(
                    "release %s on disk (%s) differs from the ledger (%s): refusing to "
                    "re-register changed content under the same id"
                    % (release_id, actual, entry["checksum"])
                )
        if entry is None:
            plan.events.append(_event(params, release_id, "registered", source=params["source"]))
            plan.actions.append("register %s" % release_id)
        return plan, current, live_pool

    if state in VERDICTS:
        _require_known(summary, release_id, None)
        if entry["status"] != VERDICTS[state]:
            plan.events.append(_event(params, release_id, VERDICTS[state]))
            plan.actions.append("mark %s %s" % (release_id, VERDICTS[state]))
        return plan, current, live_pool

    _require_known(summary, release_id, params["require_status"])
    if not os.path.isdir(layout.release_dir(release_id)):
        raise ReleaseError(
            "release %s is in the ledger but not unpacked under %s" % (release_id, layout.releases)
        )
    target = os.path.join("..", "releases", release_id)

    if state == "staged":
        pool = params["pool"]
        if not pool:
            raise ReleaseError("state=staged needs pool")
        if pool == live_pool:
            raise ReleaseError("pool %s is live: stage into the idle pool" % pool)
        if read_slot(layout, pool) != release_id:
            plan.switch = (layout.slot(pool), target, pool)
            plan.actions.append("stage %s into pool %s" % (release_id, pool))
        return plan, current, live_pool

    # state == current
    if params["expect_current"] and current != params["expect_current"]:
        raise ReleaseError(
            "expected %s to be live but %s is: another change happened, re-plan"
            % (params["expect_current"], current)
        )
    if params["strategy"] == "blue_green":
        pool = params["pool"]
        if not pool:
            raise ReleaseError("strategy=blue_green needs pool (the pool to make live)")
        if read_slot(layout, pool) != release_id:
            raise ReleaseError(
                "pool %s serves %s, not %s: stage it first"
                % (pool, read_slot(layout, pool), release_id)
            )
        if live_pool != pool:
            plan.switch = (layout.current, os.path.join("slots", pool), None)
            plan.actions.append("point current at pool %s (%s)" % (pool, release_id))
        plan.after = {"current": release_id, "live_pool": pool}
    else:
        if current != release_id:
            if live_pool:
                plan.switch = (layout.slot(live_pool), target, live_pool)
            else:
                plan.switch = (layout.current, os.path.join("releases", release_id), "default")
            plan.actions.append("switch %s -> %s" % (current, release_id))
        plan.after = {"current": release_id, "live_pool": live_pool}
    if current != release_id:
        plan.events.append(
            _event(params, release_id, "deployed", previous=current, strategy=params["strategy"])
        )
        if current and params["previous_status"]:
            plan.events.append(
                _event(params, current, params["previous_status"], replaced_by=release_id)
            )
    return plan, current, live_pool


def apply_plan(module, layout, plan):
    params = module.params
    result = {"switched_at": None, "removed_releases": []}
    if plan.install:
        _install(module, layout, params["release_id"])
        checksum = tree_checksum(layout.release_dir(params["release_id"]))
        for event in plan.events:
            if event["status"] == "registered":
                event["checksum"] = checksum
    if plan.switch:
        link, target, pool = plan.switch
        if not os.path.isdir(os.path.dirname(link)):
            os.makedirs(os.path.dirname(link), 0o755)
        swap_symlink(link, target)
        result["switched_at"] = time.time()
        if pool:
            done = _reload(module, pool)
            if done:
                plan.actions.append(done)
            done = _wait_serving(module, pool, params["release_id"])
            if done:
                plan.actions.append(done)
    for event in plan.events:
        append_event(layout, event)
    if params["state"] in ("present", "current") and params["keep_releases"]:
        result["removed_releases"] = _prune(layout, host_state(layout), params["keep_releases"])
    result["changed"] = bool(
        plan.install or plan.switch or plan.events or result["removed_releases"]
    )
    return result


def run(module):
    """Plan, then apply unless in check mode. Returns (failed, result)."""
    started = time.time()
    try:
        layout = Layout(module.params["root"])
        plan, current, _live_pool = plan_call(module, layout)
        result = {"changed": bool(plan.install or plan.switch or plan.events)}
        if not module.check_mode:
            result.update(apply_plan(module, layout, plan))
        else:
            result.update({"switched_at": None, "removed_releases": []})
    except (ReleaseError, OSError) as exc:
        return True, {
            "msg": str(exc),
            "release_id": module.params["release_id"],
            "duration_ms": int((time.time() - started) * 1000),
        }
    live = plan.before if module.check_mode else plan.after
    result.update(
        release_id=module.params["release_id"],
        previous_release_id=current,
        live_release_id=live["current"],
        live_pool=live["live_pool"],
        events=plan.events,
        actions=plan.actions,
        duration_ms=int((time.time() - started) * 1000),
        diff={"before": plan.before, "after": plan.after},
    )
    return False, result


INFO_ARGUMENT_SPEC = dict(
    root=dict(type="path", required=True),
    release_id=dict(type="str"),
)


def info(params):
    """What knowngood.runbooks.release_info reports: (failed, result), nothing changed."""
    try:
        state = describe(params["root"], params["release_id"])
    except (ReleaseError, OSError) as exc:
        return True, {"msg": str(exc)}
    return False, dict(state, changed=False)
