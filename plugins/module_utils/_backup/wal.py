# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""WAL archiving: push (archive_command) and fetch with prefetch (restore_command).

The standalone tool PostgreSQL runs (`kg-wal push %p`), its command line and its installer
are in tool.py; listing the archive and checking its continuity in archive.py.

push: the segment is compressed (and encrypted) once, then sent to every location in
parallel, each location in a worker thread with a deadline. An object already there with the
same content sha256 is success (PostgreSQL retries after a crash); different content is
refused with an ALERT line. Exit 0 only when every required location holds the segment; a
non-required location that fails or does not answer in time is marked down and the segment
recorded as a pending copy under <spool>/pending/, copied by the location's worker in a later
push once it answers.

fetch: from <spool>/prefetch/ when the prefetcher already brought it (checksum verified,
renamed into place, no network); else from the first location that has it (config order; a
location that is down is skipped), then one detached prefetcher fetches the next
`wal_prefetch` segments of the timeline into the spool.

Standard library + this package (boto3 etc. only through them, lazily).
"""

import concurrent.futures
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.codec import (
    decode_file,
    encode_file,
    parse_suffix,
    preload,
    suffix,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (
    WAL_NAME_RE,
    WAL_SEGMENT_RE,
    BackupError,
    LocationUnavailable,
    dump_json,
    iso,
    next_segment,
    sha256_file,
    utcnow,
    write_atomic,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.config import (
    BackupConfig,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.store import (
    ensure_repo,
    is_transient,
    location_key,
    open_locations,
)

PENDING_BUDGET = 15.0  # seconds backfill_pending may spend
# A push waits this long for each location, then leaves its worker behind: an optional
# location gets a pending copy and is marked down, a required one fails the push and
# PostgreSQL retries it. Both well inside the watchdog's minute; the required ones have room
# for a few retries of a slow region.
OPTIONAL_DEADLINE = 10.0
REQUIRED_DEADLINE = 45.0
BACKFILL_MARGIN = 2.0  # a push's backfill stops this long before its location's deadline
DOWN_HOLD_MAX = 30.0  # a non-required location that just failed is skipped for a while
TOOL_NAME = "kg-wal"
PREFETCH_POLL = 0.05  # seconds between looks at what recovery consumed
PREFETCH_IDLE_TIMEOUT = 30.0
PREFETCH_WORKERS = 2


def log(message):
    """One line on stderr: PostgreSQL's log when run as archive/restore_command."""
    sys.stderr.write(f"{TOOL_NAME}: {message}\n")
    sys.stderr.flush()


def wal_key(name, compression, encrypted):
    if not WAL_NAME_RE.match(name or ""):
        raise BackupError(f"not a WAL file name: {name!r}")
    return f"wal/{name[:8]}/{name}.{suffix(compression, encrypted)}"


def _spool(cfg, *parts):
    path = os.path.join(cfg.spool_dir, *parts)
    missing = []
    probe = path
    while probe != cfg.spool_dir and not os.path.isdir(probe):
        missing.append(probe)
        probe = os.path.dirname(probe)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        if missing and os.geteuid() == 0:
            # root (a module, a restore test) must not leave spool directories the PostgreSQL
            # user cannot enter: restore_command would lose its prefetch queue and fast path.
            owner = os.stat(cfg.spool_dir)
            for directory in missing:
                os.chown(directory, owner.st_uid, owner.st_gid)
    except OSError as err:
        raise BackupError(f"spool {path} is not writable: {err.strerror}") from None
    return path


def _repo_cache(cfg):
    return _spool(cfg, "repo")


def _ms(start):
    return int((time.monotonic() - start) * 1000)


# ---- push ------------------------------------------------------------------------------------


class _Encoded:
    """The segment encoded at most twice (plain and encrypted), each only when needed, once
    even when several location threads ask at the same time."""

    def __init__(self, cfg, path, name, staging):
        self.cfg, self.path, self.name, self.staging = cfg, path, name, staging
        self.results = {}
        self._sha = None
        self._locks = {}
        self._guard = threading.Lock()

    def _lock(self, ident):
        with self._guard:
            return self._locks.setdefault(ident, threading.Lock())

    def sha256(self):
        """Content sha256 (for "already archived?"), without encoding."""
        with self._lock("sha"):
            if self._sha is None:
                for _dummy, result in list(self.results.values()):
                    self._sha = result.sha256
                if self._sha is None:
                    self._sha = sha256_file(self.path)
            return self._sha

    def get(self, key):
        """(file, EncodeResult) for locations using this key (None = not encrypted)."""
        ident = key if key is None else bytes(key)
        with self._lock(ident):
            if ident not in self.results:
                encrypted = key is not None
                dst = os.path.join(
                    self.staging,
                    f"{self.name}.{suffix(self.cfg.compression, encrypted)}.{os.getpid()}",
                )
                result = encode_file(
                    self.path,
                    dst,
                    compression=self.cfg.compression,
                    level=self.cfg.compression_level,
                    key=key,
                )
                self.results[ident] = (dst, result)
            return self.results[ident]

    def cleanup(self):
        for dst, _dummy in list(self.results.values()):
            with contextlib.suppress(OSError):
                os.unlink(dst)


def _pending_dir(cfg, location_name):
    return _spool(cfg, "pending", location_name)


def _down_marker(cfg, location_name):
    return os.path.join(_pending_dir(cfg, location_name), ".down")


def _down_hold(cfg):
    """Seconds to skip a failed non-required location: twice the longest retry delay."""
    return min(DOWN_HOLD_MAX, max(2.0, 2 * cfg.retry_max_delay))


def _recently_down(cfg, location_name):
    try:
        age = time.time() - os.stat(_down_marker(cfg, location_name)).st_mtime
        return age < _down_hold(cfg)
    except OSError:
        return False


def _mark_down(cfg, location_name, up=False):
    marker = _down_marker(cfg, location_name)
    if up:
        with contextlib.suppress(OSError):
            os.unlink(marker)
        return
    with contextlib.suppress(OSError):
        write_atomic(marker, iso(utcnow()) + "\n", mode=0o600)


def _record_pending(cfg, location, name, plain_file, sha256, error):
    """Keep the segment for a later copy. The spool keeps the unencrypted form: the key of a
    location that was down since the first push was never read, so the copy is encrypted
    when it is made (_copy_pending)."""
    directory = _pending_dir(cfg, location.name)
    data = os.path.join(directory, os.path.basename(wal_key(name, cfg.compression, False)))
    record = {
        "name": name,
        "file": os.path.basename(data),
        "sha256": sha256,
        "location": location.name,
        "since": iso(utcnow()),
        "error": str(error),
    }
    try:
        if not os.path.exists(data):
            shutil.copyfile(plain_file, data + ".tmp")
            os.replace(data + ".tmp", data)
        write_atomic(os.path.join(directory, name + ".json"), dump_json(record), mode=0o600)
    except OSError as err:
        raise BackupError(f"spool {directory}: {err.strerror}") from None


def _pending_names(directory):
    try:
        return sorted(f[: -len(".json")] for f in os.listdir(directory) if f.endswith(".json"))
    except OSError:
        return []


def pending_copies(cfg):
    """{location: [WAL names waiting to be copied there]} from the spool."""
    out = {}
    base = os.path.join(cfg.spool_dir, "pending")
    if not os.path.isdir(base):
        return out
    for loc in sorted(os.listdir(base)):
        names = _pending_names(os.path.join(base, loc))
        if names:
            out[loc] = names
    return out


def _put_one(cfg, location, name, encoded):
    """Copy the segment to one location: 'stored' | 'exists'; raises on conflict/failure."""
    ensure_repo(location, cfg, cache_dir=_repo_cache(cfg))
    key = wal_key(name, cfg.compression, location.key is not None)
    head = location.head(key)
    if head is not None:
        sha = encoded.sha256()
        if head.get("sha256") == sha:
            return "exists"
        raise _Conflict(location.name, key, head.get("sha256"), sha)
    stored_file, result = encoded.get(location.key)
    location.put_file(key, stored_file, sha256=result.sha256, meta={"wal": name})
    return "stored"


class _Conflict(BackupError):
    def __init__(self, location, key, theirs, ours):
        self.location, self.key = location, key
        super().__init__(
            f"location {location} already has {key} with different content "
            f"(sha256 {str(theirs)[:12]}... there, {ours[:12]}... here); refusing to overwrite"
        )


def _copy_pending(cfg, location, data, record, stored_as):
    """Copy one spooled WAL file; False when the location holds different content."""
    compression, encrypted = stored_as
    ensure_repo(location, cfg, cache_dir=_repo_cache(cfg))
    # Spooled encrypted (by an earlier version of this tool): copied as it is.
    seal = location.key is not None and not encrypted
    key = wal_key(record["name"], compression, encrypted or seal)
    head = location.head(key)
    if head is not None:
        return head.get("sha256") == record["sha256"]
    meta = {"wal": record["name"]}
    if not seal:
        location.put_file(key, data, sha256=record["sha256"], meta=meta)
        return True
    fd, plain = tempfile.mkstemp(dir=_spool(cfg, "staging"), prefix="backfill-")
    os.close(fd)
    try:
        decode_file(data, plain, compression=compression, expect_sha256=record["sha256"])
        encode_file(
            plain,
            plain + ".enc",
            compression=compression,
            level=cfg.compression_level,
            key=location.key,
        )
        location.put_file(key, plain + ".enc", sha256=record["sha256"], meta=meta)
    finally:
        for path in (plain, plain + ".enc"):
            with contextlib.suppress(OSError):
                os.unlink(path)
    return True


def _backfill_location(cfg, location, until, say):
    """Copy one location's pending WAL files, oldest first, until `until` (monotonic).

    `say` takes the lines for the log. Returns {"copied": [...], "left": [...]}."""
    directory = _pending_dir(cfg, location.name)
    names = _pending_names(directory)
    entry = {"copied": [], "left": list(names)}
    for name in names:
        if time.monotonic() > until:
            break
        try:
            with open(os.path.join(directory, name + ".json")) as handle:
                record = json.load(handle)
            data = os.path.join(directory, record["file"])
            stored_as = parse_suffix(record["file"])
            if stored_as is None:
                raise ValueError(f"unknown file type {record['file']}")
        except (OSError, ValueError, KeyError) as err:
            say(f"pending copy {name} -> {location.name}: unreadable record ({err}); dropped")
            _drop_pending(directory, name)
            entry["left"].remove(name)
            continue
        try:
            same = _copy_pending(cfg, location, data, record, stored_as)
        except Exception as err:  # noqa: BLE001 - location failure: keep it pending
            _mark_down(cfg, location.name)
            say(f"pending copy {name} -> {location.name} still failing: {safe_error(err)}")
            break
        if not same:
            say(
                f"ALERT pending copy of {name} to {location.name}: the location holds "
                "different content; leaving the pending copy for an operator"
            )
            continue
        _drop_pending(directory, name, record["file"])
        entry["copied"].append(name)
        entry["left"].remove(name)
    if entry["copied"]:
        _mark_down(cfg, location.name, up=True)
        say(f"backfilled {len(entry['copied'])} pending WAL file(s) to {location.name}")
    return entry


def backfill_pending(cfg, locations=None, budget=PENDING_BUDGET):
    """Copy pending WAL files to their locations, oldest first, for at most `budget` seconds.

    Returns {location: {"copied": [...], "left": [...]}}."""
    until = time.monotonic() + budget
    report = {}
    by_name = {loc.name: loc for loc in (locations or open_locations(cfg))}
    for loc_name, names in pending_copies(cfg).items():
        location = by_name.get(loc_name)
        if location is None or _recently_down(cfg, loc_name):
            report[loc_name] = {"copied": [], "left": names}
            continue
        report[loc_name] = _backfill_location(cfg, location, until, log)
    return report


def _drop_pending(directory, name, data_file=None):
    for path in (os.path.join(directory, name + ".json"),) + (
        (os.path.join(directory, data_file),) if data_file else ()
    ):
        with contextlib.suppress(OSError):
            os.unlink(path)


def safe_error(err):
    """Error text for logs: BackupErrors are written to be safe; others only by type."""
    if isinstance(err, BackupError):
        return str(err)
    return type(err).__name__


def _store_one(cfg, location, name, encoded, until, outcome):
    """A location's worker: the segment, then the location's pending copies while time is
    left. It only fills `outcome`: a worker left behind at its deadline must not be writing
    to stderr when the interpreter exits."""
    try:
        outcome["status"] = _put_one(cfg, location, name, encoded)
    except Exception as err:  # noqa: BLE001 - judged by push()
        outcome["error"] = err
        return
    if _pending_names(os.path.join(cfg.spool_dir, "pending", location.name)):
        notes = []
        outcome["backfill"] = _backfill_location(cfg, location, until, notes.append)
        outcome["notes"] = notes


def _prepare(cfg, locations):
    """Import and build on this thread what worker threads would on first use; returns
    {location name: error} for those that cannot be prepared.

    Two workers' first imports (botocore's through six.moves' finder, which imports
    http.client under the global import lock, and cryptography's x509, holding email's module
    locks) deadlocked, and a push hung for good."""
    preload(cfg.compression, any(loc.encrypt for loc in locations))
    errors = {}
    for location in locations:
        try:
            location.prepare()
        except Exception as err:  # noqa: BLE001 - the caller's to judge
            errors[location.name] = err
    return errors


def _store_everywhere(cfg, locations, name, encoded):
    """{location name: outcome}, each location in a daemon thread of its own, waited for
    until its deadline. An outcome has "status" (and "backfill"), or "error"; a location
    that did not answer in time gets an error and its worker is left behind (daemon threads
    end with the process)."""
    unprepared = _prepare(cfg, locations)
    outcomes = {loc.name: {} for loc in locations}
    for loc_name, err in unprepared.items():
        outcomes[loc_name]["error"] = err
    workers = []
    for location in (loc for loc in locations if loc.name not in unprepared):
        limit = REQUIRED_DEADLINE if location.required else OPTIONAL_DEADLINE
        deadline = time.monotonic() + limit
        worker = threading.Thread(
            target=_store_one,
            args=(
                cfg,
                location,
                name,
                encoded,
                deadline - BACKFILL_MARGIN,
                outcomes[location.name],
            ),
            name=f"kg-wal {location.name}",
            daemon=True,
        )
        worker.start()
        workers.append((location, worker, deadline, limit))
    results = {loc: outcome for loc, outcome in outcomes.items() if outcome}
    for location, worker, deadline, limit in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
        results[location.name] = dict(outcomes[location.name]) or {
            "error": LocationUnavailable(f"location {location.name}: no answer within {limit:g}s")
        }
    return results


def push(cfg, path):
    """Archive one WAL file (segment, .history, .backup, .partial) to every location.

    Returns {name, sha256, size, locations: {name: status}, pending, duration_ms}; raises
    BackupError when a required location does not hold it, an optional one has neither the
    segment nor a pending copy, or on a conflict."""
    start = time.monotonic()
    name = os.path.basename(path)
    if not WAL_NAME_RE.match(name):
        raise BackupError(f"not a WAL file name: {name!r} ({path})")
    if not os.path.isfile(path):
        raise BackupError(f"WAL file {path} does not exist")
    locations = open_locations(cfg)
    encoded = _Encoded(cfg, path, name, _spool(cfg, "staging"))
    statuses = {}
    errors = {}
    conflicts = []
    backfill = {}
    try:
        todo = []
        for location in locations:
            if not location.required and _recently_down(cfg, location.name):
                errors[location.name] = BackupError(
                    f"location {location.name}: failed less than {int(_down_hold(cfg))}s ago"
                )
            else:
                todo.append(location)
        for loc_name, outcome in _store_everywhere(cfg, todo, name, encoded).items():
            for note in outcome.get("notes", ()):
                log(note)
            if "status" in outcome:
                statuses[loc_name] = outcome["status"]
                if "backfill" in outcome:
                    backfill[loc_name] = outcome["backfill"]
            elif isinstance(outcome["error"], _Conflict):
                conflicts.append(outcome["error"])
                statuses[loc_name] = "conflict"
            else:
                errors[loc_name] = outcome["error"]
        for location in locations:
            if location.name not in errors:
                continue
            err = errors[location.name]
            if location.required:
                statuses[location.name] = "failed"
                continue
            # Non-required: keep a copy in the spool, copied by a later push's worker. Only a
            # location that was tried is marked down again: re-marking the skipped ones kept a
            # location down for good while pushes came faster than the hold.
            if location in todo:
                _mark_down(cfg, location.name)
            try:
                plain_file, result = encoded.get(None)
                _record_pending(cfg, location, name, plain_file, result.sha256, err)
                statuses[location.name] = "pending"
            except Exception as perr:  # noqa: BLE001 - cannot even spool: that is a failure
                statuses[location.name] = "failed"
                errors[location.name] = BackupError(
                    f"location {location.name}: {safe_error(err)}; and cannot record the pending "
                    f"copy: {safe_error(perr)}"
                )
        sha = encoded.sha256()
    finally:
        encoded.cleanup()
    pending = pending_copies(cfg)
    summary = " ".join(f"{loc.name}={statuses.get(loc.name, '?')}" for loc in locations)
    if conflicts:
        for err in conflicts:
            log(f"ALERT push {name}: {err}")
        raise BackupError(f"push {name} refused: {conflicts[0]}")
    held = {True: ("stored", "exists"), False: ("stored", "exists", "pending")}
    failed = [loc for loc in locations if statuses.get(loc.name) not in held[loc.required]]
    if failed:
        detail = "; ".join(safe_error(errors.get(loc.name, "failed")) for loc in failed)
        log(f"push {name} FAILED in {_ms(start)}ms: {summary}: {detail}")
        error = BackupError(f"push {name}: location(s) failed: {detail}")
        error.locations = dict(statuses)  # for the metrics: which locations stored it
        raise error
    waiting = sum(len(v) for v in pending.values())
    log(
        f"push {name} ok in {_ms(start)}ms: {summary}"
        + (f"; pending copies: {waiting}" if waiting else "")
    )
    return {
        "name": name,
        "sha256": sha,
        "size": os.path.getsize(path),
        "locations": statuses,
        "errors": {k: safe_error(v) for k, v in errors.items()},
        "pending": pending,
        "backfill": backfill,
        "duration_ms": _ms(start),
    }


# ---- fetch and prefetch ----------------------------------------------------------------------


def _prefetch_dir(cfg):
    return _spool(cfg, "prefetch")


def _find(cfg, location, name, attempts=2):
    """(key, head) of the WAL file in one location, or None; any stored suffix.

    No key derivation here (that waits for a hit): "not archived" must answer fast."""
    key = wal_key(name, cfg.compression, location.encrypt)
    head = location.head(key, attempts=attempts) if location.type == "s3" else location.head(key)
    if head is not None:
        return key, head
    # Written with other settings (compression changed since)? One narrow listing finds it.
    for other in location.list(f"wal/{name[:8]}/{name}.", raw=True):
        base = other.rsplit("/", 1)[-1]
        if parse_suffix(base) and base.split(".", 1)[0] == name:
            head = location.head(other)
            if head is not None:
                return other, head
    return None


def _download(cfg, location, key, head, dest):
    """Download + decode one WAL object into dest (verified against its content sha256)."""
    compression, encrypted = parse_suffix(key.rsplit("/", 1)[-1])
    ensure_repo(location, cfg, cache_dir=_repo_cache(cfg))
    dec_key = None
    if encrypted:
        dec_key = location.key
        if dec_key is None:
            enc = (location.repo or {}).get("encryption") or {}
            if not enc or not cfg.encryption_key:
                raise BackupError(f"location {location.name}: {key} is encrypted; no key")
            dec_key = location_key(cfg, enc["salt"])
    fd, tmp = tempfile.mkstemp(dir=_spool(cfg, "staging"), prefix="fetch-")
    os.close(fd)
    try:
        if location.type in ("local", "export"):
            src = location._path(key)  # local: decode straight from the location's file
        else:
            location.get_file(key, tmp)
            src = tmp
        size_sha = decode_file(
            src,
            dest,
            compression=compression,
            key=dec_key,
            encrypted=encrypted,
            expect_sha256=head.get("sha256"),
        )
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return size_sha[1]


def _serve_from_spool(cfg, name, dest):
    spool = _prefetch_dir(cfg)
    data = os.path.join(spool, name)
    record_path = data + ".json"
    if not (os.path.exists(data) and os.path.exists(record_path)):
        return False
    try:
        with open(record_path) as handle:
            record = json.load(handle)
        if sha256_file(data) != record["sha256"]:
            raise ValueError("checksum mismatch")
    except (OSError, ValueError, KeyError) as err:
        log(f"fetch {name}: prefetched copy unusable ({err}); fetching again")
        for path in (data, record_path):
            with contextlib.suppress(OSError):
                os.unlink(path)
        return False
    try:
        os.replace(data, dest)
    except OSError:  # another filesystem: copy then rename beside dest
        tmp = f"{dest}.kgtmp.{os.getpid()}"
        shutil.copyfile(data, tmp)
        os.replace(tmp, dest)
        os.unlink(data)
    with contextlib.suppress(OSError):
        os.unlink(record_path)
    return True


def fetch(cfg, name, dest, prefetch=True):
    """Restore one WAL file into dest. True when found; False when no location has it."""
    start = time.monotonic()
    if not WAL_NAME_RE.match(name or ""):
        raise BackupError(f"not a WAL file name: {name!r}")
    if _serve_from_spool(cfg, name, dest):
        log(f"fetch {name} ok in {_ms(start)}ms from prefetch spool")
        if prefetch:
            _after_fetch(cfg, name)
        return True
    tried = []
    for location in open_locations(cfg):
        try:
            found = _find(cfg, location, name)
            if found is None:
                tried.append(f"{location.name}=missing")
                continue
            _download(cfg, location, found[0], found[1], dest)
        except Exception as err:  # noqa: BLE001 - next location
            tried.append(f"{location.name}=error")
            log(f"fetch {name}: {safe_error(err)}; trying the next location")
            continue
        log(f"fetch {name} ok in {_ms(start)}ms from {location.name}")
        if prefetch:
            _after_fetch(cfg, name)
        return True
    log(f"fetch {name}: not found in {_ms(start)}ms ({' '.join(tried)})")
    return False


def _after_fetch(cfg, name):
    """Drop spool entries older than name; start the prefetcher when segments are missing."""
    if cfg.wal_prefetch <= 0 or not WAL_SEGMENT_RE.match(name):
        return
    spool = _prefetch_dir(cfg)
    with contextlib.suppress(OSError):
        for entry in os.listdir(spool):
            seg = entry.split(".", 1)[0]
            if WAL_SEGMENT_RE.match(seg) and seg[:8] == name[:8] and seg <= name:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(spool, entry))
    wanted = [next_segment(name, i) for i in range(1, cfg.wal_prefetch + 1)]
    if all(os.path.exists(os.path.join(spool, seg + ".json")) for seg in wanted):
        return
    if _prefetcher_running(cfg):
        return
    start_prefetcher(cfg, name)


def _lock_path(cfg):
    return os.path.join(_prefetch_dir(cfg), ".lock")


def _prefetcher_running(cfg):
    import fcntl

    try:
        fd = os.open(_lock_path(cfg), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _lib_root():
    """The directory holding ansible_collections/ for this very file."""
    here = os.path.abspath(__file__)
    for _dummy in range(__name__.count(".") + 1):
        here = os.path.dirname(here)
    return here


def start_prefetcher(cfg, after):
    """One detached process (own session) fetching the segments after `after` into the spool.

    The configuration (with secrets) goes through a pipe, never through argv or a file."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        f"from {__name__} import _prefetch_main; _prefetch_main(sys.argv[2])"
    )
    log_path = os.path.join(_prefetch_dir(cfg), "prefetch.log")
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, _lib_root(), after],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=logf,
            start_new_session=True,
            close_fds=True,
            cwd="/",
        )
    try:
        proc.stdin.write(json.dumps(cfg.to_dict()).encode())
        proc.stdin.close()
    except OSError:
        pass
    return proc.pid


def _prefetch_main(after):
    cfg = BackupConfig.from_dict(json.loads(sys.stdin.read()))
    prefetch(cfg, after, follow=True)


def _fetch_into_spool(cfg, locations, seg, spool):
    data = os.path.join(spool, seg)
    for location in locations:
        try:
            hit = _find(cfg, location, seg)
            if hit is None:
                continue
            # _download decodes and checks the content sha256 recorded at push time, so the
            # spool only ever holds verified segments; the marker is written after the data.
            digest = _download(cfg, location, hit[0], hit[1], data)
            write_atomic(
                data + ".json", dump_json({"sha256": digest, "from": location.name}), mode=0o600
            )
            return True
        except Exception as err:  # noqa: BLE001 - next location
            log(f"prefetch {seg}: {safe_error(err)}")
    return False


def prefetch(cfg, after, count=None, follow=False, idle_timeout=PREFETCH_IDLE_TIMEOUT):
    """Keep the `count` segments after the newest consumed one (same timeline) in the spool.

    Holds the spool lock. Without `follow`, one window and return. With `follow` (the
    detached prefetcher), the window slides as recovery consumes segments - fetch moves them
    out of the spool, often through kg-wal's shell fast path, which never starts Python - and
    the process ends after `idle_timeout` seconds in which nothing was consumed.
    """
    import fcntl

    count = cfg.wal_prefetch if count is None else count
    spool = _prefetch_dir(cfg)
    fd = os.open(_lock_path(cfg), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return []
    got, waiting = [], []
    base = after
    last_progress = time.monotonic()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=PREFETCH_WORKERS)
    try:
        locations = open_locations(cfg)
        _prepare(cfg, locations)  # a location it fails for fails again in _find, reported
        while True:
            consumed = [s for s in waiting if not os.path.exists(os.path.join(spool, s + ".json"))]
            if consumed:
                base = max(base, *consumed)
                waiting = [s for s in waiting if s not in consumed]
                last_progress = time.monotonic()
            wanted = [
                seg
                for seg in (next_segment(base, i) for i in range(1, count + 1))
                if seg not in waiting and not os.path.exists(os.path.join(spool, seg + ".json"))
            ]
            # Two segments in flight: decoding releases the GIL, and replay must never wait.
            found = pool.map(lambda seg: _fetch_into_spool(cfg, locations, seg, spool), wanted)
            at_end = False
            for seg, ok in zip(wanted, list(found), strict=True):
                if not ok:
                    at_end = True  # the end of the archive (for now)
                    break
                got.append(seg)
                waiting.append(seg)
            if not follow or time.monotonic() - last_progress > idle_timeout:
                break
            time.sleep(1.0 if at_end else PREFETCH_POLL)
        if got:
            log(f"prefetched {len(got)} segment(s): {got[0]}..{got[-1]}")
    finally:
        pool.shutdown(wait=True)
        os.close(fd)
    return got


__all__ = [
    "push",
    "fetch",
    "prefetch",
    "backfill_pending",
    "pending_copies",
    "is_transient",
    "wal_key",
]
