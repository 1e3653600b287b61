# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""kg-wal's command line (also `knowngood wal`): what PostgreSQL runs as archive_command /
restore_command (push, fetch), status, and the scheduled jobs (backup, verify).

The archiving itself is wal.py's; install.py puts this tool onto a host.
Standard library + this package (boto3 etc. only through it, lazily).
"""

import contextlib
import faulthandler
import json
import os
import signal
import sys
import time

from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import metrics, notice
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.archive import (
    list_segments,
    newest_segment,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (
    BackupError,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.config import (
    BackupConfig,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.store import (
    open_locations,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.wal import (
    TOOL_NAME,
    fetch,
    log,
    pending_copies,
    push,
    safe_error,
)

# Seconds before the tool gives up and PostgreSQL retries. A push to every location takes
# under a second to seconds; a stuck one must not hold the archiver (and every backup waiting
# on it) for long: 60 s leaves a backup's stop_timeout (120 s) room for the archiver's retry.
# KG_WAL_WATCHDOG may shorten it, never lengthen it.
WATCHDOG = {"push": 60, "fetch": 120}


def load_config(path):
    try:
        with open(path) as handle:
            data = json.load(handle)
    except OSError as err:
        raise BackupError(f"cannot read WAL tool config {path}: {err.strerror}") from None
    except ValueError:
        raise BackupError(f"WAL tool config {path} is not valid JSON") from None
    return BackupConfig.from_dict(data)


def status(cfg):
    """Newest archived segment per location, pending copies, reachability (no secrets)."""
    out = {"cluster": cfg.cluster, "locations": {}, "pending": pending_copies(cfg)}
    for location in open_locations(cfg):
        entry = {"type": location.type, "required": location.required}
        try:
            segments = list_segments(location)
            entry.update(ok=True, segments=len(segments), newest=newest_segment(segments))
        except Exception as err:  # noqa: BLE001 - reported
            entry.update(ok=False, error=safe_error(err))
        out["locations"][location.name] = entry
    return out


def _scheduled_job(cfg, args, outcome):
    """`kg-wal backup TYPE` / `kg-wal verify`: what cron and systemd timers run.

    Puts what each location did into outcome, for the metrics."""
    from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import (
        engine,
        verify,
    )

    if args.cmd == "backup":
        entry = engine.take_backup(cfg, args.type, fallback_full=args.fallback_full)
        missing = sorted(
            name
            for name, copy in (entry.get("locations") or {}).items()
            if copy.get("status") != "ok"
        )
        outcome["locations"] = {
            name: copy.get("status") == "ok"
            for name, copy in (entry.get("locations") or {}).items()
        }
        if missing:
            outcome["error"] = "backup %s not stored in %s" % (entry["label"], ", ".join(missing))
        summary = {"backup_id": entry["label"], "type": entry["type"], "missing": missing}
        sys.stdout.write(json.dumps(summary, sort_keys=True) + "\n")
        return 1 if missing else 0
    tiers = tuple(t for t in args.tiers.split(",") if t)
    verified = verify.verify(cfg, tiers=tiers)
    sys.stdout.write(
        json.dumps({"ok": verified.get("ok"), "tiers": sorted(verified.get("tiers", {}))}) + "\n"
    )
    failed = {
        name: "; ".join(str(p) for p in (tier.get("problems") or [])[:2]) or "failed"
        for name, tier in sorted((verified.get("tiers") or {}).items())
        if not tier.get("ok")
    }
    if failed:
        outcome["error"] = "; ".join("%s: %s" % item for item in failed.items())[:600]
    return 0 if verified.get("ok") else 1


def watchdog_limit(cmd, environ):
    """Seconds the watchdog gives `cmd`: WATCHDOG's, or fewer when KG_WAL_WATCHDOG asks."""
    limit = WATCHDOG[cmd]
    try:
        wanted = float(environ.get("KG_WAL_WATCHDOG", ""))
    except ValueError:
        return limit
    return wanted if 0 < wanted < limit else limit


def tool_main(argv, default_config=None):
    import argparse

    parser = argparse.ArgumentParser(prog=TOOL_NAME, description="knowngood WAL archiving")
    parser.add_argument("--config", default=default_config, help="backup config JSON")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_push = sub.add_parser("push", help="archive one WAL file (archive_command %%p)")
    p_push.add_argument("path")
    p_fetch = sub.add_parser("fetch", help="restore one WAL file (restore_command %%f %%p)")
    p_fetch.add_argument("name")
    p_fetch.add_argument("dest")
    p_fetch.add_argument("--no-prefetch", action="store_true")
    sub.add_parser("status", help="newest archived segment per location, pending copies")
    p_backup = sub.add_parser("backup", help="take a backup now (the scheduled jobs)")
    p_backup.add_argument("type", choices=("full", "incremental"))
    p_backup.add_argument("--fallback-full", action="store_true")
    p_verify = sub.add_parser("verify", help="verify the backups (integrity, freshness, restore)")
    p_verify.add_argument("--tiers", default="integrity,freshness,restore")
    args = parser.parse_args(argv)
    if not args.config:
        parser.error("--config is required")
    if args.cmd in WATCHDOG:
        # archive_command and restore_command must never hang: PostgreSQL waits on them, and
        # a push that never returns stops archiving for good. The work runs in a forked child
        # and this process only waits for it, so the watchdog fires however the child is stuck
        # (a thread holding the GIL, an import lock, a socket without a timeout, interpreter
        # shutdown joining a thread). It then has the child write every thread's stack to the
        # server log, kills it and exits with status 1: a failed attempt PostgreSQL counts and
        # retries. Never a signal status: an archive_command killed by one restarts the
        # archiver uncounted, a restore_command killed by one aborts recovery.
        # (faulthandler's own timer dumped the stacks of running threads from its thread and,
        # about once in a few hundred runs, crashed doing it: SIGSEGV, the status we promise
        # never to return.)
        limit = watchdog_limit(args.cmd, os.environ)
        sys.stdout.flush()
        sys.stderr.flush()
        child = os.fork()
        if child:
            return _supervise(child, args.cmd, limit, on_kill=lambda: _killed(args))
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    return _run(args)


def _run(args):
    cfg = None
    outcome = {"ok": False}  # what the metrics record: a job that raised failed
    try:
        cfg = load_config(args.config)
        if args.cmd == "push":
            result = push(cfg, args.path)
            outcome.update(ok=True, locations=_stored(result["locations"]))
            outcome["pending"] = {
                loc.name: result["pending"].get(loc.name, []) for loc in cfg.locations
            }
            return 0
        if args.cmd == "fetch":
            return 0 if fetch(cfg, args.name, args.dest, prefetch=not args.no_prefetch) else 1
        if args.cmd in ("backup", "verify"):
            code = _scheduled_job(cfg, args, outcome)
            outcome["ok"] = code == 0
            return code
        sys.stdout.write(json.dumps(status(cfg), indent=2, sort_keys=True) + "\n")
        return 0
    except BackupError as err:
        log(f"{args.cmd}: {err}")
        outcome["locations"] = _stored(getattr(err, "locations", {}))
        outcome["error"] = safe_error(err)
        return 1
    except Exception as err:  # noqa: BLE001 - never a traceback with locals into the PG log
        log(f"{args.cmd}: unexpected {type(err).__name__}")
        outcome["error"] = f"unexpected {type(err).__name__}"
        return 1
    finally:
        if cfg is not None and args.cmd in ("push", "backup", "verify"):
            _record_metrics(cfg, args, outcome)


def _stored(statuses):
    """{location: stored?} from a push's or a backup's per-location statuses."""
    return {name: status in ("stored", "exists", "ok") for name, status in statuses.items()}


def _record_metrics(cfg, args, outcome):
    """The run's outcome into the metrics, then the notices it owes (never the job's result)."""
    kind = {"push": "wal_push", "verify": "verify"}.get(args.cmd) or f"backup_{args.type}"
    before = {}
    try:
        metrics.record(
            cfg,
            kind,
            outcome["ok"],
            locations=outcome.get("locations"),
            pending=outcome.get("pending"),
            before=before,
        )
    except Exception as err:  # noqa: BLE001 - a metrics file never fails the job it records
        log(f"{args.cmd}: metrics not written: {safe_error(err)}")
    try:
        notices = notice.due(kind, dict(outcome, cluster=cfg.cluster), before)
        # archive_command must return at once; a scheduled job may wait for its notice.
        deliver = notice.send_detached if args.cmd == "push" else notice.send
        deliver(cfg.notify, notices, lambda line: log(f"{args.cmd}: {line}"))
    except Exception as err:  # noqa: BLE001 - a notice never fails the job it reports
        log(f"{args.cmd}: notice not sent: {type(err).__name__}")


class _Expired(Exception):
    pass


def _expire(signum, frame):
    raise _Expired


# How long a stuck child gets to write its stacks (SIGUSR1) before SIGKILL.
STACK_DUMP_GRACE = 0.5


def _killed(args):
    """A push the watchdog ended, or one that died by a signal, recorded no outcome: it
    failed, and the metrics say so at once (not only once the archive goes stale)."""
    if args.cmd != "push":
        return
    try:
        cfg = load_config(args.config)
    except BackupError as err:
        log(f"{args.cmd}: metrics not written: {err}")
        return
    _record_metrics(cfg, args, {"ok": False})


def _supervise(child, cmd, limit, on_kill=None):
    """Wait for the forked child's exit status; after `limit` seconds end it, status 1.
    on_kill runs when the child did not exit by itself (the watchdog, or a signal).

    This process runs no thread and holds no lock, so SIGALRM's handler always runs."""
    previous = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        _pid, status = os.waitpid(child, 0)
    except _Expired:
        log(f"{cmd}: watchdog: no result after {limit:g} s, every thread's stack follows")
        _end(child)
        log(f"{cmd}: watchdog: ended after {limit:g} s, exit status 1 (PostgreSQL retries)")
        if on_kill:
            on_kill()
        return 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    log(f"{cmd}: ended by signal {os.WTERMSIG(status)}, exit status 1 (PostgreSQL retries)")
    if on_kill:
        on_kill()
    return 1


def _end(child):
    """Ask the child for its stacks, give it STACK_DUMP_GRACE to write them, then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(child, signal.SIGUSR1)
    deadline = time.monotonic() + STACK_DUMP_GRACE
    while time.monotonic() < deadline:
        if os.waitpid(child, os.WNOHANG)[0]:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)


__all__ = ["load_config", "status", "tool_main", "watchdog_limit"]
