# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Notices for failed scheduled backups, restore tests and WAL archiving, through the same
channels as the runbooks' (module_utils/notify.py: webhooks and mail to the on-call contacts).

The channels come from the backup configuration's `notify` ({channels, contacts,
smtp_password}: knowngood_notify, knowngood_contacts and the vaulted SMTP password). due() says
which notices a run owes, from the run's outcome and the metrics state before it:
- a scheduled backup (`kg-wal backup`) or restore test (`kg-wal verify`) that failed: one per
  failed run (the engine's retries happen inside the run);
- WAL archiving that failed, or a location whose copies started to fail (they queue as pending:
  the archive falls behind there): one when it starts, none while PostgreSQL retries.
send() delivers them and never raises: a notice that cannot be sent never changes the job's
result. Standard library and module_utils/notify only.
"""

import os
import socket

JOB_WORDS = {
    "backup_full": "scheduled full backup",
    "backup_incremental": "scheduled incremental backup",
    "verify": "scheduled restore test",
    "wal_push": "WAL archiving",
}


def due(kind, outcome, before):
    """[(subject, text)] this run owes. outcome: {ok, locations: {name: stored?}, error,
    pending: {name: [segments]}}; before: the metrics state before the run was recorded."""
    before = before or {}
    host = socket.gethostname()
    cluster = before.get("cluster") or outcome.get("cluster") or "?"
    what = JOB_WORDS.get(kind, kind)
    previous = (before.get("jobs") or {}).get(kind) or {}
    out = []
    not_stored = sorted(n for n, ok in (outcome.get("locations") or {}).items() if not ok)
    if not outcome.get("ok") and (kind != "wal_push" or previous.get("ok", True)):
        out.append(
            (
                "[knowngood] %s FAILED: %s on %s" % (what, cluster, host),
                [
                    "error: %s" % (outcome.get("error") or "see the job's log"),
                    "locations not stored: %s" % (", ".join(not_stored) or "-"),
                ],
            )
        )
    if kind == "wal_push" and outcome.get("ok"):
        was_up = before.get("locations") or {}
        newly_down = sorted(
            name
            for name, ok in (outcome.get("locations") or {}).items()
            if not ok and was_up.get(name, True)
        )
        pending = outcome.get("pending") or {}
        for name in newly_down:
            out.append(
                (
                    "[knowngood] WAL archive falling behind: %s on %s, location %s"
                    % (cluster, host, name),
                    [
                        "copies to %s fail; %d segment(s) queued, backfilled when it answers"
                        % (name, len(pending.get(name) or [])),
                    ],
                )
            )
    return [
        (subject, "\n".join([subject, "cluster: %s" % cluster, "host: %s" % host] + lines))
        for subject, lines in out
    ]


def send(settings, notices, log):
    """Deliver every notice to the configured channels; never raises. [outcomes]."""
    if not notices or not settings:
        return []
    try:
        from ansible_collections.knowngood.runbooks.plugins.module_utils import notify

        channels = settings.get("channels") or {}
        if not notify.configured(channels):
            return []
        outcomes = []
        for subject, text in notices:
            # The "failure" route: the on-call pair and the infrastructure lead.
            outcomes += notify.deliver(
                "failure",
                text,
                settings.get("contacts") or {},
                channels,
                smtp_password=settings.get("smtp_password") or "",
                subject=subject,
            )
        for o in outcomes:
            log("notice %s %s: %s %s" % (o["channel"], o["target"], o["outcome"], o["error"]))
        return outcomes
    except Exception as err:  # noqa: BLE001 - a notice never changes the job's result
        log("notice not sent: %s" % type(err).__name__)
        return []


def send_detached(settings, notices, log):
    """send() in a detached grandchild, so archive_command returns at once (PostgreSQL waits
    for it, and the watchdog would end a push held up by a slow receiver)."""
    if not notices or not settings:
        return
    try:
        child = os.fork()
    except OSError:
        return
    if child:
        os.waitpid(child, 0)
        return
    try:
        os.setsid()
        if os.fork() == 0:
            send(settings, notices, log)
    finally:
        os._exit(0)


__all__ = ["due", "send", "send_detached"]
