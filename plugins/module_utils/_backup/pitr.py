# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Point-in-time recovery that fails closed (issue 4, strategy 3.2); pg_pitr drives it.

plan() is the read-only preflight every state runs first: one target, a committed backup
before it on the timeline being recovered, WAL continuity from the backup to the target and an
archive that reaches past the target. Only then recover() / promote() / restore_tables() /
release() touch anything, each after asserting the live cluster's identity.

Time targets: PostgreSQL stops a time recovery just before the first commit (or abort) record
stamped after the target (at or after it when exclusive), so the archive must hold such a
record. plan() decodes the newest archived segments with pg_waldump, newest first, until it
finds a commit; that is "the last archived commit". A target at or after it is refused, and
WAL must be continuous from the backup's start segment to the segment holding that commit.

Kill safety: `<data_dir>.kg-pitr-restoring` (JSON) is written before the data directory is
moved aside and removed when the restored directory is complete; `<data_dir>.kg-pitr.json`
records the run's phase. A re-run finds them and converges; the aside directory is only ever
removed by release().
"""

import contextlib
import dataclasses
import datetime
import os
import re
import shutil
import subprocess
import tempfile
import time

from ansible_collections.knowngood.runbooks.plugins.module_utils import postgres
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import (
    command,
    engine,
    install,
    verify,
)

# kg-wal's entry point: imported so that Ansible ships every source install_tool copies.
# pylint: disable-next=unused-import
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import tool as kg_wal  # noqa: F401
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (
    SEGMENT_SIZE,
    WAL_SEGMENT_RE,
    BackupError,
    dump_json,
    format_lsn,
    iso,
    parse_iso,
    parse_lsn,
    read_json,
    segment_from_parts,
    segment_parts,
    utcnow,
    write_atomic,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils.progress import Progress

STATES = ("planned", "recovered", "promoted", "table_restored", "released")
STRATEGIES = ("pitr", "snapshot", "table")
MODES = ("full", "delta")
DIFF_PATHS = 50  # paths per kind of change a delta check mode lists
ENDED_EARLY = "recovery ended before configured recovery target was reached"
TABLE_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_$]*)\.([A-Za-z_][A-Za-z0-9_$]*|\*)$")
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,40}$")
BACKUP_LABEL_RE = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")
TARGET_KEYS = "target_time, target_lsn, target_xid, target_name, target_immediate"
SCAN_LIMIT = 64  # archived segments decoded, newest first, looking for the last commit
_COMMIT_RE = re.compile(
    r"lsn: ([0-9A-F]+/[0-9A-F]+),.*desc: (?:COMMIT|ABORT)(?:_PREPARED)? "
    r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC"
)
_RECORD_RE = re.compile(r"lsn: ([0-9A-F]+/[0-9A-F]+),")
_RESTORE_POINT_RE = re.compile(r"lsn: ([0-9A-F]+/[0-9A-F]+),.*desc: RESTORE_POINT (.*)$")
NAME_SCAN_LIMIT = 512  # archived segments searched, newest first, for a named restore point


@dataclasses.dataclass
class Request:
    state: str = "planned"
    strategy: str = "pitr"
    target_time: str = None
    target_lsn: str = None
    target_xid: str = None
    target_name: str = None
    target_immediate: bool = False
    target_latest: bool = False
    target_inclusive: bool = True
    target_timeline: str = "latest"
    backup_label: str = None
    tables: list = dataclasses.field(default_factory=list)
    confirm: str = None
    data_dir: str = None
    port: int = None
    aside_dir: str = None
    scratch_dir: str = None
    scratch_port: int = None
    run_id: str = None
    timeout: int = 1800
    mode: str = "full"
    tool_dir: str = None
    python: str = "/usr/bin/python3"
    progress_file: str = None


def empty_result(req):
    """The keys every path returns."""
    return {
        "changed": False,
        "strategy": req.strategy,
        "plan": {},
        "backup_id": None,
        "timeline": None,
        "reached_lsn": None,
        "reached_time": None,
        "wal_bytes_replayed": None,
        "paused": False,
        "promoted": False,
        "aside_dir": None,
        "tables": [],
        "steps": {},
        "first_read_seconds": None,
        "queries": [],
        "refused": False,
        "request": {},
        "cluster": {},
        "mode": req.mode,
        "delta": {},
    }


class _Steps:
    def __init__(self, result):
        self.out = result["steps"]

    @contextlib.contextmanager
    def __call__(self, name):
        started = time.monotonic()
        try:
            yield
        finally:
            self.out[name] = round(self.out.get(name, 0) + time.monotonic() - started, 3)


# ---- targets ---------------------------------------------------------------------------------


def parse_target(req, now=None):
    """{kind, inclusive, value, text}; BackupError unless exactly one target is given."""
    given = [
        kind
        for kind, value in (
            ("time", req.target_time),
            ("lsn", req.target_lsn),
            ("xid", req.target_xid),
            ("name", req.target_name),
        )
        if value not in (None, "")
    ]
    if req.target_immediate:
        given.append("immediate")
    if req.target_latest:
        given.append("latest")
    if req.strategy == "snapshot":
        if [k for k in given if k != "immediate"]:
            raise BackupError(
                f"conflicting targets: strategy snapshot restores a backup exactly as taken "
                f"(target_immediate); drop {sorted(k for k in given if k != 'immediate')}"
            )
        given = ["immediate"]
    if len(given) > 1:
        raise BackupError(
            f"conflicting targets {given}: strategy {req.strategy} needs exactly one of "
            f"{TARGET_KEYS} (or target_latest)"
        )
    if not given:
        raise BackupError(
            f"no recovery target: strategy {req.strategy} needs exactly one of {TARGET_KEYS}, "
            "or target_latest: true for the end of the archive (never implied)"
        )
    kind = given[0]
    target = {"kind": kind, "inclusive": bool(req.target_inclusive)}
    if kind == "time":
        text = str(req.target_time).strip()
        try:
            when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            when = None
        if when is None or when.tzinfo is None or when.utcoffset() is None:
            raise BackupError(
                f"target_time {text!r} must be ISO-8601 with a UTC offset, "
                "like 2026-01-31T12:00:00+00:00"
            )
        if when > (now or utcnow()):
            raise BackupError(f"target_time {text} is in the future")
        target["value"] = when
        target["text"] = iso(when)
    elif kind == "lsn":
        try:
            target["value"] = parse_lsn(str(req.target_lsn).strip())
        except (ValueError, AttributeError):
            raise BackupError(
                f"target_lsn {req.target_lsn!r} is not an LSN like 0/3000060"
            ) from None
        target["text"] = format_lsn(target["value"])
    elif kind == "xid":
        text = str(req.target_xid).strip()
        if not text.isdigit() or int(text) < 3:
            raise BackupError(f"target_xid {text!r} is not a transaction id")
        target["value"] = int(text)
        target["text"] = text
    elif kind == "name":
        text = str(req.target_name)
        if len(text) > 63 or "\n" in text:
            raise BackupError("target_name must be a restore point name of at most 63 characters")
        target["value"] = target["text"] = text
    else:
        target["value"] = None
        target["text"] = kind
    return target


def public_target(target):
    return {"kind": target["kind"], "value": target["text"], "inclusive": target["inclusive"]}


def normalise(req):
    """The request as every later step carries it: one target in canonical form, the backup
    label and the tables checked. This is the only place the runbook's inputs are judged."""
    target = parse_target(req)
    if req.backup_label and not BACKUP_LABEL_RE.match(str(req.backup_label)):
        raise BackupError(
            f"backup_label {req.backup_label!r} is malformed: letters, digits and ._:- only"
        )
    if req.tables and req.strategy != "table":
        raise BackupError(f"tables go with strategy table only, not strategy {req.strategy}")
    tables = parse_tables(req.tables) if req.strategy == "table" else []
    return {
        "strategy": req.strategy,
        "target": public_target(target),
        "backup_label": req.backup_label or "",
        "tables": [f"{schema}.{table}" for schema, table in tables],
    }


def primary_identity(cfg, req, queries=None):
    """The live primary the operator named by `confirm`: its identity, or BackupError when the
    name is not this cluster's, the cluster does not answer, or it is a standby."""
    if req.confirm != cfg.cluster:
        raise BackupError(
            f"confirm {req.confirm!r} does not match the cluster name {cfg.cluster!r}: type the "
            "cluster's name to confirm"
        )
    pg = dataclasses.replace(cfg.pg, port=req.port or cfg.pg.port)
    with contextlib.closing(pg.connect()) as conn:
        ident = postgres.identity(conn)
        _audit(queries, "identity: " + ", ".join(postgres.IDENTITY_SQL))
        if ident["in_recovery"]:
            raise BackupError(
                f"the cluster at {pg.host}:{pg.port} is in recovery (a standby): run against "
                "the primary"
            )
        lsn = postgres.wal_position(conn, in_recovery=False)["lsn"]
    if ident["cluster_name"] != req.confirm:
        raise BackupError(
            f"confirm {req.confirm!r} does not match the cluster: its cluster_name is "
            f"{ident['cluster_name']!r}"
        )
    return {
        "name": ident["cluster_name"],
        "system_identifier": str(ident["system_identifier"]),
        "timeline": int(ident["timeline"]),
        "lsn": lsn,
        "server_version_num": int(ident["server_version_num"]),
    }


# ---- the archive: segments, history, timeline path -------------------------------------------


class Archive:
    """What the archive holds, as the WAL fetcher sees it: the union over the locations (the
    native WAL tool tries every location for each segment) or a pgBackRest posix repository."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.segments = set()
        self.histories = set()
        self.sources = []
        self.unreachable = {}
        self._list()
        if not self.sources:
            raise BackupError(
                "no WAL archive reachable: "
                + ("; ".join(f"{k}: {v}" for k, v in self.unreachable.items()) or "none set up")
            )

    def _add(self, name):
        if WAL_SEGMENT_RE.match(name):
            self.segments.add(name)
        elif re.match(r"^[0-9A-F]{8}\.history$", name):
            self.histories.add(int(name[:8], 16))

    def _list(self):
        for name, names, error in engine.list_wal(self.cfg):
            for item in names:
                self._add(item)
            if error is None:
                self.sources.append(name)
            else:
                self.unreachable[name] = error

    def fetch(self, name, dest_dir):
        """Decode one archived WAL file into dest_dir; its path."""
        dest = os.path.join(dest_dir, name)
        engine.fetch_wal(self.cfg, name, dest)
        return dest


def timeline_path(archive, wanted, tmp_dir):
    """[{tli, begin, end}] from timeline 1 to the timeline recovery will follow (end None)."""
    tlis = set(archive.histories) | {segment_parts(n)[0] for n in archive.segments}
    if not tlis:
        raise BackupError("the WAL archive is empty")
    if wanted in (None, "", "latest"):
        target_tli = max(tlis)
    else:
        try:
            target_tli = int(str(wanted), 0)
        except ValueError:
            raise BackupError(
                f"target_timeline must be latest or a timeline number, got {wanted!r}"
            ) from None
    if target_tli == 1:
        return [{"tli": 1, "begin": 0, "end": None}]
    if target_tli not in archive.histories:
        raise BackupError(f"history file of timeline {target_tli} is missing from the archive")
    path = archive.fetch(f"{target_tli:08X}.history", tmp_dir)
    out, begin = [], 0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            parts = line.split()
            if len(parts) < 2 or not parts[0].isdigit():
                continue
            switch = parse_lsn(parts[1])
            out.append({"tli": int(parts[0]), "begin": begin, "end": switch})
            begin = switch
    out.append({"tli": target_tli, "begin": begin, "end": None})
    return out


def on_path(path, tli, lsn):
    return any(
        e["tli"] == tli and e["begin"] <= lsn and (e["end"] is None or lsn <= e["end"])
        for e in path
    )


def expected_segment(path, segno):
    """The file recovery reads for a segment number: the newest timeline of the path that had
    begun by then (at a switch, the new timeline's copy of the segment)."""
    tli = path[0]["tli"]
    for entry in path:
        if entry["begin"] // SEGMENT_SIZE <= segno:
            tli = entry["tli"]
    return segment_from_parts(tli, segno)


def newest_on_path(archive, path):
    best = None
    for name in archive.segments:
        segno = segment_parts(name)[1]
        if expected_segment(path, segno) == name and (best is None or segno > best):
            best = segno
    return best


def gaps_on_path(archive, path, start_no, end_no):
    return [
        expected_segment(path, no)
        for no in range(start_no, end_no + 1)
        if expected_segment(path, no) not in archive.segments
    ]


def waldump(cfg, archive, name, tmp_dir, *options):
    """pg_waldump of one archived segment (fetched into tmp_dir, removed after)."""
    archive.fetch(name, tmp_dir)
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "TZ": "UTC", "HOME": "/tmp"}
    try:
        return subprocess.run(
            [cfg.pg.binary("pg_waldump"), *options, "-p", tmp_dir, name, name],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(tmp_dir, name))


def decode_records(cfg, archive, name, tmp_dir):
    """[(lsn, commit time or None)] of one archived segment, by pg_waldump."""
    proc = waldump(cfg, archive, name, tmp_dir)
    out = []
    for line in proc.stdout.splitlines():
        commit = _COMMIT_RE.search(line)
        if commit:
            when = datetime.datetime.strptime(
                commit.group(2),
                "%Y-%m-%d %H:%M:%S.%f" if "." in commit.group(2) else "%Y-%m-%d %H:%M:%S",
            )
            out.append((parse_lsn(commit.group(1)), when.replace(tzinfo=datetime.UTC)))
            continue
        record = _RECORD_RE.search(line)
        if record:
            out.append((parse_lsn(record.group(1)), None))
    if not out and proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
        raise BackupError(f"pg_waldump could not decode archived segment {name}: {tail[0]}")
    return out


def restore_point_lsns(cfg, archive, path, start_no, newest_no, name, tmp_dir):
    """LSNs of every restore point called `name` in the archived segments start..newest (at
    most NAME_SCAN_LIMIT, newest first), and whether the scan reached start_no."""
    found = []
    complete = True
    for count, segno in enumerate(range(newest_no, start_no - 1, -1)):
        if count >= NAME_SCAN_LIMIT:
            complete = False
            break
        segment = expected_segment(path, segno)
        if segment not in archive.segments:
            continue
        proc = waldump(cfg, archive, segment, tmp_dir, "--rmgr=XLOG")
        for line in proc.stdout.splitlines():
            match = _RESTORE_POINT_RE.search(line)
            if match and match.group(2).strip() == name:
                found.append(parse_lsn(match.group(1)))
    return sorted(found), complete


def last_archived_commit(cfg, archive, path, start_no, newest_no, tmp_dir):
    """(commit time, lsn, segment, last record lsn of the newest segment) or Nones: segments
    are decoded newest first, down to the backup's start, at most SCAN_LIMIT of them."""
    last_record = None
    for count, segno in enumerate(range(newest_no, start_no - 1, -1)):
        if count >= SCAN_LIMIT:
            break
        name = expected_segment(path, segno)
        if name not in archive.segments:
            continue
        records = decode_records(cfg, archive, name, tmp_dir)
        if last_record is None and records:
            last_record = records[-1][0]
        commits = [(when, lsn) for lsn, when in records if when is not None]
        if commits:
            when, lsn = max(commits)
            return when, lsn, name, last_record
    return None, None, None, last_record


# ---- the backups -----------------------------------------------------------------------------


def backup_entries(cfg):
    """Committed backups, oldest first, as catalog entries (either engine)."""
    entries = engine.list_backups(cfg)
    usable = [e for e in entries if e.get("stop_lsn") and e.get("wal_start") and e.get("timeline")]
    return sorted(usable, key=lambda e: (parse_lsn(e["stop_lsn"]), e["label"]))


def _stop_time(entry):
    return parse_iso(entry["stop_time"]) if entry.get("stop_time") else None


def plan(cfg, req, target, *, tmp_dir=None):
    """The read-only preflight. Returns the plan or raises BackupError saying why not."""
    own_tmp = tmp_dir is None
    if own_tmp:
        tmp_dir = tempfile.mkdtemp(prefix="kg-pitr-")
    if cfg.engine == "pgbackrest":
        os.chown(tmp_dir, *cfg.pg.os_ids())
    try:
        return _plan(cfg, req, target, tmp_dir)
    finally:
        if own_tmp:
            shutil.rmtree(tmp_dir, ignore_errors=True)


def _plan(cfg, req, target, tmp_dir):
    entries = backup_entries(cfg)
    if not entries:
        raise BackupError(f"no committed backup of cluster {cfg.cluster} in the catalog")
    archive = Archive(cfg)
    path = timeline_path(archive, req.target_timeline, tmp_dir)
    reasons = []
    extra = {}
    on = [e for e in entries if on_path(path, int(e["timeline"]), parse_lsn(e["stop_lsn"]))]
    if req.backup_label:
        chosen = [e for e in entries if e["label"] == req.backup_label]
        if not chosen:
            raise BackupError(f"no committed backup labelled {req.backup_label!r}")
        if chosen[0] not in on:
            raise BackupError(
                f"backup {req.backup_label} is not on timeline {path[-1]['tli']}'s history: "
                "recovery cannot start from it"
            )
        on = chosen
        reasons.append(f"backup {req.backup_label} chosen by backup_label")
    if not on:
        raise BackupError(f"no committed backup lies on timeline {path[-1]['tli']}'s history")
    kind = target["kind"]
    point_lsn = None
    if kind == "name":
        # Where the restore point is decides the base backup (one taken after it could never
        # reach it); a name that occurs twice is ambiguous (recovery stops at the first one
        # after wherever the base backup starts), so it is refused.
        oldest_no = min(segment_parts(e["wal_start"])[1] for e in on)
        newest_seen = newest_on_path(archive, path)
        lsns, complete = restore_point_lsns(
            cfg, archive, path, oldest_no, newest_seen or oldest_no, target["text"], tmp_dir
        )
        if len(lsns) > 1:
            raise BackupError(
                f"restore point {target['text']!r} occurs {len(lsns)} times in the archive (at "
                f"{', '.join(format_lsn(x) for x in lsns)}): give target_lsn instead"
            )
        if not lsns:
            scope = "" if complete else f" (searched the newest {NAME_SCAN_LIMIT} segments)"
            raise BackupError(
                f"restore point {target['text']!r} is not in the archive{scope}: nothing to "
                "recover to"
            )
        point_lsn = lsns[0]
        extra["restore_point_lsn"] = format_lsn(point_lsn)
    if kind == "time":
        before = [e for e in on if _stop_time(e) and _stop_time(e) <= target["value"]]
        if not before:
            first = min(on, key=lambda e: e.get("stop_time") or "")
            raise BackupError(
                f"no backup before the target: target_time {target['text']} is before the end "
                f"of backup {first['label']} ({first.get('stop_time')}), the oldest that applies"
            )
        base = max(before, key=lambda e: (e["stop_time"], e["label"]))
        reasons.append(f"newest backup that ended by the target ({base['stop_time']})")
    elif kind in ("lsn", "name"):
        lsn = target["value"] if kind == "lsn" else point_lsn
        before = [e for e in on if parse_lsn(e["stop_lsn"]) <= lsn]
        if not before:
            raise BackupError(
                f"no backup before the target: {kind} {target['text']} (LSN {format_lsn(lsn)}) "
                f"is before the end of backup {on[0]['label']} ({on[0]['stop_lsn']})"
            )
        base = before[-1]
        reasons.append(f"newest backup that ended by the target LSN ({base['stop_lsn']})")
    else:
        base = on[-1]
        if kind == "xid":
            reasons.append(
                f"newest backup; the target {kind} {target['text']} must lie after it (its end "
                f"{base['stop_lsn']}): checked after replay (PostgreSQL pauses only on reaching "
                "it and stops with an error otherwise)"
            )
    start_no = segment_parts(base["wal_start"])[1]
    newest_no = newest_on_path(archive, path)
    if newest_no is None or newest_no < start_no:
        raise BackupError(
            f"target after the end of the archive: no WAL archived since backup {base['label']} "
            f"started ({base['wal_start']})"
        )
    recovery = {}
    if kind == "immediate":
        end_no = parse_lsn(base["stop_lsn"]) // SEGMENT_SIZE
        recovery = {"immediate": True}
    elif kind == "lsn":
        end_no = target["value"] // SEGMENT_SIZE
        if end_no > newest_no:
            raise BackupError(
                f"target after the end of the archive: target_lsn {target['text']} lies in "
                f"segment {expected_segment(path, end_no)}, the newest archived is "
                f"{expected_segment(path, newest_no)}"
            )
        recovery = {"lsn": target["text"], "inclusive": target["inclusive"]}
    elif kind in ("time", "latest"):
        when, lsn, segment, last_record = last_archived_commit(
            cfg, archive, path, start_no, newest_no, tmp_dir
        )
        if kind == "latest":
            if last_record is None:
                raise BackupError("cannot decode the newest archived segment to find its end")
            end_no = newest_no
            extra["archive_end_lsn"] = format_lsn(last_record)
            recovery = {"lsn": format_lsn(last_record), "inclusive": True}
            reasons.append(
                f"end of the archive pinned to the last record of {expected_segment(path, end_no)}"
                f" at {format_lsn(last_record)}"
            )
        else:
            if when is None:
                raise BackupError(
                    "target after the end of the archive: no commit archived since backup "
                    f"{base['label']} (decoded {min(SCAN_LIMIT, newest_no - start_no + 1)} "
                    "segments, newest first)"
                )
            passed = when > target["value"] if target["inclusive"] else when >= target["value"]
            if not passed:
                raise BackupError(
                    f"target after the end of the archive: the last archived commit is at "
                    f"{iso(when)} (LSN {format_lsn(lsn)}, segment {segment}); target_time "
                    f"{target['text']} needs a commit after it to stop at"
                )
            end_no = lsn // SEGMENT_SIZE
            extra["last_archived_commit"] = {"time": iso(when), "lsn": format_lsn(lsn)}
            reasons.append(
                f"the archive reaches past the target: last archived commit at {iso(when)}"
            )
            recovery = {
                "time": target["value"].isoformat(sep=" "),
                "inclusive": target["inclusive"],
            }
    elif kind == "name":
        end_no = point_lsn // SEGMENT_SIZE
        recovery = {"name": target["text"]}
        reasons.append(f"restore point {target['text']} found at {format_lsn(point_lsn)}")
    else:
        end_no = newest_no
        recovery = {kind: target["text"]}
        if kind == "xid":
            recovery["inclusive"] = target["inclusive"]
    gaps = gaps_on_path(archive, path, start_no, end_no)
    if gaps:
        raise BackupError(
            f"WAL gap: segment {gaps[0]} is missing from every location "
            f"({', '.join(archive.sources)}); recovery from backup {base['label']} needs every "
            f"segment from {base['wal_start']} to {expected_segment(path, end_no)} "
            f"({len(gaps)} missing)"
        )
    if archive.unreachable:
        reasons.append(f"locations not listed: {sorted(archive.unreachable)}")
    return {
        "backup": base["label"],
        "chain": list(base.get("chain") or [base["label"]]),
        "target": public_target(target),
        "wal_from": base["wal_start"],
        "wal_to": expected_segment(path, end_no),
        "timeline_path": [e["tli"] for e in path],
        "reasons": reasons,
        "recovery_target": recovery,
        "base": {
            k: base.get(k)
            for k in (
                "label",
                "type",
                "start_lsn",
                "stop_lsn",
                "stop_time",
                "timeline",
                "system_identifier",
            )  # fmt: skip
        },
        "sources": list(archive.sources),
        **extra,
    }


# ---- the live cluster ------------------------------------------------------------------------


def live_cfg(cfg, req):
    pg = dataclasses.replace(
        cfg.pg, port=req.port or cfg.pg.port, data_dir=req.data_dir or cfg.pg.data_dir
    )
    if not pg.data_dir:
        raise BackupError("data_dir is not set (config.pg.data_dir or data_dir)")
    return dataclasses.replace(cfg, pg=pg)


def _pid_dir(data_dir):
    """The data directory a running postmaster's postmaster.pid names, or None."""
    try:
        with open(os.path.join(data_dir, "postmaster.pid"), encoding="utf-8") as handle:
            lines = handle.read().splitlines()
        pid = int(lines[0])
        os.kill(pid, 0)
        return lines[1]
    except (OSError, ValueError, IndexError):
        return None


def probe(lcfg, queries=None):
    """What the live data directory is doing: running?, identity, recovery state."""
    data_dir = lcfg.pg.data_dir
    out = {"running": False, "data_dir": data_dir}
    pid_dir = _pid_dir(data_dir)
    if pid_dir is None:
        return out
    out.update(running=True, pid_data_dir=pid_dir)
    sql = {
        "system_identifier": "SELECT system_identifier::text FROM pg_control_system()",
        "cluster_name": "SHOW cluster_name",
        "data_directory": "SHOW data_directory",
        "in_recovery": "SELECT pg_is_in_recovery()",
    }
    with contextlib.closing(lcfg.pg.connect()) as conn:
        for key, query in sql.items():
            out[key] = conn.execute(query).fetchone()[0]
            _audit(queries, query)
        if out["in_recovery"]:
            query = "SELECT pg_get_wal_replay_pause_state()"
            out["pause_state"] = conn.execute(query).fetchone()[0]
            _audit(queries, query)
    return out


def _audit(queries, query):
    if queries is not None and query not in queries:
        queries.append(query)


def assert_identity(cfg, req, info, plan_, expect_recovery):
    """Refuse unless this is the cluster the operator named, running where it should."""
    if req.confirm != cfg.cluster:
        raise BackupError(
            f"confirm {req.confirm!r} does not match the cluster name {cfg.cluster!r}: refusing "
            "a destructive step"
        )
    if not info["running"]:
        return
    data_dir = os.path.realpath(info["data_dir"])
    if os.path.realpath(info["pid_data_dir"]) != data_dir or (
        os.path.realpath(info["data_directory"]) != data_dir
    ):
        raise BackupError(
            f"the postmaster on port {cfg.pg.port} runs {info['data_directory']}, not "
            f"{info['data_dir']}: refusing"
        )
    if info["cluster_name"] != req.confirm:
        raise BackupError(
            f"live cluster_name is {info['cluster_name']!r}, confirm is {req.confirm!r}: refusing"
        )
    want_id = (plan_.get("base") or {}).get("system_identifier")
    if want_id and str(want_id) != str(info["system_identifier"]):
        raise BackupError(
            f"system identifier of the live cluster ({info['system_identifier']}) is not the "
            f"backup's ({want_id}): refusing"
        )
    if expect_recovery is not None and bool(info["in_recovery"]) != expect_recovery:
        state = "in recovery" if info["in_recovery"] else "not in recovery"
        raise BackupError(f"the live cluster is {state}; expected the opposite: refusing")


def _write_json(path, data):
    write_atomic(path, dump_json(data), mode=0o600)


def marker_path(data_dir):
    return data_dir.rstrip("/") + ".kg-pitr-restoring"


def state_path(data_dir):
    return data_dir.rstrip("/") + ".kg-pitr.json"


def _stamp():
    return utcnow().strftime("%Y%m%dT%H%M%SZ")


def _restore_command(cfg, req):
    if cfg.engine == "pgbackrest":
        return None
    tool_dir = req.tool_dir or os.path.join(cfg.spool_dir, "pitr-tool")
    return install.install_tool(cfg, tool_dir, req.python, cfg.pg.os_user)["restore_command"]


def _restore_into(cfg, req, plan_, data_dir, settings, delta=None, meter=None):
    """Restore the plan's backup into data_dir and write its recovery settings (pause)."""
    timeline = req.target_timeline
    return engine.restore_to_target(
        cfg,
        plan_["backup"],
        data_dir,
        plan_["recovery_target"],
        settings,
        lambda: _restore_command(cfg, req),
        timeline=None if timeline in (None, "", "latest") else timeline,
        delta=delta,
        meter=meter,
    )


def _segment_no(name):
    return int(name[8:16], 16) * (0x100000000 // SEGMENT_SIZE) + int(name[16:24], 16)


class _ReplayMeter:
    """WAL replay as segments replayed of the segments the plan needs (wal_from..wal_to, the
    archive's end for a target after it): pg_last_wal_replay_lsn() read while waiting."""

    QUERY = "SELECT pg_last_wal_replay_lsn()::text"

    def __init__(self, meter, plan_):
        self.meter = meter or Progress(None)
        self.first = self.total = None
        if plan_.get("wal_from") and plan_.get("wal_to"):
            self.first = _segment_no(plan_["wal_from"])
            self.total = _segment_no(plan_["wal_to"]) - self.first + 1
        self.meter.phase("replay", total=self.total, unit="segments")

    def observe(self, conn):
        if self.meter.path is None or self.first is None:
            return
        (lsn,) = conn.execute(self.QUERY).fetchone()
        if lsn:
            done = parse_lsn(lsn) // SEGMENT_SIZE - self.first
            self.meter.update(max(0, min(done, self.total)))

    def finish(self):
        """Paused at the target: every segment the plan needs is replayed."""
        if self.total is not None:
            self.meter.update(self.total)
        self.meter.finish()


def start_and_wait_paused(cfg, data_dir, log, timeout, result, queries=None, replay=None):
    """Start data_dir recovering (as postgres) and wait until replay pauses at the target.
    Fails with PostgreSQL's message when recovery ends first; the cluster is then stopped.
    `replay` (a _ReplayMeter) is told how far replay got while waiting."""
    uid, gid = cfg.pg.os_ids()
    if not os.path.exists(log):
        open(log, "a").close()  # noqa: SIM115 - pg_ctl appends as postgres
    os.chown(log, uid, gid)
    offset = os.path.getsize(log)
    started = time.monotonic()
    verify.pg_ctl(cfg, "start", "-D", data_dir, "-W", "-l", log, timeout=60)
    deadline = started + timeout
    while True:
        text = _log_since(log, offset)
        if ENDED_EARLY in text:
            verify.stop_scratch(cfg, data_dir)
            raise BackupError(
                f"{ENDED_EARLY}: the archive does not reach the target; the cluster is stopped "
                f"(log {log})"
            )
        try:
            with contextlib.closing(cfg.pg.connect()) as conn:
                if result["first_read_seconds"] is None:
                    conn.execute("SELECT 1").fetchone()
                    result["first_read_seconds"] = round(time.monotonic() - started, 3)
                in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
                if not in_recovery:
                    raise BackupError(
                        "the restored cluster left recovery instead of pausing at the target"
                    )
                query = "SELECT pg_get_wal_replay_pause_state()"
                state = conn.execute(query).fetchone()[0]
                _audit(queries, query)
                if replay is not None:
                    replay.observe(conn)
                if state == "paused":
                    if replay is not None:
                        replay.finish()
                    return round(time.monotonic() - started, 3)
        except BackupError as err:
            if "left recovery" in str(err):
                raise
            if _pid_dir(data_dir) is None and time.monotonic() - started > 2:
                text = _log_since(log, offset)
                if ENDED_EARLY in text:
                    continue
                raise BackupError(
                    f"the restored cluster stopped during recovery; log: "
                    f"{' | '.join(text.strip().splitlines()[-8:])}"
                ) from None
        if time.monotonic() > deadline:
            raise BackupError(f"recovery did not pause at the target within {timeout}s")
        time.sleep(0.1)


def _log_since(path, offset):
    try:
        with open(path, errors="replace") as handle:
            handle.seek(offset)
            return handle.read()
    except OSError:
        return ""


def report_position(cfg, result, plan_, queries=None):
    query = (
        "SELECT pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp(), "
        "pg_get_wal_replay_pause_state(), (SELECT timeline_id FROM pg_control_checkpoint())"
    )
    with contextlib.closing(cfg.pg.connect()) as conn:
        lsn, when, state, timeline = conn.execute(query).fetchone()
    _audit(queries, query)
    result["reached_lsn"] = lsn
    result["reached_time"] = iso(when) if when else None
    result["paused"] = state == "paused"
    start = (plan_.get("base") or {}).get("start_lsn")
    if lsn and start:
        result["wal_bytes_replayed"] = parse_lsn(lsn) - parse_lsn(start)
    result["timeline"] = timeline  # of the last restartpoint while paused


# ---- states ----------------------------------------------------------------------------------


def _run_key(plan_):
    return {"backup": plan_["backup"], "target": plan_["target"]}


def recover(cfg, req, result=None, meter=None):
    """state=recovered: restore the chosen chain over the live data directory (moved aside)
    and replay to the target, paused there, read-only, not promoted. `meter`
    (module_utils/progress.Progress) is told the bytes restored and the segments replayed."""
    result = result if result is not None else empty_result(req)
    steps = _Steps(result)
    queries = result["queries"]
    lcfg = live_cfg(cfg, req)
    data_dir = lcfg.pg.data_dir.rstrip("/")
    with steps("plan"):
        target = parse_target(req)
        plan_ = plan(cfg, req, target)
    result["plan"] = plan_
    result["backup_id"] = plan_["backup"]
    marker = read_json(marker_path(data_dir))
    state = read_json(state_path(data_dir))
    # A killed run is finished in the mode it started (its marker says which).
    mode = (marker.get("mode") or "full") if marker else req.mode
    result["mode"] = mode
    if req.run_id and not RUN_ID_RE.match(req.run_id):
        raise BackupError(f"run_id {req.run_id!r}: letters, digits, '.', '_' and '-' only")
    unfinished = state if (state or {}).get("phase") != "promoted" else None
    run = req.run_id or (marker or {}).get("run") or (unfinished or {}).get("run") or _stamp()
    for found in (marker, state):
        if found and found.get("run") != run and found.get("phase") != "promoted":
            raise BackupError(
                f"PITR run {found.get('run')} left {data_dir} in phase {found.get('phase')}: "
                f"re-run it with run_id {found.get('run')} (or promote/release it) first"
            )
    aside = (
        req.aside_dir
        or (marker or {}).get("aside_dir")
        or ((state or {}).get("aside_dir") if (state or {}).get("run") == run else None)
        or f"{data_dir}.pre-restore-{run}"
    ).rstrip("/")
    result["aside_dir"] = aside
    ours = (
        bool(state) and state.get("run") == run and state.get("phase") in ("recovering", "paused")
    )
    with steps("identity"):
        info = probe(lcfg, queries)
        if req.confirm != cfg.cluster:
            assert_identity(cfg, req, info, plan_, None)
    same_target = ours and state.get("key") == _run_key(plan_)
    log = f"{data_dir}.kg-pitr-{run}.log"
    if same_target and not marker and info["running"]:
        assert_identity(cfg, req, info, plan_, True)
        was_paused = info.get("pause_state") == "paused"
        if not was_paused:
            with steps("replay"):
                start_wait = time.monotonic()
                _wait_running_paused(lcfg, req.timeout, result, queries,
                                     _ReplayMeter(meter, plan_))  # fmt: skip
                result["steps"]["replay"] = round(time.monotonic() - start_wait, 3)
        report_position(lcfg, result, plan_, queries)
        result["changed"] = not was_paused
        _write_json(state_path(data_dir), {**state, "phase": "paused"})
        return result
    result["changed"] = True
    if same_target and not marker:
        assert_identity(cfg, req, info, plan_, None)
    else:
        if marker is None:
            assert_identity(cfg, req, info, plan_, None if ours else False)
            if not ours and os.path.exists(aside):
                raise BackupError(
                    f"aside_dir {aside} exists already: it is never overwritten; pass a new "
                    "run_id or release it (state=released)"
                )
            if not info["running"] and not ours:
                _assert_offline_identity(lcfg, data_dir, plan_)
            if mode == "delta":
                engine.delta_refusal(cfg, data_dir, aside)
            # A node whose data directory is gone (a lost disk) is rebuilt: nothing to keep
            # aside, and a half-restored copy a killed run leaves is replaced on the re-run.
            lost = not os.path.exists(data_dir) and not os.path.exists(aside)
            marker = {"run": run, "data_dir": data_dir, "aside_dir": aside,
                      "backup": plan_["backup"], "started": iso(utcnow()),
                      "replace_restored": ours or lost, "mode": mode}  # fmt: skip
            _write_json(marker_path(data_dir), marker)
        with steps("stop"):
            if _pid_dir(data_dir) is not None:
                how = "immediate" if (ours or os.path.exists(aside)) else "fast"
                verify.pg_ctl(lcfg, "stop", "-D", data_dir, "-m", how, "-w", "-t",
                              str(req.timeout), timeout=req.timeout + 30)  # fmt: skip
        if mode == "delta":
            # In place: only what differs is written; what is replaced or removed is
            # hard-linked into the aside directory first (the delta snapshot).
            sysid = (plan_.get("base") or {}).get("system_identifier")
            with steps("restore"):
                restored = _restore_into(cfg, req, plan_, data_dir, {"hot_standby": True},
                                         delta={"snapshot_dir": aside,
                                                "system_identifier": sysid},
                                         meter=meter)  # fmt: skip
            result["delta"] = restored["delta"]
        else:
            with steps("move_aside"):
                _converge_dirs(data_dir, aside, marker)
            with steps("restore"):
                restored = _restore_into(
                    cfg, req, plan_, data_dir, {"hot_standby": True}, meter=meter
                )
        result["plan"]["restored_from"] = restored.get("location")
        # Every aside copy this cluster's rollbacks kept: state=released deletes only these.
        asides = [a for a in kept_asides(state) if a != os.path.abspath(aside)]
        _write_json(state_path(data_dir), {"run": run, "phase": "recovering",
                                           "key": _run_key(plan_), "aside_dir": aside,
                                           "asides": asides + [os.path.abspath(aside)],
                                           "data_dir": data_dir, "mode": mode,
                                           "delta": result["delta"]})  # fmt: skip
        os.unlink(marker_path(data_dir))
    with steps("replay"):
        replay = _ReplayMeter(meter, plan_)
        if _pid_dir(data_dir) is None:
            start_and_wait_paused(lcfg, data_dir, log, req.timeout, result, queries, replay)
        else:
            _wait_running_paused(lcfg, req.timeout, result, queries, replay)
    report_position(lcfg, result, plan_, queries)
    state = read_json(state_path(data_dir)) or {}
    _write_json(state_path(data_dir), {**state, "phase": "paused"})
    return result


def _wait_running_paused(lcfg, timeout, result, queries, replay):
    deadline = time.monotonic() + timeout
    while True:
        info = probe(lcfg, queries)
        if info.get("pause_state") == "paused":
            replay.finish()
            return
        if not info["running"] or not info.get("in_recovery"):
            raise BackupError("the restored cluster is no longer recovering towards the target")
        if time.monotonic() > deadline:
            raise BackupError(f"recovery did not pause at the target within {timeout}s")
        time.sleep(0.2)


def _assert_offline_identity(lcfg, data_dir, plan_):
    """A stopped live cluster: its pg_control must be the backup's system."""
    want = (plan_.get("base") or {}).get("system_identifier")
    if not os.path.isdir(data_dir) or not want:
        return
    proc = command.run([lcfg.pg.binary("pg_controldata"), data_dir], check=False)
    match = re.search(r"Database system identifier:\s+(\d+)", proc.stdout)
    if match and match.group(1) != str(want):
        raise BackupError(
            f"system identifier of {data_dir} ({match.group(1)}) is not the backup's ({want})"
        )


def _converge_dirs(data_dir, aside, marker):
    """From whatever a killed run left, reach: aside holds the original, data_dir absent."""
    has_data, has_aside = os.path.exists(data_dir), os.path.exists(aside)
    if has_data and not has_aside:
        if marker.get("replace_restored"):
            shutil.rmtree(data_dir)
        else:
            os.rename(data_dir, aside)
    elif has_data and has_aside:
        if not os.path.exists(os.path.join(aside, "PG_VERSION")):
            raise BackupError(f"{aside} is not a data directory: refusing to touch {data_dir}")
        shutil.rmtree(data_dir)  # a half-restored copy; the original is safe aside
    elif not has_aside and not marker.get("replace_restored"):
        raise BackupError(
            f"neither {data_dir} nor the aside copy {aside} exists: refusing to guess"
        )


def promote(cfg, req, result=None):
    """state=promoted: end recovery of the paused cluster (new timeline), nothing else."""
    result = result if result is not None else empty_result(req)
    steps = _Steps(result)
    queries = result["queries"]
    lcfg = live_cfg(cfg, req)
    data_dir = lcfg.pg.data_dir.rstrip("/")
    state = read_json(state_path(data_dir)) or {}
    result["aside_dir"] = state.get("aside_dir")
    with steps("identity"):
        info = probe(lcfg, queries)
    if (
        info["running"]
        and not info.get("in_recovery")
        and state.get("phase") == "promoted"
        and (not req.run_id or state.get("run") == req.run_id)
    ):
        assert_identity(cfg, req, info, {}, False)
        result.update(promoted=True, timeline=state.get("timeline"),
                      backup_id=(state.get("key") or {}).get("backup"),
                      plan=state.get("plan") or {})  # fmt: skip
        return result
    with steps("plan"):
        plan_ = plan(cfg, req, parse_target(req))
    result["plan"] = plan_
    result["backup_id"] = plan_["backup"]
    if not info["running"]:
        raise BackupError(f"no cluster runs {data_dir}: nothing to promote")
    assert_identity(cfg, req, info, plan_, True)
    if info.get("pause_state") != "paused":
        raise BackupError("recovery is not paused at the target: refusing to promote")
    if state.get("key") and state["key"] != _run_key(plan_):
        raise BackupError(
            f"the paused cluster was recovered to {state['key']}, not to this plan: refusing"
        )
    report_position(lcfg, result, plan_, queries)
    with steps("promote"):
        with contextlib.closing(lcfg.pg.connect()) as conn:
            query = "SELECT pg_promote(true, %s)"
            done = conn.execute(query, (int(min(req.timeout, 3600)),)).fetchone()[0]
            _audit(queries, query)
            if not done:
                raise BackupError(f"pg_promote did not finish within {req.timeout}s")
            query = "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"
            result["timeline"] = int(conn.execute(query).fetchone()[0], 16)
            _audit(queries, query)
        engine.strip_recovery_settings(data_dir, cfg)
    result.update(changed=True, promoted=True, paused=False)
    _write_json(state_path(data_dir), {**state, "phase": "promoted", "timeline": result["timeline"],
                                       "plan": plan_})  # fmt: skip
    return result


def parse_tables(tables):
    out = []
    for item in tables or []:
        match = TABLE_RE.match(str(item))
        if not match:
            raise BackupError(f"table {item!r}: write schema.table or schema.*")
        out.append((match.group(1), match.group(2)))
    if not out:
        raise BackupError("strategy table needs tables (schema.table or schema.*)")
    return out


def _aside_name(table, stamp):
    return f"{table}__pre_restore_{stamp}"[:63]


def restore_tables(cfg, req, result=None, meter=None):
    """state=table_restored: a scratch cluster recovered to the target (paused, read-only);
    each table dumped from it and, in the live database in one transaction, the current table
    renamed aside (kept until released) and the old version loaded."""
    result = result if result is not None else empty_result(req)
    steps = _Steps(result)
    queries = result["queries"]
    lcfg = live_cfg(cfg, req)
    wanted = parse_tables(req.tables)
    if not req.run_id or not RUN_ID_RE.match(req.run_id):
        raise BackupError("strategy table needs run_id (letters, digits, '.', '_', '-')")
    stamp = re.sub(r"[^A-Za-z0-9_]", "_", req.run_id).lower()
    with steps("plan"):
        plan_ = plan(cfg, req, parse_target(req))
    result["plan"] = plan_
    result["backup_id"] = plan_["backup"]
    with steps("identity"):
        info = probe(lcfg, queries)
        if not info["running"]:
            raise BackupError(f"the live cluster at {lcfg.pg.data_dir} is not running")
        assert_identity(cfg, req, info, plan_, False)
    done = _tables_done(lcfg, wanted, stamp, queries)
    if done is not None:
        result["tables"] = done
        return result
    scratch = req.scratch_dir or os.path.join(cfg.spool_dir, f"pitr-scratch-{stamp}")
    port = req.scratch_port or verify.free_port()
    data = os.path.join(scratch, "data")
    uid, gid = cfg.pg.os_ids()
    scfg = verify.scratch_cfg(cfg, port)
    try:
        if os.path.exists(scratch):
            verify.stop_scratch(cfg, data)
            shutil.rmtree(scratch)
        verify.make_reachable(scratch, uid, gid)
        run_dir = os.path.join(scratch, "run")
        os.makedirs(run_dir, mode=0o755)
        os.chown(run_dir, uid, gid)
        hba = os.path.join(scratch, "pg_hba.conf")
        with open(hba, "w", encoding="utf-8") as handle:
            handle.write(f"local all all trust\nhost all {cfg.pg.user} 127.0.0.1/32 trust\n")
        os.chown(hba, uid, gid)
        settings = verify.scratch_settings(cfg, port, run_dir, hba)
        settings.update(cluster_name="knowngood-pitr-scratch", hot_standby=True)
        with steps("restore"):
            _restore_into(cfg, req, plan_, data, settings, meter=meter)
            conf = os.path.join(data, "postgresql.conf")
            if not os.path.exists(conf):
                open(conf, "w").close()  # noqa: SIM115 - Debian keeps it in /etc
                os.chown(conf, uid, gid)
        with steps("replay"):
            start_and_wait_paused(scfg, data, os.path.join(scratch, "server.log"), req.timeout,
                                  result, queries, _ReplayMeter(meter, plan_))  # fmt: skip
        report_position(scfg, result, plan_, queries)
        # Paused at the target, the startup process still holds the locks WAL-logged by
        # transactions that were open there: a DROP TABLE logs its AccessExclusiveLock before
        # the commit the target stops at, and pg_dump would wait on it forever. Promoting the
        # throwaway scratch (archive_mode off) aborts them.
        with steps("end_scratch_recovery"), contextlib.closing(scfg.pg.connect()) as conn:
            query = "SELECT pg_promote(true, %s)"
            if not conn.execute(query, (int(min(req.timeout, 600)),)).fetchone()[0]:
                raise BackupError("the scratch cluster did not leave recovery")
            _audit(queries, query)
        with steps("dump"):
            names = _expand_tables(scfg, wanted, queries)
            dump = os.path.join(scratch, "tables.sql")
            argv = [cfg.pg.binary("pg_dump"), "-h", "127.0.0.1", "-p", port, "-U", cfg.pg.user,
                    "-d", cfg.pg.dbname, "--no-password", "--lock-wait-timeout=60s",
                    "-f", dump]  # fmt: skip
            for schema, table in names:
                argv += ["-t", f'"{schema}"."{table}"']
            command.run(argv, timeout=req.timeout, what="pg_dump from the scratch cluster")
        with steps("load"):
            result["tables"] = _load_tables(lcfg, names, dump, stamp, req.timeout, queries)
    finally:
        with steps("drop_scratch"):
            verify.stop_scratch(cfg, data)
            shutil.rmtree(scratch, ignore_errors=True)
    result["changed"] = True
    result["paused"] = False
    return result


def _expand_tables(scfg, wanted, queries):
    names = []
    query = (
        "SELECT schemaname, tablename FROM pg_tables WHERE schemaname = %s "
        "AND (%s::text = '*' OR tablename = %s::text) ORDER BY tablename"
    )
    with contextlib.closing(scfg.pg.connect()) as conn:
        for schema, table in wanted:
            rows = conn.execute(query, (schema, table, table)).fetchall()
            _audit(queries, query)
            if not rows:
                raise BackupError(f"table {schema}.{table} did not exist at the target")
            names.extend((r[0], r[1]) for r in rows if (r[0], r[1]) not in names)
    return names


def _tables_done(lcfg, wanted, stamp, queries):
    """The report of an earlier run with this run_id when it already loaded every table."""
    query = "SELECT to_regclass(%s) IS NOT NULL"
    with contextlib.closing(lcfg.pg.connect()) as conn:
        out = []
        for schema, table in wanted:
            if table == "*":
                return None
            aside = _aside_name(table, stamp)
            found = conn.execute(query, (f'"{schema}"."{aside}"',)).fetchone()[0]
            _audit(queries, query)
            if not found:
                return None
            out.append({"table": f"{schema}.{table}", "renamed_to": f"{schema}.{aside}",
                        "already_restored": True})  # fmt: skip
    return out or None


_DEPENDENTS_SQL = """
SELECT 'foreign key ' || conname || ' of ' || conrelid::regclass::text
  FROM pg_constraint WHERE confrelid = %(rel)s::regclass AND contype = 'f'
UNION ALL
SELECT DISTINCT 'view ' || r.ev_class::regclass::text
  FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
 WHERE d.refobjid = %(rel)s::regclass AND r.ev_class <> d.refobjid
"""
_RENAME_SQL = """
SELECT format('ALTER TABLE %%I.%%I RENAME TO %%I;', %(schema)s::text, %(table)s::text,
              %(aside)s::text)
UNION ALL
SELECT format('ALTER INDEX %%I.%%I RENAME TO %%I;', %(schema)s::text, c.relname,
              left(c.relname || '__pre_restore_' || %(stamp)s::text, 63))
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE i.indrelid = %(rel)s::regclass
UNION ALL
SELECT format('ALTER SEQUENCE %%I.%%I RENAME TO %%I;', n.nspname, c.relname,
              left(c.relname || '__pre_restore_' || %(stamp)s::text, 63))
  FROM pg_depend d JOIN pg_class c ON c.oid = d.objid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE d.refobjid = %(rel)s::regclass AND c.relkind = 'S' AND d.deptype IN ('a', 'i')
"""


def _count_rows(conn, rel, item):
    """Rows in the live table, or None when it cannot be read: a damaged table is exactly what
    a table restore replaces, so its damage is reported, not fatal."""
    import psycopg

    try:
        return conn.execute(f"SELECT count(*) FROM {rel}").fetchone()[0]
    except (psycopg.errors.DataCorrupted, psycopg.errors.IndexCorrupted) as err:
        item["unreadable"] = str(err).strip().splitlines()[0]
        return None


def _load_tables(lcfg, names, dump, stamp, timeout, queries):
    report, renames = [], []
    with contextlib.closing(lcfg.pg.connect()) as conn:
        for schema, table in names:
            rel = f'"{schema}"."{table}"'
            exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (rel,)).fetchone()[0]
            item = {"table": f"{schema}.{table}", "existed": bool(exists), "rows_before": 0,
                    "renamed_to": None, "referenced_by": []}  # fmt: skip
            if exists:
                item["rows_before"] = _count_rows(conn, rel, item)
                aside = _aside_name(table, stamp)
                params = {"schema": schema, "table": table, "aside": aside, "stamp": stamp,
                          "rel": rel}  # fmt: skip
                item["referenced_by"] = [r[0] for r in conn.execute(_DEPENDENTS_SQL, params)]
                renames += [r[0] for r in conn.execute(_RENAME_SQL, params)]
                item["renamed_to"] = f"{schema}.{aside}"
            report.append(item)
        _audit(queries, "SELECT count(*) FROM <table>")
    script = dump + ".load"
    with open(script, "w", encoding="utf-8") as out:
        out.write("\n".join(renames) + "\n")
        with open(dump, encoding="utf-8") as handle:
            shutil.copyfileobj(handle, out)
    queries.extend(renames)
    queries.append(f"psql --single-transaction -f <pg_dump of {len(names)} table(s)>")
    argv = postgres.psql_argv(lcfg.pg.target, files=[script], single_transaction=True)
    command.run(
        [*argv, "--no-password"],
        timeout=timeout,
        what="loading the restored tables (one transaction)",
    )
    with contextlib.closing(lcfg.pg.connect()) as conn:
        for item in report:
            schema, table = item["table"].split(".", 1)
            item["rows_after"] = conn.execute(
                f'SELECT count(*) FROM "{schema}"."{table}"'
            ).fetchone()[0]
    return report


def release(cfg, req, result=None):
    """state=released: delete what a rollback kept (the aside data directory, or the
    renamed-aside tables of a table restore). Only on explicit request."""
    result = result if result is not None else empty_result(req)
    if req.confirm != cfg.cluster:
        raise BackupError(
            f"confirm {req.confirm!r} does not match the cluster name {cfg.cluster!r}: refusing"
        )
    lcfg = live_cfg(cfg, req)
    if req.strategy == "table":
        if not req.run_id:
            raise BackupError("releasing renamed-aside tables needs the run_id that made them")
        stamp = re.sub(r"[^A-Za-z0-9_]", "_", req.run_id).lower()
        dropped = []
        with contextlib.closing(lcfg.pg.connect()) as conn, conn.transaction():
            for schema, table in parse_tables(req.tables):
                if table == "*":
                    raise BackupError("release names each table (schema.table), not schema.*")
                rel = f'"{schema}"."{_aside_name(table, stamp)}"'
                if conn.execute("SELECT to_regclass(%s) IS NOT NULL", (rel,)).fetchone()[0]:
                    conn.execute(f"DROP TABLE {rel}")
                    result["queries"].append(f"DROP TABLE {rel}")
                    dropped.append(f"{schema}.{_aside_name(table, stamp)}")
        result["tables"] = [{"table": t, "dropped": True} for t in dropped]
        result["changed"] = bool(dropped)
        return result
    aside = release_target(lcfg, req, result["queries"])
    result["aside_dir"] = req.aside_dir
    if aside is None:
        return result
    shutil.rmtree(aside)
    result["changed"] = True
    return result


def kept_asides(state):
    """The aside directories this cluster's rollbacks recorded in its state file."""
    kept = list((state or {}).get("asides") or [])
    if (state or {}).get("aside_dir"):
        kept.append(state["aside_dir"])
    out = []
    for path in kept:
        path = os.path.abspath(path).rstrip("/")
        if path not in out:
            out.append(path)
    return out


def release_target(lcfg, req, queries=None):
    """What state=released may delete, proven before anything is touched: only an aside copy
    this cluster's own restore recorded (<data_dir>.kg-pitr.json), not a symlink, not the live
    data directory or one holding it, not the copy a restore in progress or an unpromoted run
    still needs, a stopped data directory of this cluster's system identifier. None when the
    recorded copy is gone already (a re-run)."""
    if not req.aside_dir:
        raise BackupError("state released needs aside_dir: the directory to delete, named")
    given = os.path.abspath(req.aside_dir).rstrip("/")
    data_dir = os.path.abspath(lcfg.pg.data_dir).rstrip("/")
    refuse = f"{req.aside_dir}: refusing, nothing was changed"
    if os.path.islink(given):
        raise BackupError(f"{req.aside_dir} is a symlink, not a kept data directory: {refuse}")
    real, live = os.path.realpath(given), os.path.realpath(data_dir)
    if real == live or live.startswith(real.rstrip("/") + "/"):
        raise BackupError(
            f"{req.aside_dir} is or holds the live data directory {data_dir}: {refuse}"
        )
    state = read_json(state_path(data_dir)) or {}
    recorded_for = os.path.abspath(state.get("data_dir") or data_dir).rstrip("/")
    kept = kept_asides(state) if recorded_for == data_dir else []
    if given not in kept:
        raise BackupError(
            f"{req.aside_dir} is not an aside copy this cluster's rollbacks kept (recorded in "
            f"{state_path(data_dir)}: {', '.join(kept) or 'none'}): {refuse}"
        )
    marker = read_json(marker_path(data_dir)) or {}
    if marker.get("aside_dir") and os.path.abspath(marker["aside_dir"]).rstrip("/") == given:
        raise BackupError(
            f"restore run {marker.get('run')} is unfinished and keeps the original data "
            f"directory in {req.aside_dir}: finish it first; {refuse}"
        )
    current = os.path.abspath(state.get("aside_dir") or "/").rstrip("/")
    if current == given and state.get("phase") != "promoted":
        raise BackupError(
            f"run {state.get('run')} is {state.get('phase')}, not promoted: {req.aside_dir} is "
            f"the way back; {refuse}"
        )
    if not os.path.exists(given):
        return None
    if _pid_dir(given) is not None:
        raise BackupError(f"a postmaster runs {req.aside_dir}: {refuse}")
    journal = read_json(os.path.join(given, engine.DELTA_JOURNAL)) if os.path.isdir(given) else None
    if not os.path.isdir(given) or not (
        journal or os.path.exists(os.path.join(given, "PG_VERSION"))
    ):
        raise BackupError(f"{req.aside_dir} is not a PostgreSQL data directory: {refuse}")
    info = probe(lcfg, queries)
    want = info.get("system_identifier") or ((state.get("plan") or {}).get("base") or {}).get(
        "system_identifier"
    )
    if journal:  # a delta snapshot: the files a delta restore replaced, and its journal
        found = str(journal.get("system_identifier") or "")
    else:
        proc = command.run([lcfg.pg.binary("pg_controldata"), given], check=False)
        match = re.search(r"Database system identifier:\s+(\d+)", proc.stdout or "")
        found = match.group(1) if match else ""
    if not found:
        raise BackupError(f"cannot read the system identifier of {req.aside_dir}: {refuse}")
    if want and found != str(want):
        raise BackupError(
            f"{req.aside_dir} belongs to system {found}, this cluster is {want}: {refuse}"
        )
    return given


def preflight(cfg, req, result=None):
    """state=planned (and check mode for every state): the plan, nothing touched."""
    result = result if result is not None else empty_result(req)
    steps = _Steps(result)
    if req.state == "released":
        result["aside_dir"] = req.aside_dir
        if req.strategy == "table":
            return result
        result["changed"] = release_target(live_cfg(cfg, req), req, result["queries"]) is not None
        return result
    if req.state == "planned":
        result["request"] = normalise(req)
        if req.confirm is not None:
            with steps("identity"):
                result["cluster"] = primary_identity(cfg, req, result["queries"])
    with steps("plan"):
        plan_ = plan(cfg, req, parse_target(req))
    result["plan"] = plan_
    result["backup_id"] = plan_["backup"]
    if req.state != "planned":
        lcfg = live_cfg(cfg, req)
        info = probe(lcfg, result["queries"])
        if req.confirm != cfg.cluster:
            assert_identity(cfg, req, info, plan_, None)
        result["changed"] = not (
            req.state == "recovered" and info.get("pause_state") == "paused"
        ) and not (req.state == "promoted" and info["running"] and not info.get("in_recovery"))
        if req.state == "recovered" and req.mode == "delta" and result["changed"]:
            with steps("delta_preview"):
                delta_preview(cfg, lcfg, plan_, result)
    return result


def delta_preview(cfg, lcfg, plan_, result):
    """Check mode of a delta recovery: what it would rewrite and remove, as counts and as a
    diff (files as they are now; a running cluster keeps changing them)."""
    preview, result["delta"] = engine.delta_preview(
        cfg, plan_["backup"], lcfg.pg.data_dir.rstrip("/")
    )
    lines = [f"delta restore of {plan_['backup']} into {lcfg.pg.data_dir}"]
    for what in ("create", "rewrite", "remove"):
        paths = preview[what]
        lines += [f"{what} {p}" for p in paths[:DIFF_PATHS]]
        if len(paths) > DIFF_PATHS:
            lines.append(f"{what} ... and {len(paths) - DIFF_PATHS} more")
    result["diff"] = {"prepared": "\n".join(lines) + "\n"}


def run(cfg, req, check_mode=False, result=None):
    """Dispatch one state; the result (filled in place, so a failure still reports the plan,
    the aside directory and the steps done) has the same keys on every path."""
    if req.state not in STATES:
        raise BackupError(f"state must be one of {list(STATES)}, got {req.state!r}")
    if req.strategy not in STRATEGIES:
        raise BackupError(f"strategy must be one of {list(STRATEGIES)}, got {req.strategy!r}")
    if req.mode not in MODES:
        raise BackupError(f"mode must be one of {list(MODES)}, got {req.mode!r}")
    if req.mode == "delta" and req.strategy == "table":
        raise BackupError("mode delta goes with strategy pitr or snapshot (state recovered)")
    result = result if result is not None else empty_result(req)
    started = time.monotonic()
    if check_mode or req.state == "planned":
        preflight(cfg, req, result)
    elif req.state == "released":
        release(cfg, req, result)
    elif req.strategy == "table" or req.state == "table_restored":
        if req.state != "table_restored" or req.strategy != "table":
            raise BackupError("strategy table goes with state table_restored (and released)")
        restore_tables(cfg, req, result, Progress(req.progress_file))
    elif req.state == "recovered":
        recover(cfg, req, result, Progress(req.progress_file))
    else:
        promote(cfg, req, result)
    result["steps"]["total"] = round(time.monotonic() - started, 3)
    return result
