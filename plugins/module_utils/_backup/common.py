# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every backup piece shares: the one exception, the configuration, WAL names, hashing.

Standard library only: the standalone WAL tool (archive_command / restore_command, run by the
postgres user under the system Python) imports this file too.
"""

import datetime
import hashlib
import json
import os
import re
import tempfile

WAL_SEGMENT_RE = re.compile(r"^[0-9A-F]{24}$")
WAL_NAME_RE = re.compile(r"^[0-9A-F]{24}(\.partial|\.[0-9A-F]{8}\.backup)?$|^[0-9A-F]{8}\.history$")
LABEL_RE = re.compile(r"^\d{8}T\d{6}Z-(full|incr|diff)$")
LOCATION_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
COMPRESSIONS = ("lz4", "zstd", "none")
BACKUP_TYPES = ("full", "incremental")
ENGINES = ("native", "pgbackrest")
LOCATION_TYPES = ("local", "s3", "export")
CHUNK = 1024 * 1024


class BackupError(Exception):
    """Any backup, WAL or verification failure; the message is what the operator reads."""


class LocationUnavailable(BackupError):
    """A location that is down or timing out (retry later), as opposed to misconfigured."""


def utcnow():
    return datetime.datetime.now(datetime.UTC)


def iso(ts):
    return ts.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def new_label(kind, when=None):
    """Backup labels sort by time: 20261128T181500Z-full."""
    short = {"full": "full", "incremental": "incr", "diff": "diff"}[kind]
    return f"{(when or utcnow()).strftime('%Y%m%dT%H%M%SZ')}-{short}"


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def write_atomic(path, data, mode=0o644):
    """Write bytes (or str) to path through a temp file in the same directory, fsynced."""
    if isinstance(data, str):
        data = data.encode()
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def dump_json(obj):
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def read_json(path, what=None):
    """The JSON document at path, None when it does not exist; BackupError when unreadable."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise BackupError(f"{what or path} is unreadable: {err}") from None


# ---- WAL names and LSNs (16 MB segments; wal_segment_size is fixed at initdb) ----------------

SEGMENT_SIZE = 16 * 1024 * 1024
_SEGS_PER_XLOGID = 0x100000000 // SEGMENT_SIZE


def parse_lsn(text):
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(value):
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def segment_name(timeline, lsn, segment_size=SEGMENT_SIZE):
    segno = lsn // segment_size
    per_id = 0x100000000 // segment_size
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


def segment_parts(name):
    """(timeline, segment number) of a 24-hex WAL segment name."""
    if not WAL_SEGMENT_RE.match(name):
        raise BackupError(f"not a WAL segment name: {name!r}")
    return int(name[:8], 16), int(name[8:16], 16) * _SEGS_PER_XLOGID + int(name[16:24], 16)


def segment_from_parts(timeline, segno):
    return f"{timeline:08X}{segno // _SEGS_PER_XLOGID:08X}{segno % _SEGS_PER_XLOGID:08X}"


def next_segment(name, count=1):
    timeline, segno = segment_parts(name)
    return segment_from_parts(timeline, segno + count)
