# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host run lock: one file per host that every destructive runbook takes before its first
change, so two of them (a rollback-config and a rollback-database, a deploy and a code
rollback) never change the same host at the same time.

Where it lives does not depend on the runbook: ``lock_path(hostvars)`` derives it from the
inventory contract (app hosts: ``<knowngood_app_root>/.knowngood/lock``, the deploy root's
state directory; every other host: ``<knowngood_config_store>/run.lock``; or
``knowngood_run_lock_file`` when set).

The file is a JSON owner record (run id, runbook, controller pid and host, user, host, since),
written whole to a temporary file and hard-linked into place, so it is never torn and only one
of two racing runs can create it. A held lock refuses, naming its holder. A holder whose
controller pid is gone, on this same controller, is stale: it is moved aside and taken, with a
warning. Every read-decide-write (take, take over, give back) runs under an flock of a guard
file beside the lock, so of any number of runs racing for a stale lock exactly one takes it;
the kernel drops the guard with a killed process, so the guard itself is never stale. A holder
that cannot be checked from here stays held, also past the maximum age, which only changes the
refusal's advice: break it deliberately by naming the holder's run id (``break_lock``), never
by a blanket force.
"""

import contextlib
import errno
import fcntl
import json
import os
import socket
import time

DEFAULT_CONFIG_STORE = "/var/lib/knowngood/config"


class LockError(Exception):
    """Raised with a message naming the holder; ``holder`` is its record when there is one."""

    def __init__(self, message, holder=None):
        super().__init__(message)
        self.holder = holder


def lock_path(hostvars):
    """The host's one lock file, from its inventory variables (a mapping)."""
    explicit = hostvars.get("knowngood_run_lock_file")
    if explicit:
        return str(explicit)
    app_root = hostvars.get("knowngood_app_root")
    if app_root:
        return os.path.join(str(app_root), ".knowngood", "lock")
    store = hostvars.get("knowngood_config_store") or DEFAULT_CONFIG_STORE
    return os.path.join(str(store), "run.lock")


def now_iso(epoch=None):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if epoch is None else epoch))


def pid_alive(pid):
    try:
        os.kill(int(pid), 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    except (TypeError, ValueError):
        return False
    return True


def owner_record(run_id, runbook, controller_pid, controller_host, user, host, created=None):
    created = time.time() if created is None else created
    return {
        "run_id": run_id,
        "runbook": runbook or "unknown",
        "controller_pid": int(controller_pid) if controller_pid else None,
        "controller_host": controller_host or socket.gethostname(),
        "user": user or "unknown",
        "host": host or socket.gethostname(),
        "created": created,
        "since": now_iso(created),
    }


def describe(holder):
    """One line naming a holder: runbook, run id, controller pid and host, user, host, since."""
    if holder.get("corrupt"):
        return "an unreadable lock file (%s)" % holder.get("error", "not JSON")
    return "%s run %s (controller pid %s on %s, user %s) on %s since %s" % (
        holder.get("runbook", "unknown"),
        holder.get("run_id"),
        holder.get("controller_pid"),
        holder.get("controller_host"),
        holder.get("user", "unknown"),
        holder.get("host"),
        holder.get("since"),
    )


def read_lock(path):
    """The owner record, None when there is no lock, ``{"corrupt": True}`` when unreadable."""
    try:
        with open(path) as handle:
            text = handle.read()
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    try:
        record = json.loads(text)
    except ValueError as exc:
        return {"corrupt": True, "error": str(exc)}
    if not isinstance(record, dict) or not record.get("run_id"):
        return {"corrupt": True, "error": "no run id"}
    return record


def owner_gone(holder, controller_host=None):
    """True when the holder's controller is this machine (or ``controller_host``, the machine the
    caller checked from) and its pid no longer exists. False when it cannot be checked."""
    here = controller_host or socket.gethostname()
    if holder.get("corrupt") or holder.get("controller_host") != here:
        return False
    if not holder.get("controller_pid"):
        return False
    return not pid_alive(holder["controller_pid"])


def same_run(holder, owner):
    return holder.get("run_id") == owner["run_id"] and holder.get("controller_pid") == owner.get(
        "controller_pid"
    )


def decide(holder, owner, max_age, break_lock="", stale_holder="", now=None):
    """What taking the lock does, without touching anything.

    Returns ``(action, message)``: action is ``take`` (free), ``keep`` (this run holds it),
    ``stale`` (the holder's controller pid is gone: take it over), ``break`` (named by
    break_lock) or raises LockError naming the holder.
    """
    if holder is None:
        return "take", "lock %s for %s" % (owner["host"], describe(owner))
    if not holder.get("corrupt") and same_run(holder, owner):
        return "keep", "this run holds the lock already"
    name = describe(holder)
    if break_lock and not holder.get("corrupt") and break_lock == holder.get("run_id"):
        return "break", "broke, as asked (knowngood_break_lock=%s), the lock of %s" % (
            break_lock,
            name,
        )
    if not holder.get("corrupt") and (
        owner_gone(holder) or (stale_holder and stale_holder == holder.get("run_id"))
    ):
        return "stale", "took over the stale lock of %s: its controller process is gone" % name
    if holder.get("corrupt"):
        raise LockError(
            "%s is locked by %s: nothing was changed. Look at the file and remove it by hand if "
            "no run holds it" % (owner["host"], name),
            holder,
        )
    age = (time.time() if now is None else now) - float(holder.get("created") or 0)
    advice = "wait for it to finish"
    if age > max_age:
        advice = (
            "it is older than %ds and its controller cannot be checked from here; if you are "
            "sure that run is dead, break the lock deliberately with "
            "-e knowngood_break_lock=%s" % (max_age, holder.get("run_id"))
        )
    raise LockError(
        "%s is locked by %s: nothing was changed; %s" % (owner["host"], name, advice), holder
    )


def _create(path, owner):
    """Write the record to a temporary file, then link it into place; False if one exists."""
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o700)
    tmp = "%s.%d.tmp" % (path, os.getpid())
    with open(tmp, "w") as handle:
        json.dump(owner, handle, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(tmp, path)
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise
        return False
    finally:
        os.unlink(tmp)
    return True


def _move_aside(path, holder):
    """Rename the holder's file away; only one of two racing runs wins the rename."""
    aside = "%s.broken-%s-%d" % (path, holder.get("run_id"), int(time.time()))
    try:
        os.rename(path, aside)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    if read_lock(aside) != holder:  # another run replaced it between our read and the rename
        try:
            os.link(aside, path)  # put theirs back
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
        os.unlink(aside)
        return False
    os.unlink(aside)
    return True


@contextlib.contextmanager
def _guard(path, check_mode=False):
    """Hold an exclusive flock on ``<path>.guard`` (made with the lock's directory) meanwhile."""
    directory = os.path.dirname(path)
    if check_mode:
        yield  # nothing is written in check mode, not even the guard
        return
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o700)
    fd = os.open(path + ".guard", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def acquire(path, owner, max_age, break_lock="", stale_holder="", check_mode=False):
    """Take the lock at path for owner. Returns ``(action, message, holder_before)``.

    action: ``take``, ``keep``, ``stale`` or ``break``; raises LockError when it is held.
    In check mode it decides and returns without writing.
    """
    with _guard(path, check_mode):
        for _attempt in range(3):
            holder = read_lock(path)
            action, message = decide(holder, owner, max_age, break_lock, stale_holder)
            if check_mode or action == "keep":
                return action, message, holder
            if action in ("stale", "break") and not _move_aside(path, holder):
                continue
            if _create(path, owner):
                return action, message, holder
    raise LockError("could not take the lock %s: other runs keep changing it" % path)


def release(path, run_id, controller_pid=None, check_mode=False):
    """Give the lock back. Returns True when removed (or would be), False when there was none.

    Refuses to remove a lock another run holds (it was broken and taken over meanwhile)."""
    with _guard(path, check_mode):
        holder = read_lock(path)
        if holder is None:
            return False
        if holder.get("run_id") != run_id or (
            controller_pid and holder.get("controller_pid") not in (None, int(controller_pid))
        ):
            raise LockError(
                "the lock %s is held by %s, not by this run %s: left in place"
                % (path, describe(holder), run_id),
                holder,
            )
        if not check_mode:
            os.unlink(path)
        return True


# ---------------------------------------------------------------- the module's logic

ARGUMENT_SPEC = dict(
    path=dict(type="path", required=True),
    state=dict(type="str", default="locked", choices=["locked", "unlocked"]),
    run_id=dict(type="str", required=True),
    runbook=dict(type="str"),
    user=dict(type="str"),
    controller_pid=dict(type="int"),
    controller_host=dict(type="str"),
    host=dict(type="str"),
    max_age=dict(type="int", default=3600),
    break_lock=dict(type="str", default=""),
    stale_holder=dict(type="str", default=""),
)


def run(module):
    """Take or give back the lock for module.params. Returns (failed, result)."""
    params = module.params
    path = params["path"]
    before = read_lock(path)
    result = {"path": path, "holder": None, "broken": None, "msg": "", "taken": False}
    try:
        if params["state"] == "unlocked":
            removed = release(path, params["run_id"], params["controller_pid"], module.check_mode)
            result.update(changed=removed, lock=None if removed else before)
            result["msg"] = (
                ("would give back" if module.check_mode else "gave back") + " the lock %s" % path
                if removed
                else "no lock at %s" % path
            )
        else:
            owner = owner_record(
                params["run_id"],
                params["runbook"],
                params["controller_pid"],
                params["controller_host"],
                params["user"],
                params["host"],
            )
            action, message, held = acquire(
                path,
                owner,
                params["max_age"],
                params["break_lock"],
                params["stale_holder"],
                module.check_mode,
            )
            taken = action != "keep"
            result.update(changed=taken, taken=taken, lock=held if action == "keep" else owner)
            result["msg"] = ("would " if module.check_mode else "") + message
            if action in ("stale", "break"):
                result["broken"] = held
                module.warn(result["msg"])
    except LockError as exc:
        result.update(msg=str(exc), holder=exc.holder, changed=False, lock=before)
        return True, result
    except OSError as exc:
        result.update(msg="lock %s: %s" % (path, exc), changed=False, lock=before)
        return True, result
    if module._diff:
        result["diff"] = {
            "before_header": path,
            "after_header": path,
            "before": describe(before) + "\n" if before else "",
            "after": describe(result["lock"]) + "\n" if result["lock"] else "",
        }
    return False, result
