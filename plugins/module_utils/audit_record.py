# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The audit record's format, in one place: how a run's record is named, masked, written, read
and listed, for the audit callback, `knowngood run`, `knowngood audit`, the incident report and
audit_chain's repair.

A run's record is <audit dir>/<run id>.json; while it runs, its opening is <run id>.open.json.
Both are JSON, indented, keys sorted, values under secret-looking names masked, written whole
(a temporary file renamed into place). The index entry that closes a run (kind "record") names
the record file and its sha256; audit_chain chains and signs it. A listing is one line per run
from the index: finished runs with their status, a run opened and never closed as OPEN.
"""

import hashlib
import json
import os
import re
import tempfile

SECRET_RE = re.compile(r"pass|secret|token|key|dsn|credential|webhook|knowngood_notify", re.I)


def mask(value, name=""):
    """Values under secret-looking names masked, recursively: records never hold secrets."""
    if name and SECRET_RE.search(name):
        return "********"
    if isinstance(value, dict):
        return dict((k, mask(v, str(k))) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [mask(v) for v in value]
    return value


def record_name(run_id, opening=False):
    """The record's file name in the audit dir (the opening's with opening=True)."""
    return ("%s.open.json" if opening else "%s.json") % run_id


def write(audit_dir, name, record):
    """Write record as <audit dir>/<name>, whole; returns (path, sha256 of what was written)."""
    if not os.path.isdir(audit_dir):
        os.makedirs(audit_dir, 0o750)
    body = json.dumps(record, indent=2, sort_keys=True, default=str)
    path = os.path.join(audit_dir, name)
    fd, tmp = tempfile.mkstemp(dir=audit_dir, prefix=".rec-")
    with os.fdopen(fd, "w") as handle:
        handle.write(body)
    os.rename(tmp, path)
    return path, hashlib.sha256(body.encode("utf-8")).hexdigest()


def closing_entry(record, name, sha256, **extra):
    """The index entry (kind "record") that closes a run with its record file."""
    entry = {
        "kind": "record",
        "run_id": record["run_id"],
        "record": name,
        "playbook": record.get("playbook"),
        "status": record["status"],
        "finished_at": record["finished_at"],
        "sha256": sha256,
    }
    entry.update(extra)
    return entry


def read(audit_dir, run_id):
    """The run's record as a dict, or None when there is none (or run_id is not a plain name)."""
    path = os.path.join(str(audit_dir), record_name(run_id))
    if "/" in run_id or not os.path.exists(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def runs(entries, last=None):
    """One dict per recorded run in the index entries (audit_chain.entries), oldest first:
    {at, status, run_id, playbook}; a run opened and never closed has status OPEN and its start
    time. last: only the newest that many."""
    closed = set(e.get("run_id") for e in entries if e.get("kind", "record") == "record")
    found = []
    for entry in entries:
        kind = entry.get("kind", "record")
        playbook = os.path.basename(entry.get("playbook") or "?")
        if kind == "record":
            at, status = entry["finished_at"], entry["status"]
        elif kind == "open" and entry.get("run_id") not in closed:
            at, status = entry.get("started_at"), "OPEN"
        else:
            continue
        found.append({"at": at, "status": status, "run_id": entry["run_id"], "playbook": playbook})
    return found[-last:] if last else found


def run_lines(entries, last=None):
    """runs() as the lines `knowngood audit list` prints."""
    return [
        "%s  %-10s  %s  %s" % (r["at"], r["status"], r["run_id"], r["playbook"])
        for r in runs(entries, last)
    ]
