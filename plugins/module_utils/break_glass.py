# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The break-glass lifecycle: open, signed after the fact, escalated, closed in the audit trail.

A break-glass run is a run whose audit record says `approvals.mode: break_glass`; the gate left
its request (the run as it was, severity and all) in <audit>/requests/<request id>.json. It
stays open until the roles the policy's decision matrix requires for that severity have all
signed that request post hoc, each a distinct person, none of them who broke the glass. Then
`knowngood breakglass sign` appends a closing entry (kind break_glass_closed) to the audit
chain: signed, hash-chained, checkpointed and witnessed like every entry, so `knowngood audit
verify` catches it being edited or removed.

The trust root is the governance policy (policy.load), the very file the gate reads: its
allowed_signers file verifies each signature, its approvers map signers to roles, its matrix
names the roles. Nothing here reads an Ansible variable, and inventory values cannot narrow or
widen it after the run.

Escalation (kind break_glass_escalated) is recorded in the same chain, at most once per period:
an open break-glass older than the limit is due when it was never escalated, or last escalated
a whole period ago.
"""

import contextlib
import fcntl
import hashlib
import itertools
import json
import os

from ansible_collections.knowngood.runbooks.plugins.module_utils import (
    approval,
    audit_chain,
    audit_record,
    policy,
)

CLOSED = "break_glass_closed"
ESCALATED = "break_glass_escalated"


class BreakGlassError(Exception):
    """A break-glass that cannot be listed, signed or escalated as asked; the message says why."""


def parse_stamp(ts):
    """Epoch seconds of the gate's (YYYY-MM-DDTHH:MM:SSZ) or the chain's (.ffffffZ) stamps."""
    text = str(ts or "")
    if "." in text:
        text = text.split(".", 1)[0] + "Z"
    return approval.parse_iso(text).timestamp()


def recorded(entries):
    """({run id: closing entry}, {run id: [escalation entries, oldest first]}) of the trail."""
    closed, escalated = {}, {}
    for entry in entries:
        if entry.get("kind") == CLOSED:
            closed.setdefault(entry.get("run_id"), entry)
        elif entry.get("kind") == ESCALATED:
            escalated.setdefault(entry.get("run_id"), []).append(entry)
    return closed, escalated


def records(audit_dir, entries):
    """The audit records of the break-glass runs in the trail, oldest first."""
    found = []
    for entry in entries:
        if entry.get("kind", "record") != "record" or not entry.get("run_id"):
            continue
        record = audit_record.read(audit_dir, entry["run_id"])
        if record and (record.get("approvals") or {}).get("mode") == "break_glass":
            found.append(record)
    return found


def request_path(audit_dir, record):
    rid = str((record.get("approvals") or {}).get("request_id") or "")
    if not rid or not all(c in "0123456789abcdef" for c in rid):
        raise BreakGlassError("run %s recorded no break-glass request id" % record.get("run_id"))
    return os.path.join(audit_dir, "requests", "%s.json" % rid)


def load_request(audit_dir, record):
    """The post-hoc request file's data; refused when its content is not the recorded request."""
    path = request_path(audit_dir, record)
    try:
        data = approval.load_request_file(path)
    except approval.ApprovalError as exc:
        raise BreakGlassError(str(exc)) from None
    try:
        rid = approval.request_id(data["request"])
    except approval.ApprovalError as exc:
        raise BreakGlassError("%s: %s" % (path, exc)) from None
    if rid != record["approvals"]["request_id"]:
        raise BreakGlassError(
            "%s is not the request run %s recorded (content %s, record %s): edited after the run"
            % (path, record["run_id"], rid[:12], record["approvals"]["request_id"][:12])
        )
    return path, data


def broken_by(record, data=None):
    """Names of who broke the glass: the executor the gate saw, and the request's requester."""
    names = {str((record.get("approvals") or {}).get("executed_by") or "")}
    info = (data or {}).get("break_glass") or {}
    names.add(str(info.get("executed_by") or ""))
    names.add(str(((data or {}).get("request") or {}).get("requester") or ""))
    return sorted(n for n in names if n)


def required_roles(trust, severity):
    row = (trust["decision_matrix"] or {}).get(severity)
    if not isinstance(row, dict) or not isinstance(row.get("approvals"), list):
        raise BreakGlassError("the policy's decision matrix has no approvals for %s" % severity)
    return list(row["approvals"])


def _self_signed(principal, trust, breakers):
    entry = (trust["approvers"] or {}).get(principal) or {}
    return sorted({principal, entry.get("os_user") or principal} & set(breakers))


def judge(doc, approvals, trust, breakers):
    """Who validly signed `doc` post hoc and which required roles are still missing.

    Each signature is verified against the policy's allowed_signers; signatures by whoever broke
    the glass, and a second signature by the same person, do not count. No expiry: signing
    after the fact is the point."""
    required = required_roles(trust, doc.get("severity"))
    valid, signers, refused = {}, [], []
    for item in approvals or []:
        try:
            principal = approval.verify(
                doc, item.get("signature", ""), trust["allowed_signers_file"]
            )
        except approval.ApprovalError as exc:
            refused.append("%s: %s" % (item.get("signer", "unknown"), exc))
            continue
        if _self_signed(principal, trust, breakers):
            refused.append("%s: broke the glass and cannot sign it off" % principal)
            continue
        if principal in valid:
            refused.append("%s: signed twice; counted once" % principal)
            continue
        roles = set(((trust["approvers"] or {}).get(principal) or {}).get("roles") or [])
        valid[principal] = roles
        signers.append(
            {
                "principal": principal,
                "roles": sorted(roles),
                "signed_at": item.get("signed_at", ""),
                "key_fingerprint": item.get("key_fingerprint", ""),
            }
        )
    assignment = {}
    for size in range(len(required), 0, -1):  # the most roles distinct signers can fill
        for roles in itertools.combinations(required, size):
            assignment = approval.assign_roles(valid, roles) or {}
            if assignment:
                break
        if assignment:
            break
    missing = [r for r in required if r not in assignment]
    return {
        "required_roles": required,
        "signers": signers,
        "refused": refused,
        "assignment": assignment,
        "missing_roles": missing,
    }


def state(audit_dir, record, entries_index, trust, now):
    """One break-glass run's state: open, partly signed or closed, with what is missing."""
    closed, escalated = entries_index
    approvals = record.get("approvals") or {}
    run_id = record["run_id"]
    out = {
        "run_id": run_id,
        "runbook": approval.playbook_name(record.get("playbook") or "?"),
        "broken_by": approvals.get("executed_by") or record.get("user") or "?",
        "reason": approvals.get("break_glass_reason") or "",
        "at": record.get("started_at") or "",
        "age_h": round((now - parse_stamp(record.get("started_at"))) / 3600.0, 2),
        "ticket": record.get("ticket") or "",
        "severity": approvals.get("severity") or "",
        "request_id": approvals.get("request_id") or "",
        "request_file": "",
        "required_roles": [],
        "signers": [],
        "missing_roles": [],
        "refused": [],
        "escalations": len(escalated.get(run_id, [])),
        "last_escalated_at": (escalated.get(run_id) or [{}])[-1].get("at", ""),
        "closed_by": "",
        "closed_at": "",
        "state": "open",
    }
    if run_id in closed:
        entry = closed[run_id]
        out.update(
            state="closed",
            closed_by=entry.get("closed_by", ""),
            closed_at=entry.get("closed_at", ""),
            signers=entry.get("signers") or [],
            required_roles=entry.get("required_roles") or [],
        )
        return out
    try:
        out["request_file"], data = load_request(audit_dir, record)
        out["severity"] = data["request"].get("severity") or out["severity"]
        if trust is None:
            out["refused"].append("signatures not verified: no governance policy")
            out["missing_roles"] = ["unknown (no governance policy)"]
            return out
        verdict = judge(data["request"], data["approvals"], trust, broken_by(record, data))
    except BreakGlassError as exc:
        out["refused"].append(str(exc))
        out["missing_roles"] = ["unknown (%s)" % exc]
        return out
    out.update(
        required_roles=verdict["required_roles"],
        signers=verdict["signers"],
        missing_roles=verdict["missing_roles"],
        refused=verdict["refused"],
        state="partly signed" if verdict["signers"] and verdict["missing_roles"] else "open",
    )
    return out


def states(audit_dir, trust, now, include_closed=False):
    """Every break-glass run of the trail with its state, oldest first (closed ones on request)."""
    entries = audit_chain.entries(audit_dir) if os.path.isdir(audit_dir) else []
    index = recorded(entries)
    found = [state(audit_dir, r, index, trust, now) for r in records(audit_dir, entries)]
    return [s for s in found if include_closed or s["state"] != "closed"]


def of_run(audit_dir, run_id, trust, now):
    """The state of one run's break-glass, refused when the run is unknown or not break-glass."""
    audit_chain.check_name(run_id, "run id")
    record = audit_record.read(audit_dir, run_id)
    if record is None:
        raise BreakGlassError("no audit record %s in %s" % (run_id, audit_dir))
    if (record.get("approvals") or {}).get("mode") != "break_glass":
        raise BreakGlassError(
            "run %s was not break-glass (approval mode %s): nothing to sign after the fact"
            % (run_id, (record.get("approvals") or {}).get("mode") or "none")
        )
    entries = audit_chain.entries(audit_dir)
    return record, state(audit_dir, record, recorded(entries), trust, now)


@contextlib.contextmanager
def locked(audit_dir, name=".break-glass.lock"):
    """One lifecycle at a time: read the trail, judge, append, under this lock."""
    with open(os.path.join(audit_dir, name), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def sign(trail, run_id, key, signer, trust, now, who):
    """Sign run_id's break-glass request post hoc with `key`; close it when complete.

    Returns (state after, closing entry or None). Refuses an unknown run, a run that was not
    break-glass, a closed one, a key the policy's allowed_signers does not know, a signer whose
    key is someone else's, whoever broke the glass, a second signature by the same person, and
    a signer holding none of the roles still missing."""
    audit_dir = trail["audit_dir"]
    with locked(audit_dir):
        record, before = of_run(audit_dir, run_id, trust, now)
        if before["state"] == "closed":
            raise BreakGlassError(
                "break-glass %s is already closed (by %s at %s)"
                % (run_id, before["closed_by"], before["closed_at"])
            )
        path, data = load_request(audit_dir, record)
        doc = data["request"]
        try:
            signature = approval.sign(doc, key)
            fingerprint = approval.key_fingerprint(key)
            principal = approval.verify(doc, signature, trust["allowed_signers_file"])
        except approval.ApprovalError as exc:
            raise BreakGlassError("key %s refused: %s" % (key, exc)) from None
        if signer and signer != principal:
            raise BreakGlassError(
                "key %s belongs to %s in %s, not to %s"
                % (key, principal, trust["allowed_signers_file"], signer)
            )
        breakers = broken_by(record, data)
        if _self_signed(principal, trust, breakers):
            raise BreakGlassError(
                "%s broke the glass on run %s and cannot sign it off" % (principal, run_id)
            )
        verdict = judge(doc, data["approvals"], trust, breakers)
        if principal in set(s["principal"] for s in verdict["signers"]):
            raise BreakGlassError("%s already signed break-glass %s" % (principal, run_id))
        roles = set(((trust["approvers"] or {}).get(principal) or {}).get("roles") or [])
        if not roles & set(verdict["missing_roles"]):
            raise BreakGlassError(
                "%s holds %s; break-glass %s still needs %s"
                % (
                    principal,
                    ", ".join(sorted(roles)) or "no role",
                    run_id,
                    ", ".join(verdict["missing_roles"]),
                )
            )
        data["approvals"].append(
            {
                "signer": principal,
                "key_fingerprint": fingerprint,
                "signed_at": approval.iso(approval.utcnow()),
                "signature": signature,
                "post_hoc": True,
            }
        )
        approval.write_request_file(path, data)
        verdict = judge(doc, data["approvals"], trust, breakers)
        entry = None
        if not verdict["missing_roles"]:
            entry = audit_chain.append(
                audit_dir,
                closing_entry(record, doc, data["approvals"], verdict, principal, trust, who),
                trail["key"],
                trail["witness"],
            )
        return of_run(audit_dir, run_id, trust, now)[1], entry


def closing_entry(record, doc, approvals, verdict, principal, trust, who):
    """The index entry that closes a break-glass: who signed (roles), who closed it, when."""
    signatures = hashlib.sha256(
        json.dumps([a.get("signature") for a in approvals], sort_keys=True).encode()
    ).hexdigest()
    approvals_ = record.get("approvals") or {}
    return {
        "kind": CLOSED,
        "run_id": record["run_id"],
        "playbook": approval.playbook_name(record.get("playbook") or ""),
        "request_id": approval.request_id(doc),
        "severity": doc.get("severity"),
        "broken_by": approvals_.get("executed_by") or "",
        "broken_at": record.get("started_at") or "",
        "break_glass_reason": approvals_.get("break_glass_reason") or "",
        "required_roles": verdict["required_roles"],
        "signers": [
            dict(
                s,
                role=next((r for r, p in verdict["assignment"].items() if p == s["principal"]), ""),
            )
            for s in verdict["signers"]
        ],
        "signatures_sha256": signatures,
        "closed_by": principal,
        "closed_at": audit_chain.utcnow(),
        "recorded_by": who,
        "policy_digest": trust.get("digest", ""),
    }


def escalate_after(trust, asked=None):
    """Hours after which an open break-glass is escalated: the policy's (default 24); `asked`
    (--after) may make it sooner, never later."""
    limit = float(
        (trust or {}).get("break_glass_escalate_after_h") or policy.DEFAULT_ESCALATE_AFTER_H
    )
    if asked is None:
        return limit
    if not 0 < float(asked) <= limit:
        raise BreakGlassError(
            "--after %s refused: it must be more than 0 and at most the policy's %s h"
            % (asked, limit)
        )
    return float(asked)


def due(item, after_h, now):
    """Whether an open break-glass is to be escalated now: older than the limit, and never
    escalated or last escalated at least a whole period ago (once per period)."""
    if item["state"] == "closed" or item["age_h"] < after_h:
        return False
    return period_passed(item["last_escalated_at"], after_h, now)


def period_passed(last_at, period_h, now):
    """Whether a reminder last sent at last_at (empty: never) may be sent again now."""
    return not last_at or now - parse_stamp(last_at) >= period_h * 3600.0


def escalation_entry(item, after_h, outcome):
    return {
        "kind": ESCALATED,
        "run_id": item["run_id"],
        "at": audit_chain.utcnow(),
        "age_h": item["age_h"],
        "after_h": after_h,
        "missing_roles": item["missing_roles"],
        "notify_run_id": outcome.get("run_id", ""),
        "notified": outcome.get("summary", ""),
    }


def escalate(trail, trust, after_h, now, send):
    """Escalate every due open break-glass: send(items) tells the contacts and returns
    {run_id, summary}; one chained escalation entry per run. Returns the entries written."""
    audit_dir = trail["audit_dir"]
    with locked(audit_dir):
        items = [s for s in states(audit_dir, trust, now) if due(s, after_h, now)]
        if not items:
            return [], items
        outcome = send(items)
        written = [
            audit_chain.append(
                audit_dir, escalation_entry(item, after_h, outcome), trail["key"], trail["witness"]
            )
            for item in items
        ]
    return written, items
