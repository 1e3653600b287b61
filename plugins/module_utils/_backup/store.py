# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backup locations: local directories, removable media (export) and S3 (multi-region, cold).

Every location exposes the same small object API; keys are relative to the location's
``<prefix>/<cluster>/`` root and '/'-separated. Object metadata carries the sha256 of the
*content* (before compression/encryption) the caller passes, so "is this object the same
thing?" does not need a download; the stored bytes are verified while they are written
(local: hashed while copied; S3: ETag == locally computed MD5 / multipart MD5).

Standard library + boto3 through module_utils/aws (imported lazily: only S3 locations need it).
"""

import codecs
import contextlib
import ctypes
import datetime
import hashlib
import hmac
import json
import os
import shutil
import tempfile
import threading
import time
import uuid

from ansible_collections.knowngood.runbooks.plugins.module_utils import aws
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (
    CHUNK,
    BackupError,
    LocationUnavailable,
    dump_json,
    iso,
    parse_iso,
    sha256_bytes,
    utcnow,
    write_atomic,
)

REPO_FORMAT = 1
REPO_FILE = "repo.json"
META_DIR = ".meta"  # local / export: per-object metadata sidecars live under <root>/.meta/
_TMP_MARK = ".kgtmp."
_DEFAULT_SALT_INFO = b"knowngood repo salt v1\x00"
_KEY_CACHE = {}
# botocore's client creation (and the first boto3 import) is not safe to run from several
# threads at once; WAL pushes, uploads and verification reach locations from worker threads.
_CLIENT_LOCK = threading.Lock()

# ---- retries ---------------------------------------------------------------------------------


class TransientError(LocationUnavailable):
    """A failure worth retrying (connection refused/reset, timeouts, 5xx, throttling)."""


def is_transient(err):
    if isinstance(err, TransientError):
        return True
    if isinstance(err, BackupError):
        return False
    return aws.is_transient(err)


def retry(fn, cfg, what, attempts=None, sleep=time.sleep):
    """fn() with jittered exponential backoff on transient errors only (`what` names it).

    Not-found, access denied, bad credentials and every BackupError are raised at once."""
    return aws.retry(
        fn,
        attempts=attempts or getattr(cfg, "retry_attempts", 4),
        base_delay=getattr(cfg, "retry_base_delay", 0.5),
        max_delay=getattr(cfg, "retry_max_delay", 8.0),
        retryable=is_transient,
        sleep=sleep,
    )


# ---- keys ------------------------------------------------------------------------------------


def check_key(key):
    """A relative '/'-separated object key; raises BackupError otherwise."""
    if not isinstance(key, str) or not key or key.startswith("/") or "\\" in key:
        raise BackupError(f"invalid object key {key!r}: must be relative and '/'-separated")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts[:-1]) or parts[-1] in ("", ".", ".."):
        raise BackupError(f"invalid object key {key!r}: empty, '.' or '..' component")
    if parts[0] == META_DIR or any(_TMP_MARK in p for p in parts):
        raise BackupError(f"invalid object key {key!r}: reserved name")
    return key


def _check_prefix(prefix):
    prefix = (prefix or "").strip("/")
    if prefix:
        check_key(prefix)
    return prefix


# ---- base ------------------------------------------------------------------------------------


class Location:
    """One backup location. `key` is the derived encryption key once ensure_repo ran."""

    type = ""

    def __init__(self, spec, cfg):
        self.spec = spec
        self.cfg = cfg
        self.name = spec.name
        self.cluster = cfg.cluster
        self.key = None  # set by ensure_repo for encrypting locations; never logged
        self.repo = None

    def __repr__(self):
        return f"<{type(self).__name__} {self.name}>"

    @property
    def encrypt(self):
        return bool(self.spec.encrypt)

    @property
    def required(self):
        return bool(self.spec.required)

    def describe(self):
        """Where it is, for messages (no secrets)."""
        raise NotImplementedError

    def prepare(self):
        """Import and build now, on the calling thread, what the first request would: for
        callers about to use the location from a worker thread (see codec.preload)."""

    def exists(self, key):
        return self.head(key) is not None

    def put_bytes(self, key, data, *, meta=None, sha256=None):
        check_key(key)
        fd, tmp = tempfile.mkstemp(prefix="kg-put-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            return self.put_file(key, tmp, sha256=sha256 or sha256_bytes(data), meta=meta)
        finally:
            os.unlink(tmp)

    def _err(self, message):
        return BackupError(f"location {self.name}: {message}")


def _hash_copy(src, dst_handle):
    """Copy src into an open file, returning (size, sha256 hex)."""
    digest = hashlib.sha256()
    size = 0
    with open(src, "rb") as fin:
        while True:
            block = fin.read(CHUNK)
            if not block:
                break
            digest.update(block)
            dst_handle.write(block)
            size += len(block)
    return size, digest.hexdigest()


# ---- local and export ------------------------------------------------------------------------


class LocalLocation(Location):
    """A directory. Every object is fsynced before put_file returns, unless `fsync` is False:
    then objects are only written, and flush() makes everything written so far durable at once
    (syncfs of the file system; per-file fsync where syncfs is unavailable). A backup writes its
    data with fsync off and calls flush() before its commit marker."""

    type = "local"

    def __init__(self, spec, cfg, fsync=True):
        super().__init__(spec, cfg)
        self.base = spec.path
        self.root = os.path.join(spec.path, cfg.cluster)
        self.fsync = fsync
        self._unsynced = []  # paths written without fsync since the last flush()
        self._unsynced_lock = threading.Lock()

    def flush(self):
        """Make every object written with fsync off durable (data, sidecars, directories)."""
        with self._unsynced_lock:
            paths, self._unsynced = self._unsynced, []
        if not paths:
            return 0
        try:
            if not _syncfs(self.root):
                for path in paths:
                    _fsync_path(path)
                directories = set()
                for path in paths:
                    directory = os.path.dirname(path)
                    while directory.startswith(self.root) and directory not in directories:
                        directories.add(directory)
                        directory = os.path.dirname(directory)
                for directory in sorted(directories, reverse=True):
                    _fsync_path(directory)
        except OSError as err:
            with self._unsynced_lock:
                self._unsynced = paths + self._unsynced
            raise self._err(f"cannot flush written objects to disk: {err.strerror}") from None
        return len(paths)

    def describe(self):
        return self.root

    def _path(self, key):
        return os.path.join(self.root, *check_key(key).split("/"))

    def _meta_path(self, key):
        return os.path.join(self.root, META_DIR, *check_key(key).split("/")) + ".json"

    def _makedirs(self, directory):
        try:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        except PermissionError:
            raise self._err(f"{directory} is not writable") from None
        except OSError as err:
            raise self._err(f"cannot create {directory}: {err.strerror}") from None

    def put_file(self, key, path, *, sha256=None, meta=None, move=False, stored_sha256=None):
        """Store the file at path under key. With move (and the stored_sha256 the caller
        computed while writing it), a file on the same file system is renamed into place
        instead of copied - the backup engine's own encoded temp files."""
        dest = self._path(key)
        directory = os.path.dirname(dest)
        self._makedirs(directory)
        try:
            fd, tmp = tempfile.mkstemp(
                dir=directory, prefix=f".{os.path.basename(dest)}{_TMP_MARK}"
            )
        except PermissionError:
            raise self._err(f"{directory} is not writable") from None
        except OSError as err:
            raise self._err(f"cannot write in {directory}: {err.strerror}") from None
        durable = self.fsync
        try:
            moved = False
            if move and stored_sha256:
                try:
                    os.replace(path, tmp)
                    moved = True
                except OSError:
                    moved = False  # another file system: copy below
            if moved:
                os.close(fd)
                size, stored_sha = os.path.getsize(tmp), stored_sha256
                if durable:
                    with open(tmp, "rb") as handle:
                        os.fsync(handle.fileno())
            else:
                with os.fdopen(fd, "wb") as handle:
                    size, stored_sha = _hash_copy(path, handle)
                    handle.flush()
                    if durable:
                        os.fsync(handle.fileno())
            if os.path.getsize(tmp) != size:
                raise self._err(f"short write of {key}")
            # repo.json must be readable by every user that archives (postgres) or backs up.
            mode = 0o644 if key == REPO_FILE else 0o640
            os.chmod(tmp, mode)
            record = {
                "size": size,
                "sha256": sha256 or stored_sha,
                "stored_sha256": stored_sha,
                "meta": dict(meta or {}),
                "at": iso(utcnow()),
            }
            mpath = self._meta_path(key)
            self._makedirs(os.path.dirname(mpath))
            if durable:
                write_atomic(mpath, dump_json(record), mode=mode)
            else:
                _write_unsynced(mpath, dump_json(record).encode(), mode)
            os.replace(tmp, dest)
            if not durable:
                with self._unsynced_lock:
                    self._unsynced.extend((dest, mpath))
        except OSError as err:
            _unlink(tmp)
            if err.errno == 28:
                raise self._err(f"no space left on {self.base} writing {key}") from None
            raise self._err(f"cannot write {key}: {err.strerror}") from None
        except BaseException:
            _unlink(tmp)
            raise
        return {"size": size, "sha256": record["sha256"], "stored_sha256": stored_sha}

    def get_file(self, key, dest):
        src = self._path(key)
        directory = os.path.dirname(os.path.abspath(dest))
        try:
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(dest)}.")
        except OSError as err:
            raise BackupError(f"cannot write {dest}: {err.strerror}") from None
        try:
            with os.fdopen(fd, "wb") as handle:
                size, digest = _hash_copy(src, handle)
            os.replace(tmp, dest)
        except FileNotFoundError:
            _unlink(tmp)
            raise self._err(f"{key} not found") from None
        except OSError as err:
            _unlink(tmp)
            raise self._err(f"cannot read {key}: {err.strerror}") from None
        except BaseException:
            _unlink(tmp)
            raise
        return {"size": size, "stored_sha256": digest}

    def get_bytes(self, key):
        try:
            with open(self._path(key), "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            raise self._err(f"{key} not found") from None
        except OSError as err:
            raise self._err(f"cannot read {key}: {err.strerror}") from None

    def head(self, key):
        path = self._path(key)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            return None
        except OSError as err:
            raise self._err(f"cannot stat {key}: {err.strerror}") from None
        record = {}
        try:
            with open(self._meta_path(key)) as handle:
                record = json.load(handle)
        except (OSError, ValueError):
            record = {}
        return {
            "size": size,
            "sha256": record.get("sha256"),
            "stored_sha256": record.get("stored_sha256"),
            "meta": record.get("meta", {}),
            "retain_until": None,
        }

    def list(self, prefix="", raw=False):
        """Keys under the folder `prefix` (recursive, sorted). raw=True: keys in the folder
        of `prefix` whose name starts with its last part (e.g. every suffix of one WAL)."""
        if raw:
            folder, dummy, start_of_name = _check_prefix(prefix).rpartition("/")
            directory = os.path.join(self.root, *folder.split("/")) if folder else self.root
            try:
                names = os.listdir(directory)
            except FileNotFoundError:
                return []
            except OSError as err:
                raise self._err(f"cannot list {directory}: {err.strerror}") from None
            return sorted(
                f"{folder}/{n}".lstrip("/")
                for n in names
                if n.startswith(start_of_name)
                and _TMP_MARK not in n
                and not n.endswith(".tmp")
                and os.path.isfile(os.path.join(directory, n))
            )
        prefix = _check_prefix(prefix)
        start = os.path.join(self.root, *prefix.split("/")) if prefix else self.root
        if os.path.isfile(start):
            return [prefix]
        out = []
        for dirpath, dirnames, filenames in os.walk(start, onerror=self._walk_error):
            rel = os.path.relpath(dirpath, self.root)
            if rel == ".":
                dirnames[:] = [d for d in dirnames if d != META_DIR]
                rel = ""
            for name in filenames:
                if _TMP_MARK in name or (name.startswith(".") and name.endswith(".tmp")):
                    continue
                out.append(f"{rel}/{name}".lstrip("/").replace(os.sep, "/"))
        return sorted(out)

    def _walk_error(self, err):
        if isinstance(err, FileNotFoundError):
            return
        raise self._err(f"cannot list {err.filename}: {err.strerror}")

    def delete(self, key):
        for path in (self._path(key), self._meta_path(key)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as err:
                raise self._err(f"cannot delete {key}: {err.strerror}") from None

    def delete_prefix(self, prefix):
        prefix = _check_prefix(prefix)
        if not prefix:
            raise self._err("refusing to delete the whole repository (empty prefix)")
        for base in (self.root, os.path.join(self.root, META_DIR)):
            path = os.path.join(base, *prefix.split("/"))
            if os.path.isdir(path):
                shutil.rmtree(path)
            for candidate in (path, path + ".json"):
                if os.path.isfile(candidate):
                    os.unlink(candidate)

    def check(self):
        """Create the root when missing; prove we can write, read and delete in it."""
        try:
            os.stat(self.base)
        except PermissionError:
            raise self._err(f"{self.base} is not reachable (permission denied)") from None
        except FileNotFoundError:
            parent = os.path.dirname(self.base.rstrip("/")) or "/"
            if not os.path.isdir(parent):
                raise self._err(f"{self.base} does not exist and neither does {parent}") from None
        self._makedirs(self.root)
        probe = os.path.join(self.root, f".probe{_TMP_MARK}{uuid.uuid4().hex}")
        try:
            with open(probe, "wb") as handle:
                handle.write(b"knowngood probe")
                handle.flush()
                os.fsync(handle.fileno())
            os.unlink(probe)
        except PermissionError:
            raise self._err(f"{self.root} is not writable") from None
        except OSError as err:
            _unlink(probe)
            raise self._err(f"{self.root} is not writable: {err.strerror}") from None
        usage = shutil.disk_usage(self.root)
        return {"location": self.name, "type": self.type, "ok": True, "free_bytes": usage.free}


class ExportLocation(LocalLocation):
    """A directory on removable media: must already exist (the medium is mounted)."""

    type = "export"

    def check(self):
        if not os.path.isdir(self.base):
            raise self._err(f"{self.base} does not exist (is the export medium mounted?)")
        return super().check()

    def write_signed_manifest(self, label, manifest_bytes, signing_key):
        """backups/<label>/manifest.json + manifest.sig (HMAC-SHA256 of the manifest)."""
        self.put_bytes(f"backups/{label}/manifest.json", manifest_bytes)
        sig = {
            "algorithm": "HMAC-SHA256",
            "signature": sign_manifest(manifest_bytes, signing_key),
            "manifest_sha256": sha256_bytes(manifest_bytes),
        }
        self.put_bytes(f"backups/{label}/manifest.sig", dump_json(sig).encode())
        return sig

    def verify_signed_manifest(self, label, signing_key, manifest_bytes=None):
        """The manifest bytes when the signature matches; BackupError otherwise."""
        if manifest_bytes is None:
            if not self.exists(f"backups/{label}/manifest.json"):
                raise self._err(f"backup {label}: manifest.json is missing")
            manifest_bytes = self.get_bytes(f"backups/{label}/manifest.json")
        if not self.exists(f"backups/{label}/manifest.sig"):
            raise self._err(f"backup {label}: manifest.sig is missing (unsigned export)")
        try:
            sig = json.loads(self.get_bytes(f"backups/{label}/manifest.sig"))
            signature = sig["signature"]
        except (ValueError, KeyError, TypeError):
            raise self._err(f"backup {label}: manifest.sig is unreadable") from None
        if not hmac.compare_digest(signature, sign_manifest(manifest_bytes, signing_key)):
            raise self._err(
                f"backup {label}: manifest signature does not match "
                "(tampered manifest or another signing_key)"
            )
        return manifest_bytes


def _write_unsynced(path, data, mode):
    """write_atomic without the fsync (LocalLocation.flush() syncs later)."""
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def _syncfs(path):
    """syncfs(2) of the file system holding path; False where it is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        return False
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
    finally:
        os.close(fd)
    return True


def _fsync_path(path):
    flags = os.O_RDONLY | (os.O_DIRECTORY if os.path.isdir(path) else 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return  # deleted since (debris cleanup): nothing to make durable
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sign_manifest(manifest_bytes, signing_key):
    if not signing_key:
        raise BackupError("signing_key is required to sign export manifests")
    key = signing_key.encode() if isinstance(signing_key, str) else signing_key
    return hmac.new(key, manifest_bytes, hashlib.sha256).hexdigest()


# ---- S3 --------------------------------------------------------------------------------------

MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNK = 16 * 1024 * 1024
_MAX_PARTS = 10000


def part_size_for(size):
    """The part size s3transfer ends up using for our TransferConfig (it doubles to fit)."""
    chunk = MULTIPART_CHUNK
    while (size + chunk - 1) // chunk > _MAX_PARTS:
        chunk *= 2
    return chunk


def expected_etag(path, size):
    """(etag, stored sha256) of a file as S3 computes ETags for our upload settings."""
    digest = hashlib.sha256()
    if size < MULTIPART_THRESHOLD:
        md5 = hashlib.md5()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(CHUNK), b""):
                md5.update(block)
                digest.update(block)
        return md5.hexdigest(), digest.hexdigest()
    part = part_size_for(size)
    part_md5s = []
    with open(path, "rb") as handle:
        while True:
            md5 = hashlib.md5()
            left = part
            while left:
                block = handle.read(min(CHUNK, left))
                if not block:
                    break
                md5.update(block)
                digest.update(block)
                left -= len(block)
            if left == part:
                break
            part_md5s.append(md5.digest())
            if left:
                break
    combined = hashlib.md5(b"".join(part_md5s)).hexdigest()
    return f"{combined}-{len(part_md5s)}", digest.hexdigest()


class S3Location(Location):
    type = "s3"

    def __init__(self, spec, cfg):
        super().__init__(spec, cfg)
        self.bucket = spec.bucket
        self.root = "/".join(p for p in (spec.prefix, cfg.cluster) if p) + "/"
        self._client = None

    def describe(self):
        return f"s3://{self.bucket}/{self.root} at {self.spec.endpoint_url or 'AWS'}"

    @property
    def cold(self):
        return self.spec.object_lock_days > 0

    @property
    def client(self):
        self.prepare()
        return self._client

    def prepare(self):
        # The first connection imports the idna codec: getaddrinfo encodes the host name.
        codecs.lookup("idna")
        if self._client is None:
            with _CLIENT_LOCK:
                if self._client is None:
                    self._client = self._make_client()

    def _make_client(self):
        if not aws.available():
            raise self._err("S3 locations need the python boto3 package")
        return aws.client(
            "s3",
            endpoint_url=self.spec.endpoint_url,
            region=self.spec.region,
            access_key=self.spec.access_key,
            secret_key=self.spec.secret_key,
            config={
                "portable_checksums": True,
                "s3": {"addressing_style": "path"},
                "signature_version": "s3v4",
                "connect_timeout": 3,
                "read_timeout": 30,
                "retries": {"max_attempts": 1, "mode": "standard"},
                "max_pool_connections": max(10, 2 * getattr(self.cfg, "parallel", 2)),
            },
            error=self._err,
        )

    def _key(self, key):
        return self.root + check_key(key)

    def _translate(self, err, key=None):
        """A botocore error as an operator-readable BackupError (never any secret)."""
        if isinstance(err, BackupError):
            return err
        what = f" ({key})" if key else ""
        endpoint = self.spec.endpoint_url or "AWS S3"
        try:
            from botocore import exceptions as bexc
        except ImportError:  # pragma: no cover
            bexc = None
        cls = TransientError if is_transient(err) else BackupError
        if bexc is not None:
            if isinstance(err, (bexc.EndpointConnectionError, bexc.ConnectionClosedError)):
                return cls(f"location {self.name}: endpoint {endpoint} unreachable")
            if isinstance(err, (bexc.ConnectTimeoutError, bexc.ReadTimeoutError)):
                return cls(f"location {self.name}: endpoint {endpoint} timed out")
            if isinstance(err, bexc.NoCredentialsError):
                return BackupError(f"location {self.name}: no S3 credentials configured")
            if isinstance(err, bexc.ClientError):
                code = str(err.response.get("Error", {}).get("Code", ""))
                status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "AccessDenied"):
                    if code == "AccessDenied" and key:
                        return BackupError(
                            f"location {self.name}: access denied{what} "
                            "(object locked, or credentials lack permission)"
                        )
                    return BackupError(f"location {self.name}: wrong S3 credentials{what}")
                if code == "NoSuchBucket":
                    return BackupError(
                        f"location {self.name}: bucket {self.bucket} does not exist at {endpoint}"
                    )
                if code in ("NoSuchKey", "404", "NotFound"):
                    return BackupError(f"location {self.name}: {key} not found")
                return cls(f"location {self.name}: S3 error {code or status}{what}")
            if isinstance(err, bexc.BotoCoreError):
                return cls(f"location {self.name}: S3 client error {type(err).__name__}{what}")
        if isinstance(err, OSError):
            return cls(f"location {self.name}: {err.strerror or type(err).__name__}{what}")
        return cls(f"location {self.name}: {type(err).__name__}{what}")

    def _call(self, what, fn, key=None, attempts=None):
        def once():
            try:
                return fn()
            except Exception as err:  # noqa: BLE001 - translated
                raise self._translate(err, key) from None

        return retry(once, self.cfg, f"location {self.name}: {what}", attempts=attempts)

    def _lock_args(self):
        args = {}
        if self.spec.storage_class:
            args["StorageClass"] = self.spec.storage_class
        if self.cold:
            until = utcnow() + datetime.timedelta(days=self.spec.object_lock_days)
            args["ObjectLockMode"] = "COMPLIANCE"
            args["ObjectLockRetainUntilDate"] = until
        return args

    def put_file(self, key, path, *, sha256=None, meta=None):
        from boto3.s3.transfer import TransferConfig

        s3key = self._key(key)
        try:
            size = os.path.getsize(path)
        except OSError as err:
            raise BackupError(f"cannot read {path}: {err.strerror}") from None
        etag, stored_sha = expected_etag(path, size)
        metadata = {str(k).lower(): str(v) for k, v in (meta or {}).items()}
        metadata["sha256"] = sha256 or stored_sha
        metadata["stored-sha256"] = stored_sha
        transfer = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=part_size_for(size),
            max_concurrency=max(2, getattr(self.cfg, "parallel", 2)),
            use_threads=size >= MULTIPART_THRESHOLD,
        )
        extra = {"Metadata": metadata, **self._lock_args()}

        def upload():
            self.client.upload_file(path, self.bucket, s3key, ExtraArgs=extra, Config=transfer)
            got = self.client.head_object(Bucket=self.bucket, Key=s3key)
            if got.get("ContentLength") != size or got.get("ETag", "").strip('"') != etag:
                raise TransientError(
                    f"location {self.name}: checksum mismatch after upload of {key} "
                    f"(size {got.get('ContentLength')} vs {size}, etag differs)"
                )
            return got

        self._call(f"upload {key}", upload, key)
        return {"size": size, "sha256": metadata["sha256"], "stored_sha256": stored_sha}

    def put_bytes(self, key, data, *, meta=None, sha256=None):
        import base64

        s3key = self._key(key)
        metadata = {str(k).lower(): str(v) for k, v in (meta or {}).items()}
        stored_sha = sha256_bytes(data)
        metadata["sha256"] = sha256 or stored_sha
        metadata["stored-sha256"] = stored_sha
        md5 = hashlib.md5(data)
        args = {
            "Bucket": self.bucket,
            "Key": s3key,
            "Body": data,
            "ContentMD5": base64.b64encode(md5.digest()).decode(),
            "Metadata": metadata,
            **self._lock_args(),
        }

        def put():
            got = self.client.put_object(**args)
            if got.get("ETag", "").strip('"') != md5.hexdigest():
                raise TransientError(f"location {self.name}: checksum mismatch after put {key}")

        self._call(f"put {key}", put, key)
        return {"size": len(data), "sha256": metadata["sha256"], "stored_sha256": stored_sha}

    def get_file(self, key, dest):
        s3key = self._key(key)
        directory = os.path.dirname(os.path.abspath(dest))

        def download():
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(dest)}.")
            try:
                with os.fdopen(fd, "wb") as handle:
                    response = self.client.get_object(Bucket=self.bucket, Key=s3key)
                    body = response["Body"]
                    digest = hashlib.sha256()
                    size = 0
                    for block in iter(lambda: body.read(CHUNK), b""):
                        digest.update(block)
                        handle.write(block)
                        size += len(block)
                if size != response.get("ContentLength", size):
                    raise TransientError(f"location {self.name}: short download of {key}")
                stored = response.get("Metadata", {}).get("stored-sha256")
                if stored and stored != digest.hexdigest():
                    raise BackupError(
                        f"location {self.name}: checksum mismatch downloading {key} "
                        "(stored object corrupt)"
                    )
                os.replace(tmp, dest)
                return {"size": size, "stored_sha256": digest.hexdigest()}
            except BaseException:
                _unlink(tmp)
                raise

        try:
            return self._call(f"download {key}", download, key)
        except OSError as err:
            raise BackupError(f"cannot write {dest}: {err.strerror}") from None

    def get_bytes(self, key):
        s3key = self._key(key)

        def fetch():
            response = self.client.get_object(Bucket=self.bucket, Key=s3key)
            data = response["Body"].read()
            stored = response.get("Metadata", {}).get("stored-sha256")
            if stored and stored != sha256_bytes(data):
                raise TransientError(f"location {self.name}: checksum mismatch reading {key}")
            return data

        return self._call(f"get {key}", fetch, key)

    def head(self, key, attempts=None):
        s3key = self._key(key)

        def probe():
            from botocore.exceptions import ClientError

            try:
                return self.client.head_object(Bucket=self.bucket, Key=s3key)
            except ClientError as err:
                code = str(err.response.get("Error", {}).get("Code", ""))
                if code in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise

        got = self._call(f"head {key}", probe, key, attempts=attempts)
        if got is None:
            return None
        meta = dict(got.get("Metadata") or {})
        until = got.get("ObjectLockRetainUntilDate")
        return {
            "size": got.get("ContentLength"),
            "sha256": meta.pop("sha256", None),
            "stored_sha256": meta.pop("stored-sha256", None),
            "meta": meta,
            "retain_until": iso(until) if until else None,
            "storage_class": got.get("StorageClass") or "STANDARD",
            "version_id": got.get("VersionId"),
            "etag": got.get("ETag", "").strip('"'),
        }

    def list(self, prefix="", raw=False):
        """Keys under the folder `prefix` (recursive, sorted); raw=True: plain string prefix."""
        prefix = _check_prefix(prefix)
        full = self.root + prefix

        def listing():
            out = []
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for item in page.get("Contents", []):
                    out.append(item["Key"][len(self.root) :])
            return out

        keys = self._call(f"list {prefix or '/'}", listing)
        if prefix and not raw:  # "wal/0001" must not match "wal/00010": a folder, not a string
            keys = [k for k in keys if k == prefix or k.startswith(prefix.rstrip("/") + "/")]
        return sorted(keys)

    def versions(self, key):
        """Every version of one key (newest first): [{version_id, delete_marker, latest}]."""
        s3key = self._key(key)

        def listing():
            out = []
            paginator = self.client.get_paginator("list_object_versions")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=s3key):
                for kind, marker in (("Versions", False), ("DeleteMarkers", True)):
                    out.extend(
                        {
                            "version_id": item["VersionId"],
                            "delete_marker": marker,
                            "latest": item.get("IsLatest", False),
                        }
                        for item in page.get(kind, [])
                        if item["Key"] == s3key
                    )
            return out

        return self._call(f"list versions of {key}", listing, key)

    def delete_version(self, key, version_id):
        s3key = self._key(key)
        self._call(
            f"delete {key} version",
            lambda: self.client.delete_object(Bucket=self.bucket, Key=s3key, VersionId=version_id),
            key,
        )

    def delete(self, key):
        """Cold (locked) locations: a delete marker (the data stays until its retention ends).
        Others: every version of the key, so the space is really freed."""
        s3key = self._key(key)
        if self.cold:
            self._call(
                f"delete {key}",
                lambda: self.client.delete_object(Bucket=self.bucket, Key=s3key),
                key,
            )
            return
        for version in self.versions(key):
            self.delete_version(key, version["version_id"])
        if not self.versions(key):
            return
        raise self._err(f"{key} still has versions after delete")

    def delete_prefix(self, prefix):
        prefix = _check_prefix(prefix)
        if not prefix:
            raise self._err("refusing to delete the whole repository (empty prefix)")
        full = self.root + prefix.rstrip("/") + "/"
        entries = []

        def listing():
            out = []
            if self.cold:
                paginator = self.client.get_paginator("list_objects_v2")
                for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                    out += [{"Key": item["Key"]} for item in page.get("Contents", [])]
                return out
            paginator = self.client.get_paginator("list_object_versions")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
                    out.append({"Key": item["Key"], "VersionId": item["VersionId"]})
            return out

        entries = self._call(f"list {prefix}", listing)
        for start in range(0, len(entries), 1000):
            batch = entries[start : start + 1000]

            def remove(batch=batch):
                got = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
                return got.get("Errors", [])

            errors = self._call(f"delete {prefix}", remove)
            if errors:
                first = errors[0]
                raise self._err(
                    f"could not delete {len(errors)} objects under {prefix} "
                    f"(first: {first.get('Key', '')[len(self.root) :]}: {first.get('Code')})"
                )

    def ensure_bucket(self):
        """Create a missing bucket (object lock enabled for cold locations), versioning on."""
        from botocore.exceptions import ClientError

        def head():
            try:
                self.client.head_bucket(Bucket=self.bucket)
                return True
            except ClientError as err:
                code = str(err.response.get("Error", {}).get("Code", ""))
                if code in ("404", "NoSuchBucket", "NotFound"):
                    return False
                raise

        created = False
        if not self._call("head bucket", head):
            args = {"Bucket": self.bucket}
            if self.spec.region and self.spec.region != "us-east-1":
                args["CreateBucketConfiguration"] = {"LocationConstraint": self.spec.region}
            if self.cold:
                args["ObjectLockEnabledForBucket"] = True
            self._call("create bucket", lambda: self.client.create_bucket(**args))
            created = True
        status = self._call(
            "get versioning", lambda: self.client.get_bucket_versioning(Bucket=self.bucket)
        )
        if status.get("Status") != "Enabled":
            self._call(
                "enable versioning",
                lambda: self.client.put_bucket_versioning(
                    Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"}
                ),
            )
        if self.cold:
            self._require_object_lock()
        return {"bucket": self.bucket, "created": created}

    def _require_object_lock(self):
        from botocore.exceptions import ClientError

        def get():
            try:
                got = self.client.get_object_lock_configuration(Bucket=self.bucket)
                return got.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
            except ClientError as err:
                code = str(err.response.get("Error", {}).get("Code", ""))
                if code in ("ObjectLockConfigurationNotFoundError", "404", "NotFound"):
                    return None
                raise

        if self._call("get object lock", get) != "Enabled":
            raise self._err(
                f"bucket {self.bucket} has no object lock: a cold location "
                f"(object_lock_days {self.spec.object_lock_days}) needs a bucket created with "
                "object lock enabled"
            )

    def check(self):
        """Reachable, credentials right, bucket present (and locked when cold), writable."""
        from botocore.exceptions import ClientError

        def head():
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError as err:
                code = str(err.response.get("Error", {}).get("Code", ""))
                if code in ("404", "NoSuchBucket", "NotFound"):
                    raise BackupError(
                        f"location {self.name}: bucket {self.bucket} does not exist "
                        f"at {self.spec.endpoint_url or 'AWS S3'}"
                    ) from None
                raise

        self._call("head bucket", head)
        if self.cold:
            self._require_object_lock()
        probe = f"{self.root}.probe/{uuid.uuid4().hex}"
        try:
            self._call(
                "probe write",
                lambda: self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"probe"),
            )
        finally:
            with contextlib.suppress(Exception):  # best effort cleanup of the probe
                self.client.delete_object(Bucket=self.bucket, Key=probe)
        return {"location": self.name, "type": self.type, "ok": True, "bucket": self.bucket}


def _unlink(path):
    with contextlib.suppress(OSError):
        os.unlink(path)


# ---- opening and the repository marker ------------------------------------------------------

_TYPES = {"local": LocalLocation, "export": ExportLocation, "s3": S3Location}


def open_location(spec, cfg):
    try:
        cls = _TYPES[spec.type]
    except KeyError:
        raise BackupError(f"location {spec.name}: unknown type {spec.type!r}") from None
    return cls(spec, cfg)


def open_locations(cfg):
    return [open_location(spec, cfg) for spec in cfg.locations]


def default_salt(cluster):
    """Every location of a cluster shares one salt by default, so one key encrypts for all."""
    return hashlib.sha256(_DEFAULT_SALT_INFO + cluster.encode()).digest()[:16]


def location_key(cfg, salt):
    """The derived key for cfg.encryption_key and salt (cached per process)."""
    from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.codec import (
        derive_key,
    )

    if isinstance(salt, str):
        salt = bytes.fromhex(salt)
    cache_id = (hashlib.sha256(cfg.encryption_key.encode()).hexdigest(), salt)
    if cache_id not in _KEY_CACHE:
        _KEY_CACHE[cache_id] = derive_key(cfg.encryption_key, salt)
    return _KEY_CACHE[cache_id]


def probe_locations(cfg):
    """{name: {ok, error, unavailable}}: every location checked (reachable, writable,
    credentials) and its repo.json read (cluster, encryption key); `unavailable` marks a
    location that is down or timing out, as opposed to misconfigured."""
    status = {}
    for location in open_locations(cfg):
        try:
            location.check()
            ensure_repo(location, cfg)
            status[location.name] = {"ok": True, "error": None, "unavailable": False}
        except BackupError as err:
            unavailable = isinstance(err, LocationUnavailable)
            status[location.name] = {"ok": False, "error": str(err), "unavailable": unavailable}
    return status


def ensure_repo(location, cfg, cache_dir=None):
    """Read (or create) <cluster>/repo.json; set location.key for encrypting locations.

    repo.json: format, cluster, created, encryption {salt, key_check}. A location whose
    key check does not match cfg.encryption_key raises "location X: wrong encryption key".
    cache_dir: remember repo.json locally (the WAL tool calls this once per segment)."""
    from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.codec import (
        key_check_value,
    )

    cache = os.path.join(cache_dir, f"repo-{location.name}.json") if cache_dir else None
    repo = None
    if cache and os.path.exists(cache):
        try:
            with open(cache) as handle:
                repo = json.load(handle)
        except (OSError, ValueError):
            repo = None
    fresh = repo is None
    if repo is None and location.exists(REPO_FILE):
        try:
            repo = json.loads(location.get_bytes(REPO_FILE))
        except ValueError:
            raise BackupError(f"location {location.name}: {REPO_FILE} is corrupt") from None
    created = False
    if repo is None:
        repo = {
            "format": REPO_FORMAT,
            "cluster": cfg.cluster,
            "created": iso(utcnow()),
            "encryption": None,
        }
        if cfg.encryption_key:
            salt = default_salt(cfg.cluster)
            repo["encryption"] = {
                "kdf": "scrypt",
                "salt": salt.hex(),
                "key_check": key_check_value(location_key(cfg, salt)),
            }
        location.put_bytes(REPO_FILE, dump_json(repo).encode())
        created = True
    if repo.get("format", 0) > REPO_FORMAT:
        raise BackupError(
            f"location {location.name}: repository format {repo.get('format')} is newer than "
            f"this tool understands ({REPO_FORMAT})"
        )
    if repo.get("cluster") != cfg.cluster:
        raise BackupError(
            f"location {location.name}: repository belongs to cluster {repo.get('cluster')!r}, "
            f"not {cfg.cluster!r}"
        )
    enc = repo.get("encryption")
    location.key = None
    if location.encrypt:
        if not cfg.encryption_key:
            raise BackupError(f"location {location.name}: encrypted but no encryption_key set")
        if not enc:
            # The repository was made without a key; adopt the default salt from now on.
            salt = default_salt(cfg.cluster)
            enc = {
                "kdf": "scrypt",
                "salt": salt.hex(),
                "key_check": key_check_value(location_key(cfg, salt)),
            }
            repo["encryption"] = enc
            location.put_bytes(REPO_FILE, dump_json(repo).encode())
        key = location_key(cfg, enc["salt"])
        if not hmac.compare_digest(key_check_value(key), enc.get("key_check", "")):
            if cache and not fresh:
                _unlink(cache)  # maybe the cache is stale: one more try against the location
                return ensure_repo(location, cfg, cache_dir=None)
            raise BackupError(f"location {location.name}: wrong encryption key")
        location.key = key
    elif enc and cfg.encryption_key:
        # Not encrypting here, but a wrong key would still mean a wrong configuration.
        key = location_key(cfg, enc["salt"])
        if not hmac.compare_digest(key_check_value(key), enc.get("key_check", "")):
            raise BackupError(f"location {location.name}: wrong encryption key")
    location.repo = repo
    if cache and (fresh or created):
        try:
            os.makedirs(cache_dir, exist_ok=True)
            write_atomic(cache, dump_json(repo), mode=0o600)
        except OSError:
            pass
    return {
        "location": location.name,
        "created": created,
        "format": repo.get("format"),
        "encrypted": location.encrypt,
        "key_check": (enc or {}).get("key_check"),
    }


def parse_time(text):
    return parse_iso(text) if text else None
