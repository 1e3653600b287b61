# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The audit trail's index: append-only, hash-chained, signed, checkpointed elsewhere.

index.jsonl holds one line per entry: seq (1, 2, ...), prev (sha256 of the previous line),
what it covers (a record file and its sha256, or digests of runner artifacts) and sig, an SSH
signature (namespace knowngood-audit) over the line without sig, made with the host's audit key.
The key and the checkpoint (seq and hash of the last line) live outside the audit directory,
so someone who can rewrite the directory can neither re-sign lines nor hide a cut-off tail.
Verification reports modification, deletion, reordering and truncation.

Optionally (KNOWNGOOD_AUDIT_S3_URL=s3://bucket/prefix) every checkpoint is also put to S3 as its
own object, <prefix>/<audit dir tag>/seq-<seq>.json, under Object Lock when the bucket has it,
so a second place keeps the high-water mark even if the host's checkpoint is rolled back.
"""

import datetime
import fcntl
import hashlib
import json
import os
import subprocess
import tempfile

try:
    import boto3
    from botocore.config import Config

    HAS_BOTO3 = True
except ImportError:
    HAS_BOTO3 = False

NAMESPACE = "knowngood-audit"
GENESIS = "0" * 64


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_key(key_path):
    """The audit signing key (ed25519, made once, 0600)."""
    if not os.path.exists(key_path):
        directory = os.path.dirname(key_path)
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o700)
        subprocess.run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "knowngood-audit",
                "-f",
                key_path,
            ],
            check=True,
            capture_output=True,
        )
    return key_path


def _body(entry):
    return json.dumps(entry, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _sign(data, key_path):
    proc = subprocess.run(
        ["ssh-keygen", "-Y", "sign", "-q", "-f", key_path, "-n", NAMESPACE],
        input=data,
        capture_output=True,
        check=False,
        timeout=30,
    )
    if proc.returncode != 0:
        raise OSError("audit signature failed: %s" % proc.stderr.decode("utf-8", "replace"))
    return proc.stdout.decode("ascii")


def _verify_sig(data, signature, pub_line):
    with tempfile.TemporaryDirectory(prefix="knowngood-verify-") as tmp:
        allowed = os.path.join(tmp, "allowed")
        sig = os.path.join(tmp, "sig")
        with open(allowed, "w") as handle:
            handle.write("knowngood-audit %s\n" % " ".join(pub_line.split()[:2]))
        with open(sig, "w") as handle:
            handle.write(signature)
        proc = subprocess.run(
            [
                "ssh-keygen",
                "-Y",
                "verify",
                "-f",
                allowed,
                "-I",
                "knowngood-audit",
                "-n",
                NAMESPACE,
                "-s",
                sig,
            ],
            input=data,
            capture_output=True,
            check=False,
            timeout=30,
        )
    return proc.returncode == 0


def checkpoint_path(key_path, audit_dir):
    """One checkpoint file per audit directory, beside the key (outside the audit dir)."""
    tag = hashlib.sha256(os.path.realpath(audit_dir).encode("utf-8")).hexdigest()[:16]
    return os.path.join(key_path + ".checkpoints", tag + ".json")


def read_checkpoint(key_path, audit_dir):
    try:
        with open(checkpoint_path(key_path, audit_dir)) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def remote_from_env(environ=None):
    """The S3 copy's settings from the environment, or None when it is not configured."""
    environ = os.environ if environ is None else environ
    url = environ.get("KNOWNGOOD_AUDIT_S3_URL", "")
    if not url:
        return None
    if not url.startswith("s3://") or len(url) <= 5:
        raise ValueError("KNOWNGOOD_AUDIT_S3_URL must look like s3://bucket/prefix")
    bucket, dummy, prefix = url[5:].partition("/")
    return {
        "url": url.rstrip("/"),
        "bucket": bucket,
        "prefix": prefix.strip("/"),
        "endpoint_url": environ.get("KNOWNGOOD_AUDIT_S3_ENDPOINT") or None,
        "region": environ.get("KNOWNGOOD_AUDIT_S3_REGION") or None,
        "lock_days": int(environ.get("KNOWNGOOD_AUDIT_S3_LOCK_DAYS") or 0),
    }


def _s3(remote):
    if not HAS_BOTO3:
        raise OSError("boto3 is required for the S3 checkpoint copy")
    # Credentials come from boto3's usual chain (AWS_* variables, profile, instance role).
    return boto3.client(
        "s3",
        endpoint_url=remote["endpoint_url"],
        region_name=remote["region"],
        config=Config(
            s3={"addressing_style": "path"},
            connect_timeout=3,
            read_timeout=10,
            retries={"max_attempts": 3, "mode": "standard"},
        ),
    )


def _remote_dir(remote, audit_dir):
    tag = hashlib.sha256(os.path.realpath(audit_dir).encode("utf-8")).hexdigest()[:16]
    return "/".join(p for p in (remote["prefix"], tag) if p) + "/"


def put_remote_checkpoint(remote, audit_dir, point):
    """One object per checkpoint, never overwritten; retained under Object Lock if asked."""
    args = {
        "Bucket": remote["bucket"],
        "Key": "%sseq-%012d.json" % (_remote_dir(remote, audit_dir), point["seq"]),
        "Body": json.dumps(point, sort_keys=True).encode("utf-8"),
        "ContentType": "application/json",
    }
    if remote["lock_days"]:
        args["ObjectLockMode"] = "COMPLIANCE"
        args["ObjectLockRetainUntilDate"] = datetime.datetime.now(
            datetime.UTC
        ) + datetime.timedelta(days=remote["lock_days"])
    _s3(remote).put_object(**args)
    return "s3://%s/%s" % (args["Bucket"], args["Key"])


def read_remote_checkpoint(remote, audit_dir):
    """The highest checkpoint kept in S3 for this audit directory, or None."""
    client = _s3(remote)
    prefix = _remote_dir(remote, audit_dir)
    last = None
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=remote["bucket"], Prefix=prefix
    ):
        for obj in page.get("Contents") or []:
            if obj["Key"].endswith(".json") and (last is None or obj["Key"] > last):
                last = obj["Key"]
    if last is None:
        return None
    body = client.get_object(Bucket=remote["bucket"], Key=last)["Body"].read()
    return json.loads(body)


def verify_remote(audit_dir, remote):
    """Problems found comparing the index with the S3 checkpoint (empty list: consistent)."""
    try:
        point = read_remote_checkpoint(remote, audit_dir)
    except Exception as exc:  # any S3 failure means the second place could not vouch
        return ["remote checkpoint %s unreadable: %s" % (remote["url"], type(exc).__name__)]
    if point is None:
        return ["no remote checkpoint for %s in %s" % (audit_dir, remote["url"])]
    index = os.path.join(audit_dir, "index.jsonl")
    hashes = {}
    if os.path.exists(index):
        with open(index, "rb") as handle:
            for raw in handle.read().splitlines():
                try:
                    hashes[json.loads(raw).get("seq")] = hashlib.sha256(raw).hexdigest()
                except ValueError:
                    continue
    last = max([s for s in hashes if isinstance(s, int)] or [0])
    if point["seq"] > last:
        return [
            "index ends at seq %d but the remote checkpoint in %s says %d (tail truncated)"
            % (last, remote["url"], point["seq"])
        ]
    if hashes.get(point["seq"]) != point["sha256"]:
        return [
            "entry seq %d differs from the remote checkpoint in %s (rewritten)"
            % (point["seq"], remote["url"])
        ]
    return []


def append(audit_dir, entry, key_path=None):
    """Append one entry to the chain under a lock; returns the written line as a dict.

    With an S3 copy configured, a failed put never fails the append: the returned dict then
    carries remote_checkpoint_error for the caller to show.
    """
    index = os.path.join(audit_dir, "index.jsonl")
    with open(os.path.join(audit_dir, ".index.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        prev, seq = GENESIS, 0
        if os.path.exists(index):
            with open(index, "rb") as handle:
                lines = handle.read().splitlines()
            if lines:
                prev = hashlib.sha256(lines[-1]).hexdigest()
                seq = int(json.loads(lines[-1]).get("seq") or len(lines))
        line = dict(entry, seq=seq + 1, prev=prev)
        if key_path:
            line["sig"] = _sign(_body(line), ensure_key(key_path))
        raw = _body(line)
        with open(index, "ab") as handle:
            handle.write(raw + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        if key_path:
            # The checkpoint lives beside the key, outside the audit directory.
            target = checkpoint_path(key_path, audit_dir)
            if not os.path.isdir(os.path.dirname(target)):
                os.makedirs(os.path.dirname(target), 0o700)
            point = {
                "audit_dir": os.path.realpath(audit_dir),
                "seq": line["seq"],
                "sha256": hashlib.sha256(raw).hexdigest(),
            }
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".ckpt-")
            with os.fdopen(fd, "w") as handle:
                json.dump(point, handle, sort_keys=True)
            os.rename(tmp, target)
            try:
                remote = remote_from_env()
                if remote:
                    put_remote_checkpoint(remote, audit_dir, point)
            except Exception as exc:  # the record is written; the copy is reported, not fatal
                return dict(line, remote_checkpoint_error="%s: %s" % (type(exc).__name__, exc))
    return line


def verify(audit_dir, key_path=None, checkpoint=None):
    """Problems found in the chain (empty list: intact) and the number of entries checked."""
    index = os.path.join(audit_dir, "index.jsonl")
    problems = []
    if not os.path.exists(index):
        lines = []
    else:
        with open(index, "rb") as handle:
            lines = handle.read().splitlines()
    pub = None
    if key_path and os.path.exists(key_path + ".pub"):
        with open(key_path + ".pub") as handle:
            pub = handle.read()
    prev, expected_seq = GENESIS, 1
    hashes = {}
    for number, raw in enumerate(lines, 1):
        try:
            line = json.loads(raw)
        except ValueError:
            problems.append("line %d: not JSON (modified)" % number)
            prev = hashlib.sha256(raw).hexdigest()
            expected_seq += 1
            continue
        seq = line.get("seq")
        if seq != expected_seq:
            problems.append(
                "line %d: seq %s where %d was expected (entries deleted or reordered)"
                % (number, seq, expected_seq)
            )
        if line.get("prev") != prev:
            problems.append(
                "line %d (seq %s): prev does not match the line before (chain broken)"
                % (number, seq)
            )
        sig = line.pop("sig", None)
        if pub:
            if not sig:
                problems.append("line %d (seq %s): unsigned" % (number, seq))
            elif not _verify_sig(_body(line), sig, pub):
                problems.append(
                    "line %d (seq %s): signature does not match (modified)" % (number, seq)
                )
        record = line.get("record")
        if record:
            path = os.path.join(audit_dir, record)
            if not os.path.exists(path):
                problems.append("seq %s: record %s is missing (deleted)" % (seq, record))
            elif sha256_file(path) != line.get("sha256"):
                problems.append("seq %s: record %s was modified" % (seq, record))
        for name, digest in sorted((line.get("artifacts") or {}).items()):
            path = os.path.join(audit_dir, name)
            if not os.path.exists(path) or sha256_file(path) != digest:
                problems.append("seq %s: runner artifact %s missing or modified" % (seq, name))
        prev = hashlib.sha256(raw).hexdigest()
        hashes[seq] = prev
        expected_seq = (seq if isinstance(seq, int) else expected_seq) + 1
    if checkpoint is None and key_path:
        checkpoint = read_checkpoint(key_path, audit_dir)
    if checkpoint:
        last = max(hashes) if hashes else 0
        if checkpoint["seq"] > last:
            problems.append(
                "index ends at seq %d but the checkpoint says %d (tail truncated)"
                % (last, checkpoint["seq"])
            )
        elif hashes.get(checkpoint["seq"]) != checkpoint["sha256"]:
            problems.append(
                "entry seq %d differs from the checkpoint (rewritten)" % checkpoint["seq"]
            )
    elif key_path:
        problems.append("no checkpoint for %s: cannot tell whether the tail was cut" % audit_dir)
    return problems, len(lines)
