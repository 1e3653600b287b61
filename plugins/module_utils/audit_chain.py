# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The audit trail's index: append-only, hash-chained, signed, checkpointed elsewhere.

index.jsonl holds one line per entry: seq (1, 2, ...), prev (sha256 of the previous line),
what it covers (a record file and its sha256, or digests of runner artifacts) and sig, an SSH
signature (namespace knowngood-audit) over the line without sig, made with the host's audit key.
The key and the checkpoint (seq and hash of the last line) live outside the audit directory,
so someone who can rewrite the directory can neither re-sign lines nor hide a cut-off tail.
Verification reports modification, deletion, reordering and truncation.

The witness (KNOWNGOOD_AUDIT_S3_URL=s3://bucket/prefix, or the lab's governance/audit_witness.json)
gets every checkpoint as its own object, <prefix>/<audit dir tag>/seq-<seq>.json, under Object
Lock, so a place the runner's account cannot rewrite keeps the high-water mark even when the
host's key, chain and checkpoint are all rewritten. verify reads every version of those objects.

A run opens its record (kind "open") at start and closes it (kind "record") at the end; an open
entry never closed is reported. A torn last line (a crash mid-write) is pinned by the next entry
(after_torn: its sha256), reported until `knowngood audit repair` removes it and records that.

resolve_trail() is the one place the audit dir, key and witness are chosen, for the callback,
`knowngood run` and `knowngood audit` alike.

Inside AWX (JOB_ID in the environment, as AWX sets it for every job) the audit directory lives in
a throw-away execution environment, so the witness is the record: each job's trail goes under
<prefix>/awx/<AWX host>/job-<JOB_ID>/, and besides the checkpoints the witness gets every record
file (records/<name>) and every signed index line (lines/seq-<seq>.json), all under Object Lock.
A witness, a lock period and the audit signing key (KNOWNGOOD_AUDIT_KEY) are then required and
every put must succeed: the job refuses to start, or fails, otherwise (fail closed).
fetch_trail() rebuilds a job's trail from the witness alone for `knowngood audit verify --awx-job`.
"""

import datetime
import fcntl
import hashlib
import json
import os
import re
import socket
import subprocess
import tempfile

from ansible_collections.knowngood.runbooks.plugins.module_utils import audit_record, aws, s3_put

NAMESPACE = "knowngood-audit"
GENESIS = "0" * 64
# Run ids and user names become parts of record paths: one safe alphabet, no separators.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
LAB_MARKER = "lab.json"
LAB_WITNESS = os.path.join("governance", "audit_witness.json")
DEFAULT_LAB_ROOT = "/var/lib/knowngood-lab"
DEFAULT_AUDIT_DIR = "~/.local/state/knowngood/audit"
DEFAULT_AUDIT_KEY = "~/.config/knowngood/audit_key"


class AuditError(Exception):
    """A trail that cannot be written or repaired as asked."""


def check_name(value, what):
    """value if it is safe as a path part (run id, user), else AuditError."""
    if not isinstance(value, str) or not NAME_RE.match(value) or ".." in value:
        raise AuditError(
            "%s %r refused: it must match %s (it becomes part of a record path)"
            % (what, value, NAME_RE.pattern)
        )
    return value


def utcnow():
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lab_root(environ=None, root=None):
    """The lab directory when one is set up there (KNOWNGOOD_LAB_DIR or the default), else None."""
    environ = os.environ if environ is None else environ
    root = root or environ.get("KNOWNGOOD_LAB_DIR") or DEFAULT_LAB_ROOT
    return root if os.path.exists(os.path.join(root, LAB_MARKER)) else None


def awx_job(environ=None):
    """{job_id, host, inventory_id, project_revision} when running as an AWX job, else None.

    AWX exports JOB_ID, INVENTORY_ID, PROJECT_REVISION and AWX_HOST to every job it runs."""
    environ = os.environ if environ is None else environ
    job_id = str(environ.get("JOB_ID") or "")
    if not job_id:
        return None
    if not job_id.isdigit():
        raise AuditError("JOB_ID %r refused: AWX job ids are numbers" % job_id)
    return {
        "job_id": int(job_id),
        "host": environ.get("AWX_HOST") or "",
        "inventory_id": environ.get("INVENTORY_ID") or "",
        "project_revision": environ.get("PROJECT_REVISION") or "",
    }


def awx_trail_id(host, job_id):
    """The witness folder of one AWX job's trail: awx/<host>/job-<id> (host without scheme)."""
    netloc = re.sub(r"^[a-z]+://", "", str(host or "").strip().lower()).strip("/")
    netloc = re.sub(r"[^a-z0-9._-]", "_", netloc) or "awx"
    return "awx/%s/job-%d" % (netloc, int(job_id))


def resolve_trail(audit_dir=None, key=None, root=None, environ=None):
    """{audit_dir, key, witness}: the one resolution every writer and reader uses.

    audit dir: the explicit one (--audit-dir, the callback's ini option), KNOWNGOOD_AUDIT_DIR,
    the lab's <lab>/audit when a lab is set up, else the per-user dir. Key: explicit,
    KNOWNGOOD_AUDIT_KEY, the lab's governance/audit_key, else the per-user key. Witness:
    KNOWNGOOD_AUDIT_S3_URL, else the lab's governance/audit_witness.json, else none.
    """
    environ = os.environ if environ is None else environ
    explicit_key = key or environ.get("KNOWNGOOD_AUDIT_KEY")
    lab = lab_root(environ, root)
    audit_dir = (
        audit_dir
        or environ.get("KNOWNGOOD_AUDIT_DIR")
        or (os.path.join(lab, "audit") if lab else DEFAULT_AUDIT_DIR)
    )
    key = (
        key
        or environ.get("KNOWNGOOD_AUDIT_KEY")
        or (os.path.join(lab, "governance", "audit_key") if lab else DEFAULT_AUDIT_KEY)
    )
    witness = remote_from_env(environ)
    if witness is None and lab and os.path.exists(os.path.join(lab, LAB_WITNESS)):
        with open(os.path.join(lab, LAB_WITNESS)) as handle:
            witness = remote_from_env(json.load(handle))
    job = awx_job(environ)
    if job:
        # The execution environment is thrown away after the job: the witness is the record.
        missing = []
        if not witness:
            missing.append("a witness (KNOWNGOOD_AUDIT_S3_URL)")
        elif not witness["lock_days"]:
            missing.append("an Object Lock period (KNOWNGOOD_AUDIT_S3_LOCK_DAYS)")
        if not explicit_key:
            missing.append("the audit signing key (KNOWNGOOD_AUDIT_KEY)")
        if missing:
            raise AuditError(
                "AWX job %s: its audit trail would die with the execution environment; attach "
                "the knowngood audit credentials to the job template: %s missing"
                % (job["job_id"], ", ".join(missing))
            )
        witness = dict(witness, trail=awx_trail_id(job["host"], job["job_id"]), required=True)
    return {
        "audit_dir": os.path.abspath(os.path.expanduser(audit_dir)),
        "key": os.path.abspath(os.path.expanduser(key)),
        "witness": witness,
    }


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
    """The witness settings from the environment (or a witness file's dict), or None."""
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
        # Only a witness file carries credentials (the lab's); else boto3's usual chain.
        "access_key": environ.get("aws_access_key_id") or None,
        "secret_key": environ.get("aws_secret_access_key") or None,
    }


_CLIENTS = {}


def _s3(remote):
    if not aws.available():
        raise OSError("boto3 is required for the audit witness")
    cache = (remote["endpoint_url"], remote["region"], remote.get("access_key"))
    if cache not in _CLIENTS:
        # Credentials: the witness file's, else boto3's chain (AWS_* variables, profile, role).
        _CLIENTS[cache] = aws.client(
            "s3",
            endpoint_url=remote["endpoint_url"],
            region=remote["region"],
            access_key=remote.get("access_key"),
            secret_key=remote.get("secret_key"),
            config={
                "s3": {"addressing_style": "path"},
                "connect_timeout": 3,
                "read_timeout": 10,
                "retries": {"max_attempts": 3, "mode": "standard"},
            },
            error=OSError,
        )
    return _CLIENTS[cache]


def _remote_dir(remote, audit_dir):
    tag = (
        remote.get("trail")
        or hashlib.sha256(os.path.realpath(audit_dir).encode("utf-8")).hexdigest()[:16]
    )
    return "/".join(p for p in (remote["prefix"], tag) if p) + "/"


def put_remote_object(remote, audit_dir, name, body):
    """One witness object (a checkpoint, and for AWX jobs a record file or an index line),
    retained under COMPLIANCE Object Lock when a lock period is set."""
    args = {
        "Bucket": remote["bucket"],
        "Key": _remote_dir(remote, audit_dir) + name,
        "Body": body,
        "ContentType": "application/json",
    }
    if remote["lock_days"]:
        args["ObjectLockMode"] = "COMPLIANCE"
        args["ObjectLockRetainUntilDate"] = datetime.datetime.now(
            datetime.UTC
        ) + datetime.timedelta(days=remote["lock_days"])
    if remote["endpoint_url"] and remote.get("access_key") and remote.get("secret_key"):
        # An S3-compatible witness with its own keys: one signed request, no boto3 to import.
        s3_put.put_object(
            remote["endpoint_url"],
            args["Bucket"],
            args["Key"],
            body,
            remote["access_key"],
            remote["secret_key"],
            region=remote["region"],
            content_type=args["ContentType"],
            lock_mode=args.get("ObjectLockMode"),
            lock_until=args.get("ObjectLockRetainUntilDate"),
        )
    else:
        _s3(remote).put_object(**args)
    return "s3://%s/%s" % (args["Bucket"], args["Key"])


def fetch_trail(remote, dest):
    """Rebuild a witnessed trail (AWX job) in dest from the witness alone: index.jsonl from the
    lines/ objects, the record files from records/. The first version of each object is the one
    Object Lock keeps honest; objects with differing later versions are returned as rewritten.
    Returns {"lines": n, "records": [names], "rewritten": [keys]}."""
    client = _s3(remote)
    prefix = _remote_dir(remote, dest)
    first, rewritten = {}, []
    for page in client.get_paginator("list_object_versions").paginate(
        Bucket=remote["bucket"], Prefix=prefix
    ):
        for obj in page.get("Versions") or []:
            first.setdefault(obj["Key"], []).append(obj)
    bodies = {}
    for key, objs in first.items():
        name = key[len(prefix) :]
        if not (name.startswith("lines/") or name.startswith("records/")):
            continue
        versions = [
            client.get_object(Bucket=remote["bucket"], Key=key, VersionId=o["VersionId"])[
                "Body"
            ].read()
            for o in sorted(objs, key=lambda o: o["LastModified"])
        ]
        if any(v != versions[0] for v in versions[1:]):
            rewritten.append(key)
        bodies[name] = versions[0]
    lines = sorted((n for n in bodies if n.startswith("lines/seq-")), key=lambda n: n)
    records = []
    if not os.path.isdir(dest):
        os.makedirs(dest, 0o700)
    with open(os.path.join(dest, "index.jsonl"), "wb") as handle:
        for name in lines:
            handle.write(bodies[name].rstrip(b"\n") + b"\n")
    for name in sorted(n for n in bodies if n.startswith("records/")):
        base = name[len("records/") :]
        if not base or "/" in base or base.startswith("."):
            continue
        with open(os.path.join(dest, base), "wb") as handle:
            handle.write(bodies[name])
        records.append(base)
    return {"lines": len(lines), "records": records, "rewritten": rewritten}


def put_remote_checkpoint(remote, audit_dir, point):
    """One object per checkpoint, never overwritten; retained under Object Lock if asked."""
    body = json.dumps(point, sort_keys=True).encode("utf-8")
    return put_remote_object(remote, audit_dir, "seq-%012d.json" % point["seq"], body)


def read_witness(remote, audit_dir):
    """{seq: [version bodies, oldest first]} and [seqs with a delete marker] for this trail."""
    client = _s3(remote)
    prefix = _remote_dir(remote, audit_dir)
    versions, deleted = {}, []
    for page in client.get_paginator("list_object_versions").paginate(
        Bucket=remote["bucket"], Prefix=prefix
    ):
        for obj in page.get("Versions") or []:
            name = obj["Key"][len(prefix) :]
            if name.startswith("seq-") and name.endswith(".json"):
                versions.setdefault(int(name[4:-5]), []).append(obj)
        for obj in page.get("DeleteMarkers") or []:
            name = obj["Key"][len(prefix) :]
            if name.startswith("seq-") and name.endswith(".json"):
                deleted.append(int(name[4:-5]))
    return versions, sorted(set(deleted))


def _witness_body(remote, obj):
    got = _s3(remote).get_object(
        Bucket=remote["bucket"], Key=obj["Key"], VersionId=obj["VersionId"]
    )
    return json.loads(got["Body"].read())


def read_remote_checkpoint(remote, audit_dir):
    """The highest checkpoint the witness keeps for this audit directory, or None."""
    versions = read_witness(remote, audit_dir)[0]
    if not versions:
        return None
    objs = sorted(versions[max(versions)], key=lambda o: o["LastModified"])
    return _witness_body(remote, objs[0])


def _span(first, last):
    return "seq %d" % first if first == last else "seq %d-%d" % (first, last)


def check_witness(audit_dir, remote, hashes):
    """(tampered, findings) comparing the local chain's {seq: sha256} with the witness."""
    tampered, findings = [], []
    try:
        versions, deleted = read_witness(remote, audit_dir)
    except Exception as exc:  # a witness that cannot answer vouches for nothing
        return [], [
            "witness %s unreachable (%s): nothing vouched for" % (remote["url"], type(exc).__name__)
        ]
    last = max(hashes) if hashes else 0
    for seq in deleted:
        tampered.append("witness checkpoint seq %d was deleted (a delete marker hides it)" % seq)
    points = {}
    try:
        for seq, objs in sorted(versions.items()):
            bodies = [
                _witness_body(remote, o) for o in sorted(objs, key=lambda o: o["LastModified"])
            ]
            if any(b != bodies[0] for b in bodies[1:]):
                tampered.append(
                    "witness checkpoint seq %d was rewritten (%d differing versions)"
                    % (seq, len(bodies))
                )
            points[seq] = bodies[0]  # the first write is the one Object Lock keeps honest
    except Exception as exc:
        return tampered, findings + [
            "witness %s unreadable (%s)" % (remote["url"], type(exc).__name__)
        ]
    if not points:
        if last:
            findings.append(
                "no witness copy in %s: entries %s are not witnessed"
                % (remote["url"], _span(1, last))
            )
        return tampered, findings
    top = max(points)
    if top > last:
        tampered.append(
            "entries %s missing: the witness in %s holds checkpoint seq %d but the index ends at "
            "seq %d (tail cut)" % (_span(last + 1, top), remote["url"], top, last)
        )
    diverged = [s for s in sorted(points) if s <= last and hashes.get(s) != points[s]["sha256"]]
    if diverged:
        good = [s for s in points if s < diverged[0]]
        tampered.append(
            "entries from seq %d differ from the witness in %s (rewritten; last agreeing "
            "checkpoint seq %s)" % (diverged[0], remote["url"], max(good) if good else "none")
        )
    if last > top:
        findings.append(
            "entries %s are newer than the newest witness checkpoint (seq %d): not witnessed"
            % (_span(top + 1, last), top)
        )
    return tampered, findings


def _read_lines(audit_dir):
    """(complete lines, torn tail bytes or b"") of index.jsonl."""
    index = os.path.join(audit_dir, "index.jsonl")
    if not os.path.exists(index):
        return [], b""
    with open(index, "rb") as handle:
        data = handle.read()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    lines = [line for line in lines if line]
    if tail:
        try:
            json.loads(tail)
            lines.append(tail)  # whole, only its newline lost
            tail = b""
        except ValueError:
            pass
    return lines, tail


def _parse(raw):
    try:
        line = json.loads(raw)
    except ValueError:
        return None
    return line if isinstance(line, dict) else None


def entries(audit_dir):
    """The index's entries as dicts, oldest first; torn and non-JSON lines are left out (check()
    reports them)."""
    return [line for line in map(_parse, _read_lines(audit_dir)[0]) if line is not None]


def append(audit_dir, entry, key_path=None, witness="env"):
    """Append one entry to the chain under a lock; returns the written line as a dict.

    witness: the resolved witness (resolve_trail), None for none, "env" for the environment's.
    A failed witness put never fails the append: the returned dict then carries
    remote_checkpoint_error for the caller to show (and verify reports the entry unwitnessed).
    A torn last line (a crash mid-write) does not stop the record either: the entry starts on a
    new line, chains to the last whole line and pins the torn bytes by digest (after_torn), so
    they can be neither swapped nor dropped silently; verify reports them until
    `knowngood audit repair`.
    """
    with open(os.path.join(audit_dir, ".index.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _append_locked(audit_dir, entry, key_path, witness)


def _append_locked(audit_dir, entry, key_path, witness):
    index = os.path.join(audit_dir, "index.jsonl")
    lines, torn = _read_lines(audit_dir)
    prev, seq = GENESIS, 0
    for raw in reversed(lines):
        parsed = _parse(raw)
        if parsed is not None:
            prev = hashlib.sha256(raw).hexdigest()
            seq = int(parsed.get("seq") or len(lines))
            break
    line = dict(entry, seq=seq + 1, prev=prev)
    if torn:
        line["after_torn"] = {"sha256": hashlib.sha256(torn).hexdigest(), "bytes": len(torn)}
    if key_path:
        line["sig"] = _sign(_body(line), ensure_key(key_path))
    raw = _body(line)
    size = os.path.getsize(index) if os.path.exists(index) else 0
    with open(index, "ab") as handle:
        if size and not _ends_with_newline(index):
            handle.write(b"\n")
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
            "at": utcnow(),
        }
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".ckpt-")
        with os.fdopen(fd, "w") as handle:
            json.dump(point, handle, sort_keys=True)
        os.rename(tmp, target)
        remote = None
        try:
            remote = remote_from_env() if witness == "env" else witness
            if remote and remote.get("required"):
                put_remote_object(remote, audit_dir, "lines/seq-%012d.json" % line["seq"], raw)
            if remote:
                put_remote_checkpoint(remote, audit_dir, point)
        except Exception as exc:
            if remote and remote.get("required"):  # the witness is the record: fail closed
                raise AuditError(
                    "the audit witness %s could not take seq %d (%s: %s)"
                    % (remote["url"], line["seq"], type(exc).__name__, exc)
                ) from exc
            # the record is written; the copy is reported, not fatal
            return dict(line, remote_checkpoint_error="%s: %s" % (type(exc).__name__, exc))
    return line


def _witness_record(trail, name):
    """An AWX job's record file goes to the witness before the line that covers it."""
    remote = trail.get("witness")
    if not (remote and remote.get("required")):
        return
    with open(os.path.join(trail["audit_dir"], name), "rb") as handle:
        body = handle.read()
    try:
        put_remote_object(remote, trail["audit_dir"], "records/" + name, body)
    except Exception as exc:
        raise AuditError(
            "the audit witness %s could not take record %s (%s: %s)"
            % (remote["url"], name, type(exc).__name__, exc)
        ) from exc


def _ends_with_newline(path):
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def open_record(trail, opening):
    """Write <run_id>.open.json and its chained, witnessed "open" entry; returns the line."""
    audit_dir = trail["audit_dir"]
    name = audit_record.record_name(check_name(opening["run_id"], "run id"), opening=True)
    sha256 = audit_record.write(audit_dir, name, opening)[1]
    _witness_record(trail, name)
    return append(
        audit_dir,
        {
            "kind": "open",
            "run_id": opening["run_id"],
            "record": name,
            # Who holds it open: repair closes it only once this process is gone.
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "user": opening.get("user"),
            "started_at": opening.get("started_at"),
            "playbook": opening.get("playbook"),
            "sha256": sha256,
        },
        trail["key"],
        trail["witness"],
    )


def close_record(trail, record):
    """Write <run_id>.json and the chained, witnessed "record" entry that closes the run;
    returns (the record's path, the line)."""
    name = audit_record.record_name(check_name(record["run_id"], "run id"))
    path, sha256 = audit_record.write(trail["audit_dir"], name, record)
    _witness_record(trail, name)
    line = append(
        trail["audit_dir"],
        audit_record.closing_entry(record, name, sha256),
        trail["key"],
        trail["witness"],
    )
    return path, line


def repair(audit_dir, key_path, who, witness="env"):
    """Remove torn lines and close abandoned runs, each recorded; returns the entries written.

    Torn: the torn tail, or a line a later entry pins with after_torn. Any other line that is
    not JSON is tampering, not tearing: repair refuses to touch it. Abandoned: an open run whose
    process (same host) is gone; it is closed with status "abandoned", never deleted.
    """
    index = os.path.join(audit_dir, "index.jsonl")
    written = []
    with open(os.path.join(audit_dir, ".index.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lines, torn = _read_lines(audit_dir)
        parsed = [_parse(raw) for raw in lines]
        pinned = set(
            p["after_torn"].get("sha256")
            for p in parsed
            if p and isinstance(p.get("after_torn"), dict)
        )
        removed, kept = [], []
        for raw, line in zip(lines, parsed, strict=True):
            if line is not None:
                kept.append(raw)
            elif hashlib.sha256(raw).hexdigest() in pinned:
                removed.append(raw)
            else:
                raise AuditError(
                    "%s holds a line that is not JSON and was not torn by a crash (tampering): "
                    "not repaired" % index
                )
        if torn:
            removed.append(torn)
        if removed:
            fd, tmp = tempfile.mkstemp(dir=audit_dir, prefix=".index-")
            with os.fdopen(fd, "wb") as handle:
                handle.write(b"".join(raw + b"\n" for raw in kept))
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(tmp, index)
            removed_list = [
                {"sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)} for raw in removed
            ]
            entry = {"kind": "repair", "by": who, "at": utcnow(), "removed": removed_list}
            written.append(_append_locked(audit_dir, entry, key_path, witness))
        closed = set(p.get("run_id") for p in parsed if p and p.get("kind") == "record")
        for line in parsed:
            if not line or line.get("kind") != "open" or line.get("run_id") in closed:
                continue
            if line.get("host") == socket.gethostname() and _alive(line.get("pid")):
                continue  # still running
            record = {
                "run_id": check_name(line.get("run_id"), "run id"),
                "status": "abandoned",
                "started_at": line.get("started_at"),
                "finished_at": utcnow(),
                "user": line.get("user"),
                "playbook": line.get("playbook"),
                "note": "opened and never closed (killed); closed by audit repair",
                "closed_by": who,
                "events": [],
            }
            name = audit_record.record_name(record["run_id"])
            sha256 = audit_record.write(audit_dir, name, record)[1]
            entry = audit_record.closing_entry(record, name, sha256, closed_by=who)
            written.append(_append_locked(audit_dir, entry, key_path, witness))
    return written


def _alive(pid):
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def check(audit_dir, key_path=None, checkpoint=None, witness=None):
    """{"tampered": [...], "findings": [...], "entries": n, "empty": bool} for one trail.

    tampered: evidence of modification, deletion, reordering or a cut tail. findings: what
    keeps the trail from vouching (unchecked signatures, unwitnessed or torn entries, open runs).
    """
    lines, torn = _read_lines(audit_dir)
    tampered, findings = [], []
    pub = None
    if key_path and os.path.exists(key_path + ".pub"):
        with open(key_path + ".pub") as handle:
            pub = handle.read()
    elif key_path and (lines or torn):
        findings.append("signatures not checked: public key missing (%s.pub)" % key_path)
    parsed = [_parse(raw) for raw in lines]
    pins = dict(
        (p["after_torn"]["sha256"], p.get("seq"))
        for p in parsed
        if p and isinstance(p.get("after_torn"), dict)
    )
    repaired = set(
        r.get("sha256")
        for p in parsed
        if p and p.get("kind") == "repair"
        for r in p.get("removed") or []
    )
    present = set(hashlib.sha256(raw).hexdigest() for raw in lines + ([torn] if torn else []))
    prev, expected_seq = GENESIS, 1
    hashes, opened, closed = {}, {}, set()
    for number, (raw, line) in enumerate(zip(lines, parsed, strict=True), 1):
        digest = hashlib.sha256(raw).hexdigest()
        if line is None:
            if digest in pins:
                findings.append(
                    "line %d: torn by an interrupted write (the next entry, seq %s, pins it); "
                    "run `knowngood audit repair`" % (number, pins[digest])
                )
                continue
            tampered.append("line %d: not JSON (modified)" % number)
            prev = digest
            expected_seq += 1
            continue
        seq = line.get("seq")
        if seq != expected_seq:
            tampered.append(
                "line %d: seq %s where %d was expected (entries deleted or reordered)"
                % (number, seq, expected_seq)
            )
        if line.get("prev") != prev:
            tampered.append(
                "line %d (seq %s): prev does not match the line before (chain broken)"
                % (number, seq)
            )
        after = line.get("after_torn")
        if isinstance(after, dict) and after.get("sha256") not in repaired | present:
            tampered.append(
                "seq %s: the torn line it follows is gone without a recorded repair" % seq
            )
        sig = line.pop("sig", None)
        if pub:
            if not sig:
                tampered.append("line %d (seq %s): unsigned" % (number, seq))
            elif not _verify_sig(_body(line), sig, pub):
                tampered.append(
                    "line %d (seq %s): signature does not match (modified)" % (number, seq)
                )
        record = line.get("record")
        if record:
            path = os.path.join(audit_dir, record)
            if os.sep in record or not os.path.exists(path):
                tampered.append("seq %s: record %s is missing (deleted)" % (seq, record))
            elif sha256_file(path) != line.get("sha256"):
                tampered.append("seq %s: record %s was modified" % (seq, record))
        for name, digest_ in sorted((line.get("artifacts") or {}).items()):
            path = os.path.join(audit_dir, name)
            if not os.path.exists(path) or sha256_file(path) != digest_:
                tampered.append("seq %s: runner artifact %s missing or modified" % (seq, name))
        if line.get("kind") == "open":
            opened[line.get("run_id")] = line
        elif line.get("kind") == "record":
            closed.add(line.get("run_id"))
        prev = digest
        hashes[seq] = prev
        expected_seq = (seq if isinstance(seq, int) else expected_seq) + 1
    if torn:
        findings.append(
            "torn last line (%d bytes, an interrupted write): run `knowngood audit repair`"
            % len(torn)
        )
    for run_id, line in opened.items():
        if run_id not in closed:
            findings.append(
                "run %s opened at %s by %s never closed (killed, or still running)"
                % (run_id, line.get("started_at"), line.get("user"))
            )
    last = max(hashes) if hashes else 0
    if checkpoint is None and key_path:
        checkpoint = read_checkpoint(key_path, audit_dir)
    if checkpoint:
        if checkpoint["seq"] > last:
            tampered.append(
                "index ends at seq %d but the checkpoint says %d (tail truncated)"
                % (last, checkpoint["seq"])
            )
        elif hashes.get(checkpoint["seq"]) != checkpoint["sha256"]:
            tampered.append(
                "entry seq %d differs from the checkpoint (rewritten)" % checkpoint["seq"]
            )
        elif checkpoint["seq"] < last:
            findings.append(
                "the local checkpoint (seq %d) is older than the newest entry (seq %d)"
                % (checkpoint["seq"], last)
            )
    elif key_path and lines:
        tampered.append("no checkpoint for %s: cannot tell whether the tail was cut" % audit_dir)
    if witness:
        more_tampered, more_findings = check_witness(audit_dir, witness, hashes)
        tampered += more_tampered
        findings += more_findings
    empty = not lines and not torn and not tampered
    return {"tampered": tampered, "findings": findings, "entries": len(lines), "empty": empty}


def verify(audit_dir, key_path=None, checkpoint=None, witness=None):
    """Problems found in the chain (empty list: intact) and the number of entries checked."""
    result = check(audit_dir, key_path, checkpoint, witness)
    return result["tampered"] + result["findings"], result["entries"]
