# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Signed rollback approvals (strategy section 2.2).

A rollback request is a canonical JSON document (playbook, inventory, limit, public inputs,
salted digests of the secret inputs' values, the decision record it answers, severity,
requester, ticket, expiry); its id is the sha256 of those bytes. Approvers sign the
bytes with their SSH keys (`ssh-keygen -Y sign -n knowngood-approval`); a signature is checked
with `ssh-keygen -Y verify` against the allowed_signers file, the trust root. Roles come from
the approvers map (signer -> roles). The gate recomputes the request from the run itself, so
a signature over one request never approves another.
"""

import binascii
import datetime
import hashlib
import hmac
import itertools
import json
import os
import re
import subprocess
import tempfile

NAMESPACE = "knowngood-approval"
ROLES = ("team_lead", "cto", "infra_lead")
SEVERITIES = ("low", "medium", "high")
SECRET_RE = re.compile(r"pass|secret|token|key|dsn|credential|vault", re.I)
# Inputs that steer governance itself are not part of what is approved; where notices go
# (knowngood_notify) is not either, and its webhook URLs carry tokens.
GOVERNANCE_VARS = (
    "knowngood_request",
    "knowngood_break_glass",
    "knowngood_approval_required",
    "knowngood_notify",
    "knowngood_notify_smtp_password",
)
REQUEST_FIELDS = (
    "version",
    "playbook",
    "inventory",
    "limit",
    "public_inputs",
    "secret_inputs",
    "decision",
    "severity",
    "requester",
    "ticket",
    "reason",
    "created_at",
    "expires_at",
)
MIN_BREAK_GLASS_REASON = 10
# Secret inputs (a DSN, a password) are bound by value without putting the value in the
# request: a salted, slow digest, so the audit trail does not make guessing cheap.
SECRET_DIGEST_ROUNDS = 100000
DECISION_SEVERITIES = ("none", "low", "medium", "high")


class ApprovalError(Exception):
    """A request or an approval that cannot be accepted; the message says why."""


def utcnow():
    return datetime.datetime.now(datetime.UTC)


def iso(when):
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text):
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    except (TypeError, ValueError):
        raise ApprovalError("timestamp %r is not YYYY-MM-DDTHH:MM:SSZ" % (text,)) from None


def split_inputs(extra_vars):
    """(public inputs, sorted names of secret inputs); governance vars belong to neither."""
    public, secret = {}, []
    for name, value in sorted((extra_vars or {}).items()):
        if name in GOVERNANCE_VARS:
            continue
        if SECRET_RE.search(name):
            secret.append(name)
        else:
            public[name] = value
    return public, secret


def secret_digest(value, salt=None):
    """pbkdf2_sha256$rounds$salt$hex of a secret input's value (JSON text of it)."""
    salt = salt or binascii.hexlify(os.urandom(16)).decode()
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    raw = hashlib.pbkdf2_hmac("sha256", text.encode(), salt.encode(), SECRET_DIGEST_ROUNDS)
    return "pbkdf2_sha256$%d$%s$%s" % (SECRET_DIGEST_ROUNDS, salt, binascii.hexlify(raw).decode())


def bind_secrets(extra_vars, signed=None):
    """{name: digest} of the secret inputs; with `signed`, salted as the signed request was,
    so equal values give equal digests and any other value does not."""
    signed = signed if isinstance(signed, dict) else {}
    out = {}
    for name in split_inputs(extra_vars)[1]:
        parts = str(signed.get(name, "")).split("$")
        salt = parts[2] if len(parts) == 4 and parts[1] == str(SECRET_DIGEST_ROUNDS) else None
        digest = secret_digest(extra_vars[name], salt)
        if salt and hmac.compare_digest(digest, str(signed[name])):
            digest = signed[name]
        out[name] = digest
    return out


def decision_summary(record):
    """What a request keeps of decide.yml's audit record: its run, verdict and severity.

    `record` is the audit record of a `decide` run; its rollback_decision event is the
    decision. The record's sha256 ties the request to that exact record."""
    events = [
        e
        for e in (record or {}).get("events") or []
        if str(e.get("action", "")).endswith("rollback_decision")
    ]
    if not events:
        raise ApprovalError("the record has no rollback decision (is it a decide run's record?)")
    result = events[-1].get("result") or {}
    severity = result.get("severity")
    if severity not in DECISION_SEVERITIES:
        raise ApprovalError("the decision's severity %r is not known" % (severity,))
    return {
        "run_id": str(record.get("run_id") or ""),
        "verdict": str(result.get("verdict") or ""),
        "severity": severity,
        "approvals_required": list(result.get("approvals_required") or []),
        "record_sha256": hashlib.sha256(
            json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest(),
    }


def severity_floor(doc):
    """The lowest severity the request may claim: its decision's, or high without one."""
    decision = doc.get("decision") or {}
    if not decision:
        return "high"
    return "low" if decision.get("severity") == "none" else decision.get("severity")


def check_severity(doc):
    floor = severity_floor(doc)
    severity = doc.get("severity")
    if floor not in SEVERITIES or severity not in SEVERITIES:
        raise ApprovalError("request severity %r or decision %r unknown" % (severity, floor))
    if SEVERITIES.index(severity) < SEVERITIES.index(floor):
        if doc.get("decision"):
            raise ApprovalError(
                "request severity %s is lower than its decision's %s (decide run %s)"
                % (severity, floor, doc["decision"].get("run_id") or "?")
            )
        raise ApprovalError(
            "request severity %s without a decision record: only high may be requested "
            "without one (knowngood request --decision RECORD)" % severity
        )


def playbook_name(path):
    base = os.path.basename(str(path))
    return base[:-4] if base.endswith(".yml") else base


def normalize_inventory(inventory):
    items = inventory if isinstance(inventory, (list, tuple)) else [inventory]
    return sorted(os.path.realpath(i) if os.path.exists(i) else str(i) for i in items if i)


def build_request(
    playbook,
    inventory,
    limit,
    extra_vars,
    severity,
    requester,
    ticket,
    reason,
    ttl_s,
    now=None,
    decision=None,
):
    """A new request document for this run (what `knowngood request` writes).

    `decision` is decision_summary() of the decide run it answers; severity defaults to the
    decision's and may not be lower (high without a decision)."""
    if not severity:
        severity = severity_floor({"decision": decision or {}})
    if severity not in SEVERITIES:
        raise ApprovalError("severity must be low, medium or high, got %r" % (severity,))
    if not requester:
        raise ApprovalError("a request needs its requester")
    if not ticket or not reason:
        raise ApprovalError("a request needs a ticket and a reason")
    if not 60 <= int(ttl_s) <= 7 * 86400:
        raise ApprovalError("expiry must be between 1 minute and 7 days, got %ss" % ttl_s)
    now = now or utcnow()
    public = split_inputs(extra_vars)[0]
    doc = {
        "version": 2,
        "playbook": playbook_name(playbook),
        "inventory": normalize_inventory(inventory),
        "limit": limit or "",
        "public_inputs": public,
        "secret_inputs": bind_secrets(extra_vars),
        "decision": dict(decision or {}),
        "severity": severity,
        "requester": requester,
        "ticket": ticket,
        "reason": reason,
        "created_at": iso(now),
        "expires_at": iso(now + datetime.timedelta(seconds=int(ttl_s))),
    }
    check_severity(doc)
    return doc


def canonical(doc):
    """The exact bytes that are hashed and signed."""
    missing = [f for f in REQUEST_FIELDS if f not in doc]
    extra = sorted(set(doc) - set(REQUEST_FIELDS))
    if missing or extra:
        raise ApprovalError("request fields: missing %s, unknown %s" % (missing, extra))
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def request_id(doc):
    return hashlib.sha256(canonical(doc)).hexdigest()


def load_request_file(path):
    """{'request': doc, 'id': ..., 'approvals': [...]} from a request file."""
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ApprovalError("cannot read request %s: %s" % (path, exc)) from None
    if not isinstance(data, dict) or not isinstance(data.get("request"), dict):
        raise ApprovalError("%s is not a knowngood rollback request" % path)
    data.setdefault("approvals", [])
    return data


def write_request_file(path, data):
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".req-")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.rename(tmp, path)


def _ssh_keygen(args, data=None):
    proc = subprocess.run(
        ["ssh-keygen"] + args, input=data, capture_output=True, check=False, timeout=30
    )
    return (
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )


def sign(doc, key_path):
    """Signature (armored text) over the request's canonical bytes with an SSH private key."""
    code, out, err = _ssh_keygen(
        ["-Y", "sign", "-q", "-f", key_path, "-n", NAMESPACE], canonical(doc)
    )
    if code != 0 or "BEGIN SSH SIGNATURE" not in out:
        raise ApprovalError("ssh-keygen -Y sign failed: %s" % (err.strip() or out.strip()))
    return out


def key_fingerprint(key_path):
    pub = key_path if key_path.endswith(".pub") else key_path + ".pub"
    code, out, err = _ssh_keygen(
        ["-l", "-E", "sha256", "-f", pub if os.path.exists(pub) else key_path]
    )
    if code != 0:
        raise ApprovalError("cannot fingerprint %s: %s" % (key_path, err.strip()))
    return out.split()[1]


def verify(doc, signature, allowed_signers):
    """The principal whose key made `signature` over exactly this request, or ApprovalError."""
    if not allowed_signers or not os.path.isfile(allowed_signers):
        raise ApprovalError("allowed_signers file %r does not exist" % (allowed_signers,))
    fd, sig_path = tempfile.mkstemp(prefix="knowngood-sig-")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(signature)
        code, out, err = _ssh_keygen(
            ["-Y", "find-principals", "-s", sig_path, "-f", allowed_signers, "-n", NAMESPACE]
        )
        principals = [p for p in out.split() if p]
        if code != 0 or not principals:
            raise ApprovalError("signed by a key that is not in %s" % allowed_signers)
        for principal in principals:
            code, out, err = _ssh_keygen(
                [
                    "-Y",
                    "verify",
                    "-f",
                    allowed_signers,
                    "-I",
                    principal,
                    "-n",
                    NAMESPACE,
                    "-s",
                    sig_path,
                ],
                canonical(doc),
            )
            if code == 0:
                return principal
        raise ApprovalError("signature by %s does not match this request" % ", ".join(principals))
    finally:
        os.unlink(sig_path)


def assign_roles(signers, required):
    """Map each required role to a distinct signer holding it; None when impossible.

    signers: {principal: set(roles)}. Small (a handful of people), so every order is tried.
    """
    required = list(required)
    if not required:
        return {}
    names = sorted(signers)
    for chosen in itertools.permutations(names, len(required)):
        if all(role in signers[name] for role, name in zip(required, chosen, strict=False)):
            return dict(zip(required, chosen, strict=False))
    return None


def check(doc, approvals, allowed_signers, approvers, matrix, now=None, executors=()):
    """Judge a request's approvals. Returns a dict; `approved` says whether it may run.

    `executors`: who actually runs it (OS user, AWX launcher); none of them may approve."""
    now = now or utcnow()
    severity = doc.get("severity")
    if severity not in SEVERITIES:
        raise ApprovalError("request severity %r is not low, medium or high" % (severity,))
    check_severity(doc)
    row = (matrix or {}).get(severity)
    if not isinstance(row, dict) or not isinstance(row.get("approvals"), list):
        raise ApprovalError("the decision matrix has no approvals for severity %s" % severity)
    required = list(row["approvals"])
    unknown = [r for r in required if r not in ROLES]
    if unknown:
        raise ApprovalError("the decision matrix names unknown roles %s" % unknown)
    expires = parse_iso(doc.get("expires_at"))
    result = {
        "request_id": request_id(doc),
        "severity": severity,
        "required_roles": required,
        "signers": [],
        "refused": [],
        "assignment": {},
        "missing_roles": list(required),
        "approved": False,
        "expired": now >= expires,
    }
    if result["expired"]:
        result["refused"].append("request expired at %s" % doc["expires_at"])
        return result
    valid = {}
    for item in approvals or []:
        try:
            principal = verify(doc, item.get("signature", ""), allowed_signers)
        except ApprovalError as exc:
            result["refused"].append("%s: %s" % (item.get("signer", "unknown"), exc))
            continue
        if principal == doc.get("requester"):
            result["refused"].append(
                "%s: the requester cannot approve their own request" % principal
            )
            continue
        entry = approvers.get(principal) or {}
        runs_it = sorted(set([principal, entry.get("os_user") or principal]) & set(executors))
        if runs_it:
            result["refused"].append(
                "%s: signed a request that %s executes: self-approval is refused"
                % (principal, runs_it[0])
            )
            continue
        roles = set(entry.get("roles") or [])
        result["signers"].append(
            {"principal": principal, "roles": sorted(roles), "signed_at": item.get("signed_at", "")}
        )
        valid[principal] = roles
    assignment = assign_roles(valid, required)
    if assignment is None:
        held = set().union(*valid.values()) if valid else set()
        # Every role may be held and still fail: one person cannot fill two roles.
        result["missing_roles"] = [r for r in required if r not in held]
        result["refused"].append(
            "needs %s signed by %d distinct people; valid signers: %s"
            % (
                " + ".join(required),
                len(required),
                ", ".join(
                    "%s (%s)" % (p, ", ".join(sorted(r)) or "no role")
                    for p, r in sorted(valid.items())
                )
                or "none",
            )
        )
        return result
    result.update({"assignment": assignment, "missing_roles": [], "approved": True})
    return result


def compare_run(doc, run):
    """Fields of the request that differ from the run (playbook, inventory, limit, inputs)."""
    differ = []
    for field in ("playbook", "inventory", "limit", "public_inputs", "secret_inputs"):
        if doc.get(field) != run.get(field):
            differ.append(field)
    return differ


def break_glass_ok(reason):
    return bool(reason) and len(reason.strip()) >= MIN_BREAK_GLASS_REASON


# The arguments of knowngood.runbooks.approval_gate: its action validates with them, its module
# (documentation only) declares them.
GATE_ARGUMENT_SPEC = dict(
    request=dict(type="path"),
    required=dict(type="bool"),
    allowed_signers_file=dict(type="path"),
    approvers=dict(type="dict", default={}),
    matrix=dict(type="dict", default={}),
    break_glass_reason=dict(type="str", default=""),
    audit_dir=dict(type="path"),
    awx=dict(
        type="dict",
        options=dict(
            job_id=dict(type="int"),
            workflow_job_id=dict(type="int"),
            severity=dict(type="str"),
            host=dict(type="str"),
            token=dict(type="str", no_log=True),
            role_teams=dict(type="dict"),
            validate_certs=dict(type="bool", default=True),
        ),
    ),
)
