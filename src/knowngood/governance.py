"""Rollback requests and approvals from the command line (`knowngood request`, `approve`).

The logic lives in the collection's module_utils (approval.py), shared with the gate.
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path

from knowngood import runner
from knowngood.errors import KnowngoodError
from knowngood.modutils import module_utils

approval = module_utils("approval")


def create_request(
    *,
    runbook: str,
    inventory: str,
    limit: str,
    extravars: dict,
    severity: str,
    requester: str,
    ticket: str,
    reason: str,
    ttl_s: int,
    out: Path,
    decision: dict | None = None,
) -> Path:
    playbook = runner.playbook_path(runbook)
    try:
        doc = approval.build_request(
            playbook,
            [inventory],
            limit,
            extravars,
            severity,
            requester or getpass.getuser(),
            ticket,
            reason,
            ttl_s,
            decision=decision,
        )
    except approval.ApprovalError as exc:
        raise KnowngoodError(str(exc)) from None
    out.mkdir(parents=True, exist_ok=True)
    rid = approval.request_id(doc)
    path = out / f"{rid}.json"
    approval.write_request_file(str(path), {"request": doc, "id": rid, "approvals": []})
    return path


def read_decision(ref: str, audit_dir: Path) -> dict:
    """What a request keeps of a decide run: from its audit record (a path or a run id)."""
    path = Path(ref)
    if not path.exists():
        path = audit_dir / module_utils("audit_record").record_name(ref)
    try:
        record = json.loads(path.read_text())
        return approval.decision_summary(record)
    except (OSError, ValueError) as exc:
        raise KnowngoodError(f"cannot read decision record {ref}: {exc}") from None
    except approval.ApprovalError as exc:
        raise KnowngoodError(f"{path}: {exc}") from None


def read_request(path: Path) -> dict:
    try:
        return approval.load_request_file(str(path))["request"]
    except approval.ApprovalError as exc:
        raise KnowngoodError(str(exc)) from None


def approve(path: Path, key: Path, signer: str = "") -> str:
    """Sign the request in `path` with `key`; returns a line saying what was signed."""
    try:
        data = approval.load_request_file(str(path))
        doc = data["request"]
        rid = approval.request_id(doc)
        if data.get("id") and data["id"] != rid:
            raise approval.ApprovalError(
                f"{path} was edited after it was written (id {data['id'][:12]}, content {rid[:12]})"
            )
        signature = approval.sign(doc, str(key))
        fingerprint = approval.key_fingerprint(str(key))
    except approval.ApprovalError as exc:
        raise KnowngoodError(str(exc)) from None
    who = signer or getpass.getuser()
    data["approvals"].append(
        {
            "signer": who,
            "key_fingerprint": fingerprint,
            "signed_at": approval.iso(approval.utcnow()),
            "signature": signature,
        }
    )
    approval.write_request_file(str(path), data)
    return f"{who} ({fingerprint}) signed request {rid[:12]} ({doc['playbook']}, {doc['severity']})"


def notify_request(
    path: Path, inventory: str, audit_dir: Path, audit_key: Path, extravars: dict
) -> list[str]:
    """Tell on-call and the approvers (playbooks/notify.yml, recorded); lines saying how it went.

    Only the request's knowngood_notify* extra variables (channels given with -e) pass on.
    A failed notice is reported, never an error: the request stands either way.
    """
    channels = {k: v for k, v in extravars.items() if k.startswith("knowngood_notify")}
    result = runner.run(
        runner.RunRequest(
            runbook="notify",
            inventory=inventory,
            extravars={**channels, "knowngood_notify_request": str(path.resolve())},
            audit_dir=audit_dir,
            audit_key=audit_key,
            quiet=True,
        )
    )
    sent = result.record.get("notifications", [])
    if result.status != "successful":
        failed = [e for e in result.record.get("events", []) if e["status"] == "failed"]
        why = failed[0]["result"].get("msg", "") if failed else result.status
        return [f"notify: not sent: {why} (audit record {result.record_path})"]
    if not sent:
        return ["notify: no notification channel configured (knowngood_notify)"]
    lines = []
    for n in sent:
        line = f"notify: {n['event']} {n['channel']} {n['target']}: {n['outcome']}"
        if n["outcome"] != "delivered":
            line += f" after {n['attempts']} attempt(s): {n['error']}"
        lines.append(line)
    return lines
