# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the scheduled backups, restore tests and WAL pushes did, for Prometheus.

Each run of `kg-wal backup|verify|push` records its outcome here; the tool writes
`<spool_dir>/metrics/knowngood_backup_<cluster>.prom` in the text exposition format, for
node_exporter's textfile collector (`--collector.textfile.directory`). The alert rules shipped
with the collection (roles/backup_schedule/files/prometheus/knowngood-backups.rules.yml) turn
a failed job, a job that has not succeeded within its freshness limit, a location that failed
and WAL copies left pending into alerts, so a broken backup is seen without reading a log.

Per job kind: `knowngood_backup_job_ok` (1 or 0, the last run), `..._last_run_timestamp_seconds`,
`..._last_success_timestamp_seconds` and `..._max_age_seconds` (the configured freshness limit).
Per location: `knowngood_backup_location_up` (1 or 0, from the last run that reached it) and
`knowngood_wal_pending_copies`. No secrets: names, counts and times only.

Recording never fails the job it records (archive_command must not fail over a metrics file).
Standard library only.
"""

import copy
import fcntl
import json
import os
import time

PREFIX = "knowngood_backup"
# The kinds of job and the freshness limit (a BackupConfig field, hours or minutes) each is held to.
KINDS = {
    "backup_full": ("freshness_full_hours", 3600),
    "backup_incremental": ("freshness_incremental_hours", 3600),
    "verify": ("freshness_full_hours", 3600),
    "wal_push": ("freshness_wal_minutes", 60),
}
HELP = {
    "knowngood_backup_job_ok": "1 if the last run of this job succeeded, 0 if it failed.",
    "knowngood_backup_job_last_run_timestamp_seconds": "When the last run of this job ended.",
    "knowngood_backup_job_last_success_timestamp_seconds": "When this job last succeeded.",
    "knowngood_backup_job_max_age_seconds": "The freshness limit this job is held to.",
    "knowngood_backup_location_up": "1 if the last run that used this location stored there.",
    "knowngood_wal_pending_copies": "WAL copies waiting in the spool for this location.",
}


def metrics_dir(cfg):
    return os.path.join(cfg.spool_dir, "metrics")


def metrics_path(cfg):
    return os.path.join(metrics_dir(cfg), f"{PREFIX}_{cfg.cluster}.prom")


def _escape(value):
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels):
    return ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))


def render(state):
    """The exposition text of a state dict (see record)."""
    cluster = state["cluster"]
    series = {name: [] for name in HELP}
    for kind, job in sorted(state.get("jobs", {}).items()):
        labels = _labels(cluster=cluster, kind=kind)
        series["knowngood_backup_job_ok"].append((labels, 1 if job["ok"] else 0))
        series["knowngood_backup_job_last_run_timestamp_seconds"].append((labels, job["last_run"]))
        if job.get("last_success") is not None:
            series["knowngood_backup_job_last_success_timestamp_seconds"].append(
                (labels, job["last_success"])
            )
        series["knowngood_backup_job_max_age_seconds"].append((labels, job["max_age"]))
    for name, up in sorted(state.get("locations", {}).items()):
        labels = _labels(cluster=cluster, location=name)
        series["knowngood_backup_location_up"].append((labels, 1 if up else 0))
    for name, count in sorted(state.get("pending", {}).items()):
        labels = _labels(cluster=cluster, location=name)
        series["knowngood_wal_pending_copies"].append((labels, count))
    lines = []
    for name, rows in series.items():
        if not rows:
            continue
        lines += [f"# HELP {name} {HELP[name]}", f"# TYPE {name} gauge"]
        lines += [f"{name}{{{labels}}} {value:g}" for labels, value in rows]
    return "\n".join(lines) + "\n"


def record(cfg, kind, ok, locations=None, pending=None, now=None, before=None):
    """Record one run of `kind`: ok, and optionally {location: stored?} and {location: count}.

    Merged into the cluster's state under a lock (pushes, backups and restore tests end at the
    same moment), then the .prom file is replaced atomically (the collector never reads half a
    file). before, a dict, receives the state as this run found it, read under the same lock:
    of two runs ending together, only one sees the other's change (the notices it owes). Returns
    the path written, or None when it could not be (logged by the caller)."""
    now = time.time() if now is None else now
    field, unit = KINDS[kind]
    directory = metrics_dir(cfg)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    state_path = os.path.join(directory, f".{PREFIX}_{cfg.cluster}.json")
    fd = os.open(state_path, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with os.fdopen(os.dup(fd), "r+", encoding="utf-8") as handle:
            try:
                state = json.load(handle)
            except ValueError:
                state = {}
            if before is not None:
                before.update(copy.deepcopy(state))
            state.update(cluster=cfg.cluster)
            previous = state.setdefault("jobs", {}).get(kind, {})
            state["jobs"][kind] = {
                "ok": bool(ok),
                "last_run": now,
                "last_success": now if ok else previous.get("last_success"),
                "max_age": getattr(cfg, field) * unit,
            }
            state.setdefault("locations", {}).update(
                {name: bool(up) for name, up in (locations or {}).items()}
            )
            if pending is not None:
                state["pending"] = {name: len(segs) for name, segs in pending.items()}
            handle.seek(0)
            handle.truncate()
            json.dump(state, handle, sort_keys=True)
        out = metrics_path(cfg)
        tmp = f"{out}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(render(state))
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
        return out
    finally:
        os.close(fd)


__all__ = ["KINDS", "metrics_path", "record", "render"]
