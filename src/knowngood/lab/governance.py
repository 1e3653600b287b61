"""The lab's governance data: its policy file, approvers with SSH keys, contacts.

Production keeps the trust root in /etc/knowngood/policy.yml (docs/policy.example.yml) and
the contacts in group_vars (inventories/example/group_vars/all.yml). The lab makes one SSH key
per approver so the demo and the tests can sign requests, and writes its own policy,
<lab>/governance/policy.yml, which the gate finds through KNOWNGOOD_LAB_DIR: approvals off
for the demo lab's runbooks, the same matrix, signers and approvers as production's shape.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from knowngood.lab.config import LabConfig
from knowngood.modutils import module_utils

# name -> roles (section 2.2): a team lead, a CTO, an infrastructure lead, an on-call engineer.
LAB_APPROVERS = {
    "tess": ["team_lead"],
    "carla": ["cto"],
    "ivan": ["infra_lead"],
    "oscar": [],
}


def approver_key(cfg: LabConfig, name: str) -> Path:
    return cfg.root / "governance" / "keys" / name


def ensure_keys(cfg: LabConfig) -> dict[str, Path]:
    """One ed25519 key per lab approver (made once), and the allowed_signers trust root."""
    keys_dir = cfg.root / "governance" / "keys"
    keys_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for name in LAB_APPROVERS:
        key = keys_dir / name
        if not key.exists():
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)],
                check=True,
                capture_output=True,
            )
        pub = (keys_dir / f"{name}.pub").read_text().split()
        lines.append(f'{name} namespaces="knowngood-approval" {pub[0]} {pub[1]}')
    allowed = cfg.root / "governance" / "allowed_signers"
    allowed.write_text("\n".join(lines) + "\n")
    return {"allowed_signers": allowed, "keys_dir": keys_dir}


def lab_approvers(people: dict[str, list[str]] | None = None) -> dict:
    return {
        name: {"roles": roles, "email": f"{name}@lab.invalid"}
        for name, roles in (people or LAB_APPROVERS).items()
    }


def policy_document(
    allowed_signers: Path,
    state_dir: Path,
    *,
    required: bool,
    approvers: dict | None = None,
) -> dict:
    """A governance policy (module_utils/policy.py) with the lab's matrix and approvers."""
    return {
        "version": 1,
        "approval_required": required,
        "decision_matrix": module_utils("decision").DEFAULT_MATRIX,
        "allowed_signers_file": str(allowed_signers),
        "approvers": approvers or lab_approvers(),
        "state_dir": str(state_dir),
    }


def write_policy(path: Path, document: dict) -> Path:
    """Write a policy the way root keeps one: 0644 in a 0755 directory, nobody else writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o755)
    tmp = path.with_name(f".{path.name}.tmp")
    header = "# knowngood governance policy (JSON is YAML)\n"
    tmp.write_text(header + json.dumps(document, indent=2))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def policy_path(cfg: LabConfig) -> Path:
    return cfg.root / "governance" / "policy.yml"


def ensure_policy(cfg: LabConfig) -> Path:
    """The lab's policy: approvals off for the demo's runbooks (the governance demo and tests
    turn them on with -e knowngood_approval_required=true, which only tightens)."""
    paths = ensure_keys(cfg)
    os.chmod(paths["allowed_signers"], 0o644)
    return write_policy(
        policy_path(cfg),
        policy_document(
            paths["allowed_signers"], cfg.root / "governance" / "state", required=False
        ),
    )


def inventory_vars(cfg: LabConfig) -> dict:
    """Variables the lab inventory's `all` group gets for decisions, approvals and notices.

    The trust root is the lab's policy file (ensure_policy); the matrix and approvers here are
    the same values, for the decision and the notices, and the gate accepts them because they
    do not loosen the policy."""
    ensure_policy(cfg)
    decision = module_utils("decision")
    return {
        "knowngood_decision_matrix": decision.DEFAULT_MATRIX,
        # Two shared cores make a healthy release's p95 jump by tens of milliseconds from one
        # probe to the next; a latency rise counts only past 60 ms here, in the rollback
        # decision and in every runbook's probe (v1.2 adds 150 ms, v2 120 ms and errors).
        "knowngood_decision_thresholds": {"min_latency_delta_ms": 60.0},
        "knowngood_approvers": lab_approvers(),
        "knowngood_contacts": {
            "primary_oncall": {
                "name": "oscar",
                "email": "oscar@lab.invalid",
                "phone": "+1-555-0100",
            },
            "secondary_oncall": {
                "name": "tess",
                "email": "tess@lab.invalid",
                "phone": "+1-555-0101",
            },
            "infra_lead": {"name": "ivan", "email": "ivan@lab.invalid", "phone": "+1-555-0102"},
        },
    }


def audit_s3_env(cfg: LabConfig) -> dict[str, str]:
    """Environment that keeps a second copy of the audit checkpoint in the lab's cold bucket.

    Opt-in (tests and the demo pass it): the cold bucket has Object Lock, so each checkpoint
    object is retained for a day. Holds the lab's S3 credentials: pass it to a process's
    environment, never print it.
    """
    from knowngood.lab import s3

    access, secret = s3.s3_credentials(cfg)
    region = s3.s3_region_name(s3.COLD_REGION)
    return {
        "KNOWNGOOD_AUDIT_S3_URL": f"s3://{s3.COLD_BUCKET}/audit-checkpoints",
        "KNOWNGOOD_AUDIT_S3_ENDPOINT": s3.s3_status(cfg)[region]["endpoint"],
        "KNOWNGOOD_AUDIT_S3_REGION": region,
        "KNOWNGOOD_AUDIT_S3_LOCK_DAYS": "1",
        "AWS_ACCESS_KEY_ID": access,
        "AWS_SECRET_ACCESS_KEY": secret,
    }


def write_witness(cfg: LabConfig) -> Path:
    """The lab's audit witness, on by default: governance/audit_witness.json (0600).

    Every trail resolved under this lab (audit_chain.resolve_trail) puts each checkpoint into
    the object-locked cold bucket and `knowngood audit verify` checks against it. It holds the
    lab's S3 credentials: never print it.
    """
    env = audit_s3_env(cfg)
    doc = {k: v for k, v in env.items() if k.startswith("KNOWNGOOD_AUDIT_S3_")}
    doc["aws_access_key_id"] = env["AWS_ACCESS_KEY_ID"]
    doc["aws_secret_access_key"] = env["AWS_SECRET_ACCESS_KEY"]
    path = cfg.root / "governance" / "audit_witness.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(0o600)
    path.chmod(0o600)
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return path
