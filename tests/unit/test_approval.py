"""Signed approvals with real ssh-keygen: what the gate accepts and every way it refuses."""

from __future__ import annotations

import datetime
import subprocess

import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils import approval, decision

PEOPLE = {
    "tess": ["team_lead"],
    "carla": ["cto"],
    "ivan": ["infra_lead"],
    "boss": ["cto", "infra_lead"],
}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    lines = []
    for name in [*PEOPLE, "mallory"]:
        key = root / name
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True
        )
        if name != "mallory":  # mallory's key is not in the trust root
            kind, blob = (root / f"{name}.pub").read_text().split()[:2]
            lines.append(f'{name} namespaces="knowngood-approval" {kind} {blob}')
    (root / "allowed_signers").write_text("\n".join(lines) + "\n")
    return root


def request(severity="high", requester="tess", **inputs):
    return approval.build_request(
        "/x/playbooks/rollback-code.yml",
        "/nonexistent/inventory",
        "",
        {"rollback_reason": "errors", "release_id": "v1", "db_password": "hunter2", **inputs},
        severity,
        requester,
        "INC-1",
        "v2 error rate 37%",
        3600,
    )


def signed(keys, doc, *names):
    return [{"signer": n, "signature": approval.sign(doc, str(keys / n))} for n in names]


def judge(keys, doc, approvals, now=None):
    approvers = {name: {"roles": roles} for name, roles in PEOPLE.items()}
    return approval.check(
        doc, approvals, str(keys / "allowed_signers"), approvers, decision.DEFAULT_MATRIX, now
    )


def test_request_keeps_secret_inputs_by_name_only():
    doc = request()
    assert doc["secret_inputs"] == ["db_password"]
    assert "hunter2" not in approval.canonical(doc).decode()
    assert doc["playbook"] == "rollback-code" and len(approval.request_id(doc)) == 64


def test_high_severity_needs_cto_and_infra_lead_as_two_people(keys):
    doc = request()
    ok = judge(keys, doc, signed(keys, doc, "carla", "ivan"))
    assert ok["approved"] and ok["assignment"] == {"cto": "carla", "infra_lead": "ivan"}
    one = judge(keys, doc, signed(keys, doc, "carla"))
    assert not one["approved"] and one["missing_roles"] == ["infra_lead"]
    both_roles_one_person = judge(keys, doc, signed(keys, doc, "boss"))
    assert not both_roles_one_person["approved"]
    assert judge(keys, doc, signed(keys, doc, "boss", "ivan"))["approved"]


def test_wrong_role_is_refused(keys):
    doc = request()
    out = judge(keys, doc, signed(keys, doc, "tess", "ivan"))
    assert not out["approved"] and out["missing_roles"] == ["cto"]
    low = request(severity="low", requester="carla")
    assert judge(keys, low, signed(keys, low, "tess"))["approved"]


def test_forged_signature_is_refused(keys):
    doc = request()
    forged = signed(keys, doc, "mallory", "ivan")
    forged[0]["signer"] = "carla"  # claims to be the CTO, key not in the trust root
    out = judge(keys, doc, forged)
    assert not out["approved"] and "not in" in out["refused"][0]
    tampered = signed(keys, doc, "carla", "ivan")
    sig = tampered[0]["signature"].splitlines()
    sig[2] = sig[2][:10] + ("A" if sig[2][10] != "A" else "B") + sig[2][11:]
    tampered[0]["signature"] = "\n".join(sig) + "\n"
    assert not judge(keys, doc, tampered)["approved"]


def test_expired_request_is_refused(keys):
    doc = request()
    later = approval.utcnow() + datetime.timedelta(hours=2)
    out = judge(keys, doc, signed(keys, doc, "carla", "ivan"), now=later)
    assert not out["approved"] and out["expired"] and "expired" in out["refused"][0]


def test_requester_cannot_approve_their_own_request(keys):
    doc = request(requester="carla")
    out = judge(keys, doc, signed(keys, doc, "carla", "ivan"))
    assert not out["approved"] and "requester cannot approve" in out["refused"][0]


def test_approval_reused_for_another_request_is_refused(keys):
    first = request()
    other = request(release_id="v0")
    out = judge(keys, other, signed(keys, first, "carla", "ivan"))
    assert not out["approved"]
    assert sum("does not match this request" in r for r in out["refused"]) == 2
    assert approval.compare_run(first, other) == ["public_inputs"]


def test_edited_request_no_longer_matches_its_signatures(keys):
    doc = request(severity="high")
    approvals = signed(keys, doc, "carla", "ivan")
    doc["severity"] = "low"  # downgrade after signing
    doc["expires_at"] = "2999-01-01T00:00:00Z"
    assert not judge(keys, doc, approvals)["approved"]


def test_break_glass_needs_a_stated_reason():
    assert not approval.break_glass_ok("")
    assert not approval.break_glass_ok("   urgent ")
    assert approval.break_glass_ok("site down, CTO unreachable, INC-7")


def test_bad_requests_are_refused_before_signing():
    with pytest.raises(approval.ApprovalError, match="severity"):
        request(severity="critical")
    with pytest.raises(approval.ApprovalError, match="expiry"):
        approval.build_request("p", "i", "", {}, "low", "a", "T", "r", 10 * 86400)
