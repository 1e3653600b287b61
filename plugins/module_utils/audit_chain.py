# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The audit trail's index: append-only, hash-chained, signed, checkpointed elsewhere.

index.jsonl holds one line per entry: seq (1, 2, ...), prev (sha256 of the previous line),
what it covers (a record file and its sha256, or digests of runner artifacts) and sig, an SSH
signature (namespace knowngood-audit) over the line without sig, made with the host's audit key.
The key and the checkpoint (seq and hash of the last line) live outside the audit directory,
so someone who can rewrite the directory can neither re-sign lines nor hide a cut-off tail.
Verification reports modification, deletion, reordering and truncation.
"""

import fcntl
import hashlib
import json
import os
import subprocess
import tempfile

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


def append(audit_dir, entry, key_path=None):
    """Append one entry to the chain under a lock; returns the written line as a dict."""
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
