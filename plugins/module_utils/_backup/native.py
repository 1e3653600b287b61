# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The native backup engine: full backups with pg_basebackup, file-level incrementals with the
low-level API, and restores of a chain.

A backup is staged under `spool_dir/backup-staging/<label>`: every file is read once (from
pg_basebackup's stream, in memory, or from the data directory), compressed and hashed once and
encrypted per key variant (locations with encrypt: true) in parallel threads, and uploaded to
every location in parallel. manifest.json (+ pg's backup_manifest) follow, and
`backup.json` is written LAST in each location: it is the commit marker. Only then does the
local catalog learn about the backup.

Each manifest.json lists every file of the data directory; files unchanged since the parent
reference the label that stores them (`ref`), so restoring an incremental reads the newest
manifest only and takes each file from the backup that stores it.

Files smaller than BUNDLE_THRESHOLD are not one object each: each is encoded exactly like a
large file (its own compression frame, its own AES-GCM stream, its own stored sha256) and the
results are concatenated into bundle objects (`bundles/<n>.<ext>`, one stream per key variant).
Their manifest entries carry `bundle` (the bundle's key) and `offset`; `stored_size` and
`stored_sha256` describe the slice. Large files keep `key` (one object each).
"""

import collections
import concurrent.futures
import contextlib
import datetime
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time

from ansible_collections.knowngood.runbooks.plugins.module_utils import postgres
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import codec, command
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.catalog import (
    Catalog,
    backups_prefix,
    entry_key,
    is_committed,
    list_labels,
    manifest_key,
    read_manifest,
    read_manifest_bytes,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.command import run
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (
    BACKUP_TYPES,
    CHUNK,
    BackupError,
    dump_json,
    iso,
    new_label,
    parse_iso,
    parse_lsn,
    read_json,
    segment_name,
    sha256_bytes,
    sha256_file,
    utcnow,
    write_atomic,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils.progress import Progress

MANIFEST_FORMAT = 2  # 2: small files are slices of bundle objects (format 1 still restores)
# Files smaller than this are encoded on their own (own sha256, own AEAD stream) and appended
# to a bundle object instead of being stored as one object each: a cluster is mostly tiny
# files, and a PUT (or a create + fsync) per file dominated the time of a backup.
BUNDLE_THRESHOLD = 256 * 1024
# A full backup's stream is read ahead of the encoders by at most this many bytes (memory).
STREAM_BUFFER = 64 * 1024 * 1024
PIPE_SIZE = 1024 * 1024  # pg_basebackup's stdout pipe (Linux's default is 64 KiB)
# A bundle is closed (and uploaded) once it holds this many stored bytes.
BUNDLE_SIZE = 24 * 1024 * 1024
# Restore decodes the slices of one bundle in groups of about this many stored bytes / files.
_SLICE_GROUP_BYTES = 2 * 1024 * 1024
_SLICE_GROUP_FILES = 64
SAFE_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}$")
# What pg_basebackup leaves out (src/backend/backup/basebackup.c), for the low-level API.
EXCLUDE_FILES = {
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "current_logfiles",
    "postgresql.auto.conf.tmp",
    "pg_internal.init",
    "backup_manifest",
    "recovery.signal",
    "standby.signal",
}
EXCLUDE_DIR_CONTENTS = {
    "pg_wal",
    "pg_replslot",
    "pg_stat_tmp",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_subtrans",
}
MTIME_MARGIN_NS = 2_000_000_000  # file systems with coarse timestamps: be conservative


def _noop(*_args, **_kwargs):
    return None


# ---- adapters to store (kept here so the store's API can move without surprises) -----


def _store():
    from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import (
        store as backup_store,
    )

    return backup_store


def open_target_location(spec, cfg):
    return _store().open_location(spec, cfg)


def location_key(location, spec):
    """The 32-byte key objects in this location are encrypted with (ensure_repo sets it)."""
    if not spec.encrypt:
        return None
    key = getattr(location, "key", None)
    if not isinstance(key, (bytes, bytearray)) or len(key) != codec.KEY_SIZE:
        raise BackupError(f"location {spec.name}: encryption key not set up (ensure_repo)")
    return bytes(key)


# ---- small helpers ---------------------------------------------------------------------------


def cluster_info(conn):
    def one(query):
        return conn.execute(query).fetchone()

    ident = postgres.identity(conn)
    archiving = postgres.settings(conn, ("archive_mode", "archive_command", "archive_library"))
    info = {
        "system_identifier": str(ident["system_identifier"]),
        "pg_version": int(ident["server_version_num"]),
        "data_directory": ident["data_directory"],
        **archiving,
        "in_recovery": ident["in_recovery"],
        "timeline": ident["timeline"],
    }
    row = one(
        "SELECT archived_count, last_archived_wal, last_archived_time, failed_count, "
        "last_failed_wal, last_failed_time FROM pg_stat_archiver"
    )
    info["archiver"] = dict(
        zip(
            (
                "archived_count",
                "last_archived_wal",
                "last_archived_time",
                "failed_count",
                "last_failed_wal",
                "last_failed_time",
            ),
            row,
            strict=True,
        )
    )
    return info


def archiver_state(conn):
    """One line on the archiver (what an operator needs when archiving is stuck)."""
    try:
        arch = cluster_info(conn)["archiver"]
    except Exception as err:  # noqa: BLE001 - diagnosis only
        return f"archiver state unreadable: {type(err).__name__}"
    return (
        f"last archived {arch['last_archived_wal'] or 'none'} at {arch['last_archived_time']}, "
        f"{arch['failed_count']} failures, last failed {arch['last_failed_wal'] or 'none'} "
        f"at {arch['last_failed_time']}"
    )


def stuck_archive(seconds, state):
    return (
        f"the backup's stop segment was not archived within {seconds}s ({state}); the "
        "PostgreSQL log names the archive_command error"
    )


def check_archiving(info, cfg):
    """Clear error when WAL does not reach the archive (the backup would not be restorable)."""
    where = f"cluster at {cfg.pg.host}:{cfg.pg.port}"
    if info["archive_mode"] not in ("on", "always"):
        raise BackupError(
            f"{where} is not archiving WAL (archive_mode = {info['archive_mode']}): a backup "
            "needs the WAL from the archive; set up archiving first (pg_archiving)"
        )
    command = (info["archive_command"] or "").strip()
    if command in ("", "(disabled)") and not info.get("archive_library"):
        raise BackupError(
            f"{where} has archive_mode = {info['archive_mode']} but archive_command is empty: "
            "no WAL reaches the archive; set up archiving first (pg_archiving)"
        )
    arch = info["archiver"]
    failed, archived = arch.get("last_failed_time"), arch.get("last_archived_time")
    if failed and (not archived or failed > archived):
        raise BackupError(
            f"{where}: WAL archiving is failing (last failed segment {arch['last_failed_wal']} at "
            f"{failed}, {arch['failed_count']} failures; last success "
            f"{arch['last_archived_wal'] or 'never'}); fix archive_command before taking backups"
        )


@contextlib.contextmanager
def _lock(cfg):
    os.makedirs(cfg.spool_dir, exist_ok=True)
    path = os.path.join(cfg.spool_dir, "backup.lock")
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupError(
                f"another backup of cluster {cfg.cluster} is running (lock {path})"
            ) from None
        yield


def _norm_ext(compression, encrypted):
    return "." + codec.suffix(compression, encrypted).lstrip(".")


def file_key(cfg, label, path, compression, encrypted):
    return f"{backups_prefix(cfg, label)}files/{path}{_norm_ext(compression, encrypted)}"


def bundle_key(cfg, label, number, compression, encrypted):
    return f"{backups_prefix(cfg, label)}bundles/{number}{_norm_ext(compression, encrypted)}"


def _split_label_file(text):
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _label_wal_info(text):
    fields = _split_label_file(text)
    match = re.match(
        r"^([0-9A-F]+/[0-9A-F]+) \(file ([0-9A-F]{24})\)$", fields.get("START WAL LOCATION", "")
    )
    if not match:
        raise BackupError("backup_label has no START WAL LOCATION")
    return {
        "start_lsn": match.group(1),
        "wal_start": match.group(2),
        "timeline": int(fields.get("START TIMELINE", "1")),
    }


def _stop_segment(timeline, lsn_text):
    lsn = parse_lsn(lsn_text)
    return segment_name(timeline, max(lsn - 1, 0))


def _valid_label(label):
    if not SAFE_LABEL_RE.match(label or ""):
        raise BackupError(f"backup label {label!r} must match {SAFE_LABEL_RE.pattern}")
    return label


# ---- targets: one per location ---------------------------------------------------------------


class _Target:
    def __init__(self, spec, location, key):
        self.spec = spec
        self.name = spec.name
        self.location = location
        self.key = key
        self.variant = "plain" if key is None else "enc-" + codec.key_check_value(key)
        self.error = None
        self._lock = threading.Lock()

    @property
    def ok(self):
        return self.error is None

    def fail(self, err):
        with self._lock:
            if self.error is None:
                self.error = str(err) or type(err).__name__


def open_targets(cfg, *, names=None):
    """(targets, failures) for every configured location (or those named)."""
    store = _store()
    targets, failures = [], {}
    for spec in cfg.locations:
        if names and spec.name not in names:
            continue
        try:
            location = open_target_location(spec, cfg)
            store.ensure_repo(location, cfg)
            targets.append(_Target(spec, location, location_key(location, spec)))
        except Exception as err:  # noqa: BLE001 - a location that is down is reported
            failures[spec.name] = str(err) or type(err).__name__
    return targets, failures


def clean_debris(cfg, targets, progress=_noop):
    """Remove half-written backups (no backup.json) left by a crashed run. Call under the lock."""
    removed = {}
    for target in targets:
        try:
            labels = list_labels(target.location, cfg)
            for label, committed in labels.items():
                if not committed:
                    progress(f"removing debris of an unfinished backup {label} in {target.name}")
                    target.location.delete_prefix(backups_prefix(cfg, label))
                    removed.setdefault(target.name, []).append(label)
        except Exception as err:  # noqa: BLE001
            target.fail(f"cannot list or clean backups: {err}")
    staging_root = os.path.join(cfg.spool_dir, "backup-staging")
    if os.path.isdir(staging_root):
        for name in os.listdir(staging_root):
            shutil.rmtree(os.path.join(staging_root, name), ignore_errors=True)
    return removed


# ---- taking backups --------------------------------------------------------------------------


def _manifest_mtimes(pg_manifest):
    out = {}
    for item in pg_manifest.get("Files", []):
        stamp = item.get("Last-Modified")
        if stamp:
            when = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S GMT").replace(
                tzinfo=datetime.UTC
            )
            out[item["Path"]] = int(when.timestamp()) * 1_000_000_000
    return out


def _walk(root, *, live):
    """(files [(relpath, abspath, stat)], dirs [relpath], links {relpath: target})."""
    files, dirs, links = [], [], {}
    for current, subdirs, names in os.walk(root, followlinks=True):
        rel_dir = os.path.relpath(current, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        if rel_dir:
            dirs.append(rel_dir)
        if rel_dir.startswith("pg_tblspc/") and rel_dir.count("/") == 1:
            full = os.path.join(root, rel_dir)
            if os.path.islink(full):
                links[rel_dir] = os.readlink(full)
        top = rel_dir.split("/", 1)[0]
        keep_contents = not (live and rel_dir in EXCLUDE_DIR_CONTENTS)
        subdirs[:] = sorted(
            d
            for d in subdirs
            if not d.startswith("pgsql_tmp")
            and (keep_contents or (rel_dir == "pg_wal" and d == "archive_status"))
        )
        if live and top == "pg_wal" and rel_dir != "pg_wal":
            continue
        if not keep_contents:
            continue
        for name in sorted(names):
            if name.startswith("pgsql_tmp") or (
                live and name in EXCLUDE_FILES and top != "pg_tblspc"
            ):
                continue
            if not live and not rel_dir and name == "backup_manifest":
                continue
            path = os.path.join(current, name)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue  # dropped while we walked
            if not os.path.isfile(path):
                continue
            files.append((os.path.join(rel_dir, name) if rel_dir else name, path, st))
    return files, dirs, links


def _run_basebackup(cfg, label, data_dir, conn, progress):
    mapping = _tablespace_mapping(conn, data_dir)
    argv = [
        cfg.pg.binary("pg_basebackup"),
        "-h", cfg.pg.host, "-p", cfg.pg.port, "-U", cfg.pg.user,
        "-D", data_dir, "-Fp", "-X", "stream", "--manifest-checksums=SHA256",
        "--checkpoint=fast", "--no-sync", "-l", label, *mapping,
    ]  # fmt: skip
    progress(f"pg_basebackup into {data_dir}")
    run(argv, what="pg_basebackup", timeout=None)


def _cluster_bytes(conn):
    """The databases' size: about what a base backup of the cluster sends."""
    (size,) = conn.execute("SELECT sum(pg_database_size(oid))::bigint FROM pg_database").fetchone()
    return int(size or 0) or None


def _tablespace_mapping(conn, data_dir):
    mapping = []
    for oid, location in conn.execute(
        "SELECT oid, pg_tablespace_location(oid) FROM pg_tablespace "
        "WHERE spcname NOT IN ('pg_default', 'pg_global')"
    ).fetchall():
        if location and os.path.isabs(location):
            mapping.append(f"--tablespace-mapping={location}={data_dir}.tblspc/{oid}")
    return mapping


def _tar_members(stream):
    """(TarInfo, reader) for each member of an uncompressed tar read from a pipe.

    tarfile's own stream mode copies through small buffers (slower than pg_basebackup by
    3x here); this reads headers with TarInfo.frombuf and data straight from the pipe. The
    reader must be drained before the next member (it yields chunks of at most CHUNK bytes).
    """
    while True:
        header = stream.read(tarfile.BLOCKSIZE)
        if len(header) < tarfile.BLOCKSIZE or header == tarfile.NUL * tarfile.BLOCKSIZE:
            return
        info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE, tarfile.XGLTYPE):
            raise BackupError(f"pg_basebackup stream: unsupported tar header type {info.type!r}")
        size = info.size if info.isreg() else 0
        padding = -size % tarfile.BLOCKSIZE

        def chunks(left=size):
            while left:
                block = stream.read(min(CHUNK, left))
                if not block:
                    raise BackupError("pg_basebackup stream ended inside a file")
                left -= len(block)
                yield block

        yield info, chunks()
        if padding:
            stream.read(padding)


class _IdleWatch:
    """Reads a pipe; kills the process when one read waits too long.

    pg_basebackup -X none makes the server wait, at the end of the stream, for the stop
    segment to be archived, with no time limit of its own: a stuck archive_command would hang
    the backup forever. Once bytes have arrived, a read waiting longer than `limit` is that
    wait; the first read (the backup's checkpoint comes before it) gets FIRST_BYTE_LIMIT. Only
    time spent inside read() counts: a reader held back by slow uploads is not a stall."""

    FIRST_BYTE_LIMIT = 900

    def __init__(self, stream, proc, limit):
        self.stream, self.proc, self.limit = stream, proc, limit
        self.waiting_since = None
        self.got_bytes = False
        self.fired = None  # why it killed the process
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="kg-idle", daemon=True)
        self._thread.start()

    def read(self, size):
        self.waiting_since = time.monotonic()
        try:
            data = self.stream.read(size)
        finally:
            self.waiting_since = None
        self.got_bytes = self.got_bytes or bool(data)
        return data

    def _watch(self):
        while not self._done.wait(1.0):
            since = self.waiting_since
            limit = self.limit if self.got_bytes else max(self.limit, self.FIRST_BYTE_LIMIT)
            if since is not None and time.monotonic() - since > limit:
                self.fired = "stop segment" if self.got_bytes else "first byte"
                with contextlib.suppress(OSError):
                    self.proc.kill()
                return

    def error(self, diagnose):
        if self.fired == "first byte":
            return (
                f"pg_basebackup sent nothing for {max(self.limit, self.FIRST_BYTE_LIMIT)}s "
                f"(the backup's checkpoint never completed; {diagnose()})"
            )
        return stuck_archive(self.limit, diagnose())

    def close(self):
        self._done.set()
        self._thread.join()


def _stream_basebackup(cfg, label, pool, add, progress, stop_timeout, diagnose):
    """pg_basebackup's tar stream (stdout), stored while it streams.

    Each file goes to an encoder as it arrives, in memory (chunks of a large file are encoded
    while the rest is still coming; at most STREAM_BUFFER bytes wait for the encoders), so
    copying, compressing and hashing overlap, and nothing is written twice. WAL is not in the
    stream (-X none): the backup needs the archive from its start to its stop segment, which
    take_backup checked is working and the integrity tier proves. Returns (futures, dirs,
    links, backup_manifest bytes, backup_label text). Only for clusters without extra
    tablespaces (a stdout backup cannot hold them); _run_basebackup covers those.
    """
    argv = [
        cfg.pg.binary("pg_basebackup"),
        "-h", cfg.pg.host, "-p", str(cfg.pg.port), "-U", cfg.pg.user,
        "-D", "-", "-Ft", "-X", "none", "--manifest-checksums=CRC32C",
        "--checkpoint=fast", "--no-password", "-l", label,
    ]  # fmt: skip
    progress("pg_basebackup streaming (files are stored as they arrive)")
    budget = _Budget(STREAM_BUFFER)
    futures, dirs, links = [], [], {}
    manifest_raw = label_text = None
    feed = None

    def store(rel, src, size, mtime_ns):
        try:
            add(rel, src, size, mtime_ns)
        finally:
            if isinstance(src, _Feed):
                src.drop()
            else:
                with budget.cond:
                    budget.give(size)

    with tempfile.TemporaryFile() as errors:
        child, preexec = command.child(argv)
        proc = subprocess.Popen(
            child,
            stdout=subprocess.PIPE,
            stderr=errors,
            stdin=subprocess.DEVNULL,
            env=dict(command.COMMAND_ENV),
            preexec_fn=preexec,
        )
        with contextlib.suppress(AttributeError, OSError):  # fewer, larger reads from the pipe
            fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        watch = _IdleWatch(proc.stdout, proc, stop_timeout)
        try:
            for member, chunks in _tar_members(watch):
                rel = member.name.rstrip("/")
                if member.isdir():
                    dirs.append(rel)
                    continue
                if member.issym():
                    if rel.startswith("pg_tblspc/"):
                        links[rel] = member.linkname
                    continue
                if not member.isreg():
                    continue
                mtime_ns = int(member.mtime) * 1_000_000_000
                if member.size < BUNDLE_THRESHOLD or rel in ("backup_manifest", "backup_label"):
                    with budget.cond:
                        budget.take(member.size)
                    data = b"".join(chunks)
                    if rel == "backup_manifest":
                        manifest_raw = data
                        with budget.cond:
                            budget.give(member.size)
                        continue
                    if rel == "backup_label":
                        label_text = data.decode()
                    futures.append(pool.submit(store, rel, data, member.size, mtime_ns))
                    continue
                feed = _Feed(budget)
                futures.append(pool.submit(store, rel, feed, member.size, mtime_ns))
                for block in chunks:
                    feed.put(block)
                feed.close()
                feed = None
        except (tarfile.TarError, OSError, BackupError) as err:
            proc.kill()
            proc.wait()
            if watch.fired:
                raise BackupError(watch.error(diagnose)) from None
            errors.seek(0)
            tail = errors.read().decode(errors="replace").strip()[-1500:]
            raise BackupError(f"pg_basebackup stream broke: {err}; {tail}") from None
        finally:
            watch.close()
            if feed is not None:  # its encoder must not wait for the rest
                feed.close(error="pg_basebackup's stream broke inside this file")
        rc = proc.wait()
        if watch.fired:
            raise BackupError(watch.error(diagnose))
        if rc != 0:
            errors.seek(0)
            tail = errors.read().decode(errors="replace").strip()[-1500:]
            raise BackupError(f"pg_basebackup exited {rc}: {tail}")
    if manifest_raw is None or label_text is None:
        raise BackupError("pg_basebackup's stream had no backup_manifest or backup_label")
    return futures, dirs, links, manifest_raw, label_text


@contextlib.contextmanager
def _chunks_of(path):
    """The content of the file at path, in CHUNK pieces (BackupError when it cannot be read)."""
    try:
        handle = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
    except OSError as err:
        raise BackupError(f"cannot read {path}: {err.strerror}") from None
    with handle:
        yield iter(lambda: handle.read(CHUNK), b"")


class _Budget:
    """Bytes read from pg_basebackup's stream that no encoder has taken yet, at most `limit`
    (one block more when nothing is held, so a file larger than the limit still passes)."""

    def __init__(self, limit):
        self.limit = limit
        self.held = 0
        self.cond = threading.Condition()

    def take(self, size, dropped=lambda: False):
        """Wait for room for size bytes (under cond); False when dropped() turned true."""
        while self.held and self.held + size > self.limit and not dropped():
            self.cond.wait()
        if dropped():
            return False
        self.held += size
        return True

    def give(self, size):
        """Return size bytes (under cond)."""
        self.held -= size
        self.cond.notify_all()


class _Feed:
    """One file's content, handed from the stream's reader to an encoder in chunks as it
    arrives (no staging copy on disk); iterating yields the chunks. The reader put()s and
    close()s; the encoder's side drop()s when it is done, so a failed encoder does not leave
    the reader waiting for room."""

    def __init__(self, budget):
        self.budget = budget
        self.chunks = collections.deque()
        self.closed = False
        self.error = None
        self.dropped = False

    def put(self, block):
        with self.budget.cond:
            if self.budget.take(len(block), lambda: self.dropped):
                self.chunks.append(block)
                self.budget.cond.notify_all()

    def close(self, error=None):
        with self.budget.cond:
            self.closed = True
            self.error = error
            self.budget.cond.notify_all()

    def drop(self):
        with self.budget.cond:
            self.dropped = True
            self.budget.give(sum(len(block) for block in self.chunks))
            self.chunks.clear()

    def __iter__(self):
        cond = self.budget.cond
        while True:
            with cond:
                while not self.chunks and not self.closed:
                    cond.wait()
                if not self.chunks:
                    if self.error:
                        raise BackupError(self.error)
                    return
                block = self.chunks.popleft()
                self.budget.give(len(block))
            yield block


class _Bundle:
    """One open bundle file in the staging directory (appended to under the uploader's lock)."""

    def __init__(self, key, path):
        self.key = key
        self.path = path
        self.handle = open(path, "wb")  # noqa: SIM115 - closed by _Uploader._seal
        self.size = 0
        self.digest = hashlib.sha256()
        self.files = 0

    def append(self, data):
        offset = self.size
        self.handle.write(data)
        self.digest.update(data)
        self.size += len(data)
        self.files += 1
        return offset


class _Uploader:
    """Encode each file once per key variant, upload to every live target of that variant.

    Small files (store_small) are encoded in memory and appended to the variant's open bundle;
    a full bundle is uploaded (to every target of the variant) while encoding goes on."""

    def __init__(self, cfg, targets, tmp_dir, progress, label=None):
        self.cfg = cfg
        self.targets = targets
        self.tmp_dir = tmp_dir
        self.progress = progress
        self.label = label
        self.variants = {}
        for target in targets:
            self.variants.setdefault(target.variant, []).append(target)
        self.up_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, cfg.parallel * len(targets)), thread_name_prefix="kg-up"
        )
        self._counter = 0
        self._lock = threading.Lock()
        self._bundle_lock = threading.Lock()
        self._bundles = {}  # variant -> open _Bundle
        self._bundle_count = 0
        self._sealed = []  # (variant, info, path, [futures])

    def live(self, variant=None):
        return [t for t in self.targets if t.ok and (variant is None or t.variant == variant)]

    def _put(self, target, key, path, stored_sha256=None):
        if not target.ok:
            return
        try:
            if stored_sha256:  # the only copy of this encoding: rename instead of copy
                target.location.put_file(key, path, move=True, stored_sha256=stored_sha256)
            else:
                target.location.put_file(key, path)  # the store retries transient errors
        except Exception as err:  # noqa: BLE001 - the location is marked failed, others go on
            target.fail(f"upload of {key} failed: {err}")

    def put_bytes(self, target, key, data):
        if not target.ok:
            return
        try:
            target.location.put_bytes(key, data)
        except Exception as err:  # noqa: BLE001
            target.fail(f"writing {key} failed: {err}")

    def store(self, src, key_for, size_hint=-1):
        """Encode src (a path, bytes, or an iterable of byte chunks read once) for every
        variant in one pass and upload; {variant: EncodeResult}."""
        if not self.live():
            raise BackupError("every location failed")
        with self._lock:
            self._counter += 1
            n = self._counter
        variants = {v: live for v, ts in self.variants.items() if (live := [t for t in ts if t.ok])}
        tmps = {v: os.path.join(self.tmp_dir, f"{n}.{v}") for v in variants}
        try:
            with contextlib.ExitStack() as stack:
                if isinstance(src, str):
                    chunks = stack.enter_context(_chunks_of(src))
                elif isinstance(src, bytes):
                    chunks = (src,)
                else:
                    chunks = src
                outs = [
                    (stack.enter_context(open(tmps[v], "wb", buffering=CHUNK)), live[0].key)
                    for v, live in variants.items()
                ]
                encoder = codec.Encoder(
                    outs,
                    compression=self.cfg.compression,
                    level=self.cfg.compression_level,
                    size_hint=size_hint,
                )
                for block in chunks:
                    encoder.write(block)
                results = dict(zip(variants, encoder.finish(), strict=True))
            out = {}
            for variant, live in variants.items():
                res, tmp = results[variant], tmps[variant]
                key = key_for(live[0].key is not None)
                if len(live) == 1 and live[0].spec.type in ("local", "export"):
                    self._put(live[0], key, tmp, res.stored_sha256)
                else:
                    for future in [self.up_pool.submit(self._put, t, key, tmp) for t in live]:
                        future.result()
                out[variant] = res
            return out
        finally:
            for tmp in tmps.values():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    def store_small(self, src):
        """Encode a small file (a path, or its bytes) per variant into that variant's bundle;
        {variant: (EncodeResult, bundle key, offset)}."""
        if not self.live():
            raise BackupError("every location failed")
        if isinstance(src, str):
            try:
                with open(src, "rb") as handle:
                    src = handle.read()
            except OSError as err:
                raise BackupError(f"cannot read {src}: {err.strerror}") from None
        variants = {v: live for v, ts in self.variants.items() if (live := [t for t in ts if t.ok])}
        bufs = {v: io.BytesIO() for v in variants}
        encoder = codec.Encoder(
            [(bufs[v], live[0].key) for v, live in variants.items()],
            compression=self.cfg.compression,
            level=self.cfg.compression_level,
            size_hint=len(src),
        )
        encoder.write(src)
        out = {}
        for (variant, live), res in zip(variants.items(), encoder.finish(), strict=True):
            stored = bufs[variant].getvalue()
            with self._bundle_lock:
                bundle = self._bundles.get(variant)
                if bundle is None:
                    bundle = self._open_bundle(variant, live[0].key is not None)
                offset = bundle.append(stored)
                key = bundle.key
                if bundle.size >= BUNDLE_SIZE:
                    self._seal(variant)
            out[variant] = (res, key, offset)
        return out

    def _open_bundle(self, variant, encrypted):
        self._bundle_count += 1
        number = self._bundle_count
        key = bundle_key(self.cfg, self.label, number, self.cfg.compression, encrypted)
        path = os.path.join(self.tmp_dir, f"bundle-{number}.{variant}")
        bundle = self._bundles[variant] = _Bundle(key, path)
        return bundle

    def _seal(self, variant):
        """Close the variant's open bundle and start its uploads (call under _bundle_lock)."""
        bundle = self._bundles.pop(variant)
        bundle.handle.close()
        info = {
            "key": bundle.key,
            "stored_size": bundle.size,
            "stored_sha256": bundle.digest.hexdigest(),
            "files": bundle.files,
        }
        futures = [
            self.up_pool.submit(self._put, t, bundle.key, bundle.path) for t in self.live(variant)
        ]
        self._sealed.append((variant, info, bundle.path, futures))

    def finish_bundles(self):
        """Seal the open bundles, wait for every bundle upload; {variant: [bundle info]}."""
        with self._bundle_lock:
            for variant in list(self._bundles):
                self._seal(variant)
            sealed, self._sealed = self._sealed, []
        out = {}
        for variant, info, path, futures in sealed:
            for future in futures:
                future.result()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            out.setdefault(variant, []).append(info)
        return out

    def close(self):
        with self._bundle_lock:
            for bundle in self._bundles.values():
                bundle.handle.close()
            self._bundles = {}
        self.up_pool.shutdown(wait=True)


def _parent_manifests(cfg, catalog, parent, targets):
    """{variant: manifest dict} of the parent backup, from the catalog cache or a location."""
    out = {}
    for target in targets:
        if target.variant in out:
            continue
        copy = (parent.get("locations") or {}).get(target.name) or {}
        want = (parent.get("manifests") or {}).get(target.variant)
        raw = catalog.load_manifest(parent["label"], target.variant)
        if raw is None and copy.get("status") == "ok":
            with contextlib.suppress(Exception):
                raw = read_manifest_bytes(target.location, cfg, parent["label"])
        if raw is None or (want and sha256_bytes(raw) != want):
            continue
        out[target.variant] = json.loads(raw)
    return out


def take_backup(
    cfg,
    backup_type,
    *,
    label=None,
    progress=None,
    fallback_full=False,
    require_archiving=True,
    stop_timeout=120,
    meter=None,
):
    """Take a full or incremental backup into every location; returns the catalog entry.

    `meter` (module_utils/progress.Progress) is told the bytes stored as they are.

    The entry has `incomplete_locations` ({name: error}) when some location failed; if every
    location failed, BackupError names each one. Nothing is in the catalog before every
    location's backup.json is written.
    """
    progress = progress or _noop
    meter = meter or Progress(None)
    if backup_type not in BACKUP_TYPES:
        raise BackupError(f"backup_type must be one of {BACKUP_TYPES}, got {backup_type!r}")
    catalog = Catalog(cfg)
    conn = cfg.pg.connect()
    try:
        info = cluster_info(conn)
        if info["in_recovery"]:
            raise BackupError(
                f"cluster at {cfg.pg.host}:{cfg.pg.port} is in recovery (a standby): the native "
                "engine backs up the primary"
            )
        parent = None
        if backup_type == "incremental":
            parent = _pick_parent(catalog, info)
            if parent is None:
                if not fallback_full:
                    raise BackupError(
                        f"no full backup of cluster {cfg.cluster} (system identifier "
                        f"{info['system_identifier']}) in the catalog to build an incremental "
                        "on; take a full backup first (or set fallback_full)"
                    )
                progress("no full backup to build on: taking a full backup (fallback_full)")
                backup_type = "full"
        if require_archiving or backup_type == "incremental":
            check_archiving(info, cfg)
        data_dir = cfg.pg.data_dir or info["data_directory"]
        if backup_type == "incremental":
            if os.path.realpath(data_dir) != os.path.realpath(info["data_directory"]):
                raise BackupError(
                    f"pg.data_dir {data_dir} is not the cluster's data_directory "
                    f"{info['data_directory']}"
                )
            if not os.path.isdir(data_dir):
                raise BackupError(
                    f"incremental backups read the data directory: {data_dir} is not on this host"
                )
        label = _valid_label(label or new_label(backup_type))
        if catalog.get(label) is not None:
            raise BackupError(f"a backup labelled {label} already exists in the catalog")
        with _lock(cfg):
            targets, failures = open_targets(cfg)
            clean_debris(cfg, targets, progress)
            if not [t for t in targets if t.ok]:
                failures.update({t.name: t.error for t in targets})
                raise BackupError(
                    "no backup location is usable: "
                    + "; ".join(f"{n}: {e}" for n, e in sorted(failures.items()))
                )
            staging = os.path.join(cfg.spool_dir, "backup-staging", label)
            os.makedirs(os.path.join(staging, "enc"), mode=0o700)
            try:
                return _take(cfg, catalog, conn, info, backup_type, label, parent, targets,
                             failures, staging, progress, stop_timeout, meter)  # fmt: skip
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    finally:
        conn.close()


def _pick_parent(catalog, info):
    for entry in reversed(catalog.entries()):
        if not is_committed(entry) or entry.get("engine", "native") != "native":
            continue
        if entry.get("system_identifier") not in (None, info["system_identifier"]):
            continue
        try:
            chain = catalog.chain(entry["label"])
        except BackupError:
            continue
        if chain and chain[0].get("type") == "full":
            return entry
    return None


def _take(cfg, catalog, conn, info, kind, label, parent, targets, failures, staging, progress,
          stop_timeout, meter):  # fmt: skip
    started = utcnow()
    t0 = time.monotonic()
    uploader = _Uploader(cfg, targets, os.path.join(staging, "enc"), progress, label)
    deferred = _defer_fsync(targets)
    manifests = {t.variant: [] for t in targets}
    pg_manifest_raw = None
    entry = {
        "label": label,
        "type": kind,
        "engine": "native",
        "cluster": cfg.cluster,
        "parent": parent["label"] if parent else None,
        "chain": (list(parent.get("chain") or [parent["label"]]) if parent else []) + [label],
        "system_identifier": info["system_identifier"],
        "pg_version": info["pg_version"],
        "compression": cfg.compression,
        "encrypted": any(t.key is not None for t in targets),
        "start_time": iso(started),
    }
    delta_files = delta_bytes = total = 0
    stored = {t.variant: 0 for t in targets}
    lock = threading.Lock()
    bundles = {}

    def add(rel, src, size, mtime_ns):
        nonlocal delta_files, delta_bytes, total
        if size < BUNDLE_THRESHOLD:
            results = uploader.store_small(src)
        else:
            results = uploader.store(
                src, lambda enc, rel=rel: file_key(cfg, label, rel, cfg.compression, enc), size
            )
        for variant, found in results.items():
            item = {
                "path": rel,
                "mtime_ns": mtime_ns,
                "ref": label,
                "compression": cfg.compression,
                "encrypted": variant != "plain",
            }
            if isinstance(found, tuple):
                res, key, offset = found
                item.update(bundle=key, offset=offset)
            else:
                res = found
                item["key"] = file_key(cfg, label, rel, cfg.compression, variant != "plain")
            item.update(
                size=res.size,
                sha256=res.sha256,
                stored_size=res.stored_size,
                stored_sha256=res.stored_sha256,
            )
            with lock:
                manifests[variant].append(item)
                stored[variant] += res.stored_size
        with lock:
            delta_files += 1
            delta_bytes += size
            total += size
        meter.advance(size)

    pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=cfg.io_parallel, thread_name_prefix="kg-enc"
    )
    try:
        if kind == "full" and not _tablespace_mapping(conn, "/"):
            # What pg_basebackup will send, about: the databases (its own --progress estimate).
            meter.phase("backup", total=_cluster_bytes(conn))
            futures, dirs, links, pg_manifest_raw, label_text = _stream_basebackup(
                cfg, label, pool, add, progress, stop_timeout,
                lambda: archiver_state(conn),
            )  # fmt: skip
            progress(f"pg_basebackup done; storing the last of {len(futures)} files")
            _wait_all(futures, targets, failures)
            entry.update(_label_wal_info(label_text))
            ranges = json.loads(pg_manifest_raw).get("WAL-Ranges") or []
            if not ranges:
                raise BackupError("pg_basebackup's backup_manifest has no WAL-Ranges")
            entry["stop_lsn"] = ranges[-1]["End-LSN"]
        elif kind == "full":
            data = os.path.join(staging, "data")
            meter.phase("backup", total=None)
            _run_basebackup(cfg, label, data, conn, progress)
            with open(os.path.join(data, "backup_manifest"), "rb") as handle:
                pg_manifest_raw = handle.read()
            pg_manifest = json.loads(pg_manifest_raw)
            with open(os.path.join(data, "backup_label"), encoding="utf-8") as handle:
                entry.update(_label_wal_info(handle.read()))
            ranges = pg_manifest.get("WAL-Ranges") or []
            if not ranges:
                raise BackupError("pg_basebackup's backup_manifest has no WAL-Ranges")
            entry["stop_lsn"] = ranges[-1]["End-LSN"]
            mtimes = _manifest_mtimes(pg_manifest)
            files, dirs, links = _walk(data, live=False)
            progress(f"storing {len(files)} files in {len(targets)} locations")
            meter.set_total(sum(st.st_size for _rel, _path, st in files))
            futures = [
                pool.submit(add, rel, path, st.st_size, mtimes.get(rel, st.st_mtime_ns))
                for rel, path, st in files
            ]
            _wait_all(futures, targets, failures)
        else:
            dirs, links = _incremental(
                cfg, catalog, conn, entry, parent, targets, staging, pool, add, manifests,
                failures, progress, stop_timeout, meter,
            )  # fmt: skip
        entry["stop_time"] = iso(utcnow())
        entry["wal_stop"] = _stop_segment(entry["timeline"], entry["stop_lsn"])
        bundles = uploader.finish_bundles()
    finally:
        pool.shutdown(wait=True)
        uploader.close()
    # manifest.json per variant, pg's backup_manifest, then backup.json last
    live = [t for t in targets if t.ok]
    if not live:
        _fail_all(cfg, targets, failures, label)
    raw_manifests = {}
    for variant, items in manifests.items():
        items.sort(key=lambda f: f["path"])
        doc = {
            "format": MANIFEST_FORMAT,
            "cluster": cfg.cluster,
            "label": label,
            "type": kind,
            "parent": entry["parent"],
            "variant": variant,
            "files": items,
            "bundles": sorted(bundles.get(variant, []), key=lambda b: b["key"]),
            "dirs": sorted(set(dirs)),
            "links": links,
            "backup_manifest": (
                {"size": len(pg_manifest_raw), "sha256": sha256_bytes(pg_manifest_raw)}
                if pg_manifest_raw
                else None
            ),
        }
        raw_manifests[variant] = dump_json(doc).encode()
    entry["manifests"] = {v: sha256_bytes(raw) for v, raw in raw_manifests.items()}
    first = next(iter(manifests.values()))
    entry["file_count"] = len(first)
    entry["size"] = sum(f["size"] for f in first)
    entry["delta_size"] = delta_bytes
    entry["delta_files"] = delta_files
    entry["stored_size"] = max(stored.values()) if stored else 0
    prefix = backups_prefix(cfg, label)
    for target in live:
        _write_meta(uploader, cfg, target, prefix, raw_manifests[target.variant], pg_manifest_raw)
    now = iso(utcnow())
    locations = {}
    for target in targets:
        if target.ok:
            locations[target.name] = {
                "status": "ok",
                "error": None,
                "at": now,
                "variant": target.variant,
                "manifest_sha256": entry["manifests"][target.variant],
            }
        else:
            locations[target.name] = {"status": "failed", "error": target.error, "at": now}
    for name, error in failures.items():
        locations[name] = {"status": "failed", "error": error, "at": now}
    entry["locations"] = locations
    entry["verification"] = []
    body = dump_json(entry).encode()
    _flush(targets, deferred)  # everything durable before the commit marker
    for target in [t for t in targets if t.ok]:
        uploader.put_bytes(target, entry_key(cfg, label), body)
    if not [t for t in targets if t.ok]:
        _fail_all(cfg, targets, failures, label)
    for target in targets:  # a location that failed at the very end
        if not target.ok and locations[target.name]["status"] == "ok":
            locations[target.name] = {"status": "failed", "error": target.error, "at": now}
    for target in targets:
        if not target.ok:
            with contextlib.suppress(Exception):
                target.location.delete_prefix(prefix)
    for variant, raw in raw_manifests.items():
        catalog.save_manifest(label, variant, raw)
    entry["duration_s"] = round(time.monotonic() - t0, 3)
    entry = catalog.put(entry)
    incomplete = {n: c["error"] for n, c in locations.items() if c["status"] != "ok"}
    entry["incomplete_locations"] = incomplete
    progress(f"backup {label} committed in {sorted(n for n in locations if n not in incomplete)}")
    return entry


def _defer_fsync(targets):
    """Local directories: write objects without a per-object fsync; _flush syncs them."""
    deferred = []
    for target in targets:
        if callable(getattr(target.location, "flush", None)) and hasattr(target.location, "fsync"):
            target.location.fsync = False
            deferred.append(target)
    return deferred


def _flush(targets, deferred):
    for target in deferred:
        if target.ok:
            try:
                target.location.flush()
            except Exception as err:  # noqa: BLE001
                target.fail(f"flushing the backup to disk failed: {err}")
        target.location.fsync = True


def _write_meta(uploader, cfg, target, prefix, manifest_raw, pg_manifest_raw):
    label = prefix.rstrip("/").rsplit("/", 1)[-1]
    uploader.put_bytes(target, manifest_key(cfg, label), manifest_raw)
    if pg_manifest_raw is not None:
        uploader.put_bytes(target, f"{prefix}backup_manifest", pg_manifest_raw)
    if target.ok and target.spec.type == "export" and cfg.signing_key:
        try:  # rewrites manifest.json (same bytes) and adds manifest.sig
            target.location.write_signed_manifest(label, manifest_raw, cfg.signing_key)
        except Exception as err:  # noqa: BLE001
            target.fail(f"signing manifest.json failed: {err}")


def _wait_all(futures, targets, failures):
    try:
        for future in concurrent.futures.as_completed(futures):
            future.result()
    except BackupError:
        for future in futures:
            future.cancel()
        if not [t for t in targets if t.ok]:
            return
        raise


def _fail_all(cfg, targets, failures, label):
    for target in targets:
        with contextlib.suppress(Exception):
            target.location.delete_prefix(backups_prefix(cfg, label))
    errors = {**failures, **{t.name: t.error for t in targets if t.error}}
    raise BackupError(
        f"backup {label} failed in every location: "
        + "; ".join(f"location {n}: {e}" for n, e in sorted(errors.items()))
    )


def _incremental(cfg, catalog, conn, entry, parent, targets, staging, pool, add, manifests,
                 failures, progress, stop_timeout, meter):  # fmt: skip
    parents = _parent_manifests(cfg, catalog, parent, targets)
    for target in targets:
        copy = (parent.get("locations") or {}).get(target.name) or {}
        if copy.get("status") != "ok":
            target.fail(f"parent backup {parent['label']} is not committed in this location")
        elif target.variant not in parents:
            target.fail(f"manifest of parent backup {parent['label']} unavailable here")
    if not parents or not [t for t in targets if t.ok]:
        raise BackupError(
            f"cannot read the manifest of parent backup {parent['label']} from any location: "
            + "; ".join(f"{t.name}: {t.error}" for t in targets if t.error)
        )
    index = {v: {f["path"]: f for f in doc["files"]} for v, doc in parents.items()}
    base = next(iter(index.values()))
    parent_start_ns = int(parse_iso(parent["start_time"]).timestamp() * 1e9) - MTIME_MARGIN_NS
    data_dir = cfg.pg.data_dir or entry.get("data_directory")
    progress(f"pg_backup_start for incremental {entry['label']} on {parent['label']}")
    conn.execute("SELECT pg_backup_start(%s, true)", (entry["label"],))
    stopped = False
    try:
        files, dirs, links = _walk(data_dir, live=True)
        files.sort(key=lambda f: f[0] == "global/pg_control")  # pg_control last
        changed = []
        for rel, path, st in files:
            old = base.get(rel)
            if (
                old is None
                or old["size"] != st.st_size
                or old["mtime_ns"] // 1_000_000_000 != st.st_mtime_ns // 1_000_000_000
                or st.st_mtime_ns >= parent_start_ns
            ):
                changed.append((rel, path, st.st_size))
            else:
                for variant, items in index.items():
                    manifests.setdefault(variant, []).append(dict(items[rel]))
        progress(f"{len(changed)} of {len(files)} files changed since {parent['label']}")
        meter.phase("backup", total=sum(size for _rel, _path, size in changed))

        def read_and_add(rel, path):
            """Encode the live file as it is read (no copy first): WAL replay from the
            backup's start repairs pages torn by concurrent writes, as for pg_basebackup."""
            try:
                handle = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
            except FileNotFoundError:
                return  # dropped during the backup: WAL replay removes it too
            with handle:
                st = os.fstat(handle.fileno())
                if st.st_size < BUNDLE_THRESHOLD:
                    src = handle.read()
                else:
                    src = iter(lambda: handle.read(CHUNK), b"")
                add(rel, src, st.st_size, st.st_mtime_ns)

        futures = [pool.submit(read_and_add, rel, path) for rel, path, _size in changed]
        _wait_all(futures, targets, failures)
        progress("pg_backup_stop (waiting for the stop segment to be archived)")
        conn.execute(f"SET statement_timeout = {int(stop_timeout * 1000)}")
        try:
            lsn, labelfile, spcmap = conn.execute(
                "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(true)"
            ).fetchone()
        except Exception as err:  # noqa: BLE001
            first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            raise BackupError(
                f"{stuck_archive(stop_timeout, archiver_state(conn))}: {first}"
            ) from None
        stopped = True
        conn.execute("RESET statement_timeout")
        entry.update(_label_wal_info(labelfile))
        entry["stop_lsn"] = lsn
        for name, text in (("backup_label", labelfile), ("tablespace_map", spcmap)):
            if text:
                add(name, text.encode(), len(text.encode()), time.time_ns())
    finally:
        if not stopped:
            with contextlib.suppress(Exception):
                conn.execute("SELECT pg_backup_stop(false)")
    return dirs, links


# ---- restore ---------------------------------------------------------------------------------


def _committed_in(target, cfg, labels):
    try:
        found = list_labels(target.location, cfg)
    except Exception:  # noqa: BLE001
        return False
    return all(found.get(label) is True for label in labels)


def _pick_restore_target(cfg, catalog, entry, location):
    names = [location] if location else [spec.name for spec in cfg.locations]
    if location:
        cfg.location(location)
    targets, failures = open_targets(cfg, names=names)
    chain = entry.get("chain") or [entry["label"]]
    for target in sorted(targets, key=lambda t: names.index(t.name)):
        if _committed_in(target, cfg, chain):
            return target
        failures[target.name] = f"does not hold a committed copy of every backup of {chain}"
    raise BackupError(
        f"no location holds a committed copy of backup {entry['label']} and its chain: "
        + "; ".join(f"{n}: {e}" for n, e in sorted(failures.items()))
    )


def open_backup(cfg, label, location):
    """(catalog entry, the location to restore from, manifest) of backup `label`."""
    catalog = Catalog(cfg)
    entry = catalog.get(label)
    if entry is None:
        raise BackupError(f"no backup labelled {label!r} in the catalog")
    target = _pick_restore_target(cfg, catalog, entry, location)
    manifest, _stored = read_manifest(cfg, target, label)
    return entry, target, manifest


def restore(cfg, label, target_dir, *, location=None, progress=None, delta=None, meter=None):
    """Restore backup `label` (with its chain) into target_dir; verify every file.

    The newest manifest lists every file and the backup that stores it, so files removed
    between backups are simply absent. Full backups then pass pg_verifybackup. Recovery
    configuration is left to the caller (write_recovery).

    With `delta` ({"snapshot_dir": path}) target_dir may hold a stopped data directory of
    the same system: only the files whose size or sha256 differ from the manifest are
    written and the files the backup does not have are removed (see delta_plan). Every file
    replaced or removed is first hard-linked into snapshot_dir, so its old bytes stay there.
    `meter` (module_utils/progress.Progress) is told the bytes restored as they are.
    """
    progress = progress or _noop
    meter = meter or Progress(None)
    started = time.monotonic()
    entry, target, manifest = open_backup(cfg, label, location)
    report = None
    if delta is None:
        if os.path.exists(target_dir) and os.listdir(target_dir):
            raise BackupError(f"restore target {target_dir} exists and is not empty")
        files = manifest["files"]
    uid, gid = cfg.pg.os_ids()
    os.makedirs(target_dir, mode=0o700, exist_ok=True)
    os.chown(target_dir, uid, gid)
    os.chmod(target_dir, 0o700)
    tmp_dir = os.path.join(target_dir, ".kg-restore")
    shutil.rmtree(tmp_dir, ignore_errors=True)  # a killed delta run's downloads
    if delta is not None:
        plan = delta_plan(manifest, target_dir, cfg.io_parallel)
        files = _apply_delta_plan(plan, manifest, target_dir, delta, label, cfg)
        report = delta_report(plan)
    os.makedirs(tmp_dir, mode=0o700)
    for rel in manifest.get("dirs") or []:
        path = os.path.join(target_dir, rel)
        os.makedirs(path, mode=0o700, exist_ok=True)
    for rel in ("pg_wal", "pg_wal/archive_status"):
        os.makedirs(os.path.join(target_dir, rel), mode=0o700, exist_ok=True)
    progress(f"restoring {len(files)} files of {label} from {target.name}")
    meter.phase("restore", total=sum(item["size"] for item in files))
    try:
        written = _fetch_files(cfg, target, entry, files, target_dir, tmp_dir, meter)
        shutil.rmtree(tmp_dir, ignore_errors=True)
        for current, _subdirs, names in os.walk(target_dir):
            os.chown(current, uid, gid)
            os.chmod(current, 0o700)
            for name in names:
                os.chown(os.path.join(current, name), uid, gid)
                os.chmod(os.path.join(current, name), 0o600)
        verified_by = ["sha256"]
        # A delta proved every file it kept by sha256 against the manifest and verified every
        # file it wrote; pg_verifybackup would read the whole directory again, the very cost a
        # delta saves (pgBackRest's --delta does not re-read either).
        if delta is None and entry.get("type") == "full" and manifest.get("backup_manifest"):
            verify_full(cfg, target, label, target_dir, manifest)
            verified_by.append("pg_verifybackup")
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    seconds = time.monotonic() - started
    out = {
        "label": label,
        "chain": entry.get("chain") or [label],
        "location": target.name,
        "target_dir": target_dir,
        "files": len(files),
        "bytes": written,
        "seconds": round(seconds, 3),
        "mb_per_s": round(written / 1e6 / seconds, 1) if seconds else None,
        "verified_by": verified_by,
        "timeline": entry.get("timeline"),
        "wal_start": entry.get("wal_start"),
    }
    if report is not None:
        out["delta"] = {**report, "bytes_written": written, "seconds": out["seconds"]}
    return out


def _fetch_files(cfg, target, entry, files, target_dir, tmp_dir, meter):
    """Fetch, decode and verify (sha256) the manifest items `files` into target_dir; bytes."""
    done = {"bytes": 0}
    lock = threading.Lock()
    default_compression = entry.get("compression")

    def one(item):
        dest = os.path.join(target_dir, item["path"])
        tmp = os.path.join(tmp_dir, item["path"].replace("/", "__"))
        try:
            target.location.get_file(item["key"], tmp)
            codec.decode_file(
                tmp,
                dest,
                compression=item.get("compression", default_compression),
                key=target.key if item.get("encrypted") else None,
                expect_sha256=item["sha256"],
                expect_size=item["size"],
                encrypted=item.get("encrypted"),
            )
        except Exception as err:  # noqa: BLE001
            raise BackupError(
                f"location {target.name}: restoring {item['path']} (stored by {item['ref']}) "
                f"failed: {err}"
            ) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        with lock:
            done["bytes"] += item["size"]
        meter.advance(item["size"])

    bundled = {}
    standalone = []
    for item in files:
        if item.get("bundle"):
            bundled.setdefault(item["bundle"], []).append(item)
        else:
            standalone.append(item)

    def fetch_bundle(key):
        items = bundled[key]
        tmp = os.path.join(tmp_dir, "bundle." + key.replace("/", "__"))
        try:
            target.location.get_file(key, tmp)
        except Exception as err:  # noqa: BLE001
            raise BackupError(
                f"location {target.name}: restoring {_some_paths(items)} (bundle {key} stored by "
                f"{items[0]['ref']}) failed: {err}"
            ) from None
        return tmp

    def slices(path, group):
        size = 0
        with open(path, "rb") as bundle:
            for item in group:
                try:
                    _restore_slice(bundle, item, target, target_dir, default_compression)
                except Exception as err:  # noqa: BLE001
                    raise BackupError(
                        f"location {target.name}: restoring {item['path']} (bundle "
                        f"{item['bundle']} stored by {item['ref']}) failed: {err}"
                    ) from None
                size += item["size"]
        with lock:
            done["bytes"] += size
        meter.advance(size)

    with concurrent.futures.ThreadPoolExecutor(max_workers=cfg.io_parallel) as pool:
        fetches = {pool.submit(fetch_bundle, key): key for key in bundled}
        pending = set(fetches)
        for item in sorted(standalone, key=lambda f: -f["size"]):
            pending.add(pool.submit(one, item))
        try:
            while pending:
                finished, pending = concurrent.futures.wait(
                    pending, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for future in finished:
                    got = future.result()
                    if future in fetches:
                        for group in _slice_groups(bundled[fetches[future]]):
                            pending.add(pool.submit(slices, got, group))
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return done["bytes"]


# ---- delta restore ---------------------------------------------------------------------------

DELTA_JOURNAL = "kg-delta.json"
_TEMP_RE = re.compile(r"^\..+\.tmp$")  # codec's temp files a killed run left beside a file


def delta_refusal(target_dir, snapshot_dir):
    """Why a delta restore of target_dir keeping its old files in snapshot_dir cannot be done
    (a symlink in it, the snapshot on another file system), as a BackupError, or None. Read
    only: the preflight asks before anything is stopped or written."""
    if not os.path.isdir(target_dir):
        return
    _live_tree(target_dir)
    parent = os.path.dirname(os.path.abspath(snapshot_dir).rstrip("/"))
    if os.stat(parent).st_dev != os.stat(target_dir).st_dev:
        raise BackupError(
            f"the delta snapshot {snapshot_dir} would be on another file system than "
            f"{target_dir}: hard links cannot keep the replaced files; use mode full, nothing "
            "was changed"
        )


def _live_tree(target_dir):
    """({relpath: size} of the regular files, [relpath of the dirs], [temp files]) under
    target_dir. BackupError for a symlink anywhere (a linked pg_wal or tablespace): a delta
    restore would hard-link across file systems or write through the link."""
    files, dirs, temps = {}, [], []
    for current, subdirs, names in os.walk(target_dir):
        rel_dir = os.path.relpath(current, target_dir)
        rel_dir = "" if rel_dir == "." else rel_dir
        if rel_dir == ".kg-restore":
            subdirs[:] = []
            continue
        for name in subdirs + names:
            path = os.path.join(current, name)
            if os.path.islink(path):
                raise BackupError(
                    f"{path} is a symlink (a linked pg_wal or tablespace): mode delta restores "
                    "plain data directories only; use mode full, nothing was changed"
                )
        if rel_dir:
            dirs.append(rel_dir)
        for name in names:
            rel = os.path.join(rel_dir, name) if rel_dir else name
            if _TEMP_RE.match(name):
                temps.append(rel)
                continue
            st = os.lstat(os.path.join(current, name))
            if not os.path.isdir(os.path.join(current, name)):
                files[rel] = st.st_size
    return files, dirs, temps


def delta_plan(manifest, target_dir, parallel=2):
    """What a delta restore of `manifest` into target_dir changes, read-only: the manifest's
    files that are missing (create) or differ (rewrite), and the files (remove) and
    directories (remove_dirs) the backup does not have. Sizes are compared first; a file of
    the right size is read and its sha256 compared with the manifest's (the checksum the
    backup stored and restores verify). Modification times are not trusted: a file changed
    behind our back can keep its size and mtime, and pgBackRest's --delta checksums too."""
    live, live_dirs, temps = _live_tree(target_dir) if os.path.isdir(target_dir) else ({}, [], [])
    wanted = {item["path"]: item for item in manifest["files"]}
    create = [p for p in wanted if p not in live]
    rewrite = [p for p in wanted if p in live and live[p] != wanted[p]["size"]]
    same_size = [p for p in wanted if p in live and live[p] == wanted[p]["size"]]

    def differs(rel):
        return sha256_file(os.path.join(target_dir, rel)) != wanted[rel]["sha256"]

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        changed = [
            rel for rel, bad in zip(same_size, pool.map(differs, same_size), strict=True) if bad
        ]
    keep_dirs = set(manifest.get("dirs") or []) | {"pg_wal", "pg_wal/archive_status"}
    return {
        "create": sorted(create),
        "rewrite": sorted(rewrite + changed),
        "remove": sorted(p for p in live if p not in wanted),
        "remove_dirs": sorted((d for d in live_dirs if d not in keep_dirs), reverse=True),
        "temps": temps,
        "checked": len(live),
        "checksummed": len(same_size),
        "bytes_checksummed": sum(live[p] for p in same_size),
        "bytes_to_write": sum(wanted[p]["size"] for p in create + rewrite + changed),
        "bytes_to_remove": sum(live[p] for p in live if p not in wanted),
    }


def delta_report(plan):
    """The counts of a delta plan (what the module reports)."""
    return {
        "files_checked": plan["checked"],
        "files_checksummed": plan["checksummed"],
        "files_created": len(plan["create"]),
        "files_rewritten": len(plan["rewrite"]),
        "files_removed": len(plan["remove"]),
        "bytes_checksummed": plan["bytes_checksummed"],
        "bytes_to_write": plan["bytes_to_write"],
        "bytes_removed": plan["bytes_to_remove"],
    }


def _retire(target_dir, snapshot_dir, rel):
    """Hard-link target_dir/rel into snapshot_dir (unless an earlier, killed run already kept
    the original there), then unlink it from target_dir: the old bytes stay in the snapshot,
    nothing is copied."""
    kept = os.path.join(snapshot_dir, rel)
    if not os.path.lexists(kept):
        os.makedirs(os.path.dirname(kept), mode=0o700, exist_ok=True)
        os.link(os.path.join(target_dir, rel), kept)
    os.unlink(os.path.join(target_dir, rel))


def _apply_delta_plan(plan, manifest, target_dir, delta, label, cfg):
    """Journal the plan into snapshot_dir, keep (hard links) and remove every file to replace
    or remove; the manifest items left to restore."""
    snapshot_dir, system_identifier = delta["snapshot_dir"], delta.get("system_identifier")
    os.makedirs(snapshot_dir, mode=0o700, exist_ok=True)
    if os.stat(snapshot_dir).st_dev != os.stat(target_dir).st_dev:
        raise BackupError(
            f"the delta snapshot {snapshot_dir} is on another file system than {target_dir}: "
            "hard links cannot keep the replaced files; use mode full, nothing was changed"
        )
    journal_path = os.path.join(snapshot_dir, DELTA_JOURNAL)
    journal = read_json(journal_path) or {"backup": label, "created": [], "replaced": [],
                                          "removed": [], "data_dir": target_dir,
                                          "system_identifier": system_identifier}  # fmt: skip
    # A file the first (killed) run created is still "created": putting the old state back
    # removes it; the originals of replaced and removed files are the snapshot's.
    known = set(journal["created"])
    journal["created"] = sorted(known | set(plan["create"]))
    replaced = {p for p in plan["rewrite"] if p not in known}
    journal["replaced"] = sorted(set(journal["replaced"]) | replaced)
    journal["removed"] = sorted(set(journal["removed"]) | set(plan["remove"]))
    journal["updated"] = utcnow().isoformat()
    write_atomic(journal_path, json.dumps(journal, indent=1, sort_keys=True), mode=0o600)
    for rel in plan["temps"]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(target_dir, rel))
    for rel in plan["remove"] + plan["rewrite"]:
        _retire(target_dir, snapshot_dir, rel)
    for rel in plan["remove_dirs"]:  # deepest first; emptied above
        shutil.rmtree(os.path.join(target_dir, rel), ignore_errors=True)
    uid, gid = cfg.pg.os_ids()
    os.chown(journal_path, uid, gid)
    for current, _subdirs, _names in os.walk(snapshot_dir):
        os.chown(current, uid, gid)
        os.chmod(current, 0o700)
    todo = set(plan["create"]) | set(plan["rewrite"])
    return [item for item in manifest["files"] if item["path"] in todo]


def _some_paths(items, limit=5):
    paths = sorted(i["path"] for i in items)
    more = f" and {len(paths) - limit} more files" if len(paths) > limit else ""
    return ", ".join(paths[:limit]) + more


def _slice_groups(items):
    """The slices of one bundle, in offset order, in groups for the restore workers."""
    group, size = [], 0
    for item in sorted(items, key=lambda i: i["offset"]):
        group.append(item)
        size += item["stored_size"]
        if size >= _SLICE_GROUP_BYTES or len(group) >= _SLICE_GROUP_FILES:
            yield group
            group, size = [], 0
    if group:
        yield group


def read_slice(handle, item):
    """The stored bytes of a bundled file from an open bundle; BackupError when the bundle is
    cut short or the bytes differ from the manifest's stored size / sha256."""
    handle.seek(item["offset"])
    data = handle.read(item["stored_size"])
    if len(data) != item["stored_size"]:
        raise BackupError(
            f"bundle is truncated: {len(data)} of {item['stored_size']} stored bytes of the file"
        )
    if sha256_bytes(data) != item["stored_sha256"]:
        raise BackupError("checksum mismatch of the stored bytes in the bundle (sha256)")
    return data


def _restore_slice(bundle, item, target, target_dir, default_compression):
    data = read_slice(bundle, item)
    dest = os.path.join(target_dir, item["path"])
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        size, digest = codec.decode_stream(
            io.BytesIO(data),
            out,
            compression=item.get("compression", default_compression),
            key=target.key if item.get("encrypted") else None,
            encrypted=item.get("encrypted"),
        )
    if size != item["size"] or digest != item["sha256"]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dest)
        raise BackupError(
            f"checksum mismatch for {item['path']}: size {size} / sha256 {digest[:16]}..., "
            f"expected {item['size']} / {item['sha256'][:16]}..."
        )


def verify_full(cfg, target, label, data_dir, manifest):
    """pg_verifybackup of a restored full backup against its stored backup_manifest."""
    raw = target.location.get_bytes(f"{backups_prefix(cfg, label)}backup_manifest")
    want = (manifest.get("backup_manifest") or {}).get("sha256")
    if want and sha256_bytes(raw) != want:
        raise BackupError(f"location {target.name}: backup_manifest of {label} is corrupt")
    path = f"{data_dir}.backup_manifest"
    with open(path, "wb") as handle:
        handle.write(raw)
    # Fulls streamed without WAL (-X none) hold no pg_wal segments to parse: -n; their WAL
    # comes from the archive, whose continuity the integrity tier proves.
    has_wal = any(
        re.match(r"^pg_wal/[0-9A-F]{24}$", item.get("path", ""))
        for item in manifest.get("files", [])
    )
    argv = [cfg.pg.binary("pg_verifybackup"), "-q", *([] if has_wal else ["-n"]), "-m", path]
    try:
        run([*argv, data_dir], what=f"pg_verifybackup of {label}")
    finally:
        os.unlink(path)
