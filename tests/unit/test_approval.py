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


def decided(severity):
    return {"run_id": "decide-1", "verdict": "rollback", "severity": severity}


def request(severity="high", requester="tess", decision=None, **inputs):
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
        decision=decision if decision is not None else decided(severity),
    )


def signed(keys, doc, *names):
    return [{"signer": n, "signature": approval.sign(doc, str(keys / n))} for n in names]


def judge(keys, doc, approvals, now=None, executors=("root",)):
    approvers = {name: {"roles": roles} for name, roles in PEOPLE.items()}
    return approval.check(
        doc,
        approvals,
        str(keys / "allowed_signers"),
        approvers,
        decision.DEFAULT_MATRIX,
        now,
        executors=executors,
    )


def test_request_binds_secret_inputs_by_a_salted_digest_of_their_value():
    doc = request()
    assert set(doc["secret_inputs"]) == {"db_password"}
    assert "hunter2" not in approval.canonical(doc).decode()
    assert doc["playbook"] == "rollback-code" and len(approval.request_id(doc)) == 64
    extra = {"rollback_reason": "errors", "release_id": "v1", "db_password": "hunter2"}
    same = approval.bind_secrets(extra, doc["secret_inputs"])
    assert same == doc["secret_inputs"]
    other = approval.bind_secrets(dict(extra, db_password="prod-dsn"), doc["secret_inputs"])
    assert other != doc["secret_inputs"]
    assert request()["secret_inputs"] != doc["secret_inputs"]  # salted: equal values differ
    dsn = approval.bind_secrets({"knowngood_db_dsn": "host=staging"})
    assert approval.bind_secrets({"knowngood_db_dsn": "host=prod"}, dsn) != dsn


def test_severity_comes_from_the_decision_and_cannot_be_lowered():
    assert request(severity="", decision=decided("medium"))["severity"] == "medium"
    assert request(severity="high", decision=decided("medium"))["severity"] == "high"
    with pytest.raises(approval.ApprovalError, match="lower than its decision's medium"):
        request(severity="low", decision=decided("medium"))
    with pytest.raises(approval.ApprovalError, match="without a decision record"):
        request(severity="low", decision={})
    assert request(severity="", decision={})["severity"] == "high"
    assert request(severity="low", decision=decided("none"))["severity"] == "low"
    record = {
        "run_id": "r1",
        "events": [{"action": "knowngood.runbooks.rollback_decision", "result": {
            "verdict": "rollback", "severity": "high", "approvals_required": ["cto"]}}],
    }  # fmt: skip
    summary = approval.decision_summary(record)
    assert summary["severity"] == "high" and summary["run_id"] == "r1"
    assert len(summary["record_sha256"]) == 64
    with pytest.raises(approval.ApprovalError, match="no rollback decision"):
        approval.decision_summary({"events": []})


def test_a_request_edited_below_its_decision_is_refused_by_the_gate(keys):
    doc = request(severity="high", decision=decided("high"))
    approvals = signed(keys, doc, "tess")
    doc["severity"] = "low"  # a requester who signs the low row with his friend
    with pytest.raises(approval.ApprovalError, match="lower than its decision's high"):
        judge(keys, doc, approvals)


def test_the_executing_os_user_cannot_approve_whatever_the_requester_says(keys):
    doc = request(requester="oscar")
    out = judge(keys, doc, signed(keys, doc, "carla", "ivan"), executors={"root", "carla"})
    assert not out["approved"] and "carla executes" in out["refused"][0]
    approvers = {
        "cbrown": {"roles": ["cto"], "os_user": "carla"},
        "ivan": {"roles": ["infra_lead"]},
    }
    assert approval.assign_roles({"ivan": {"infra_lead"}}, ["cto", "infra_lead"]) is None
    out = approval.check(
        doc, [], str(keys / "allowed_signers"), approvers, decision.DEFAULT_MATRIX,
        executors={"carla"},
    )  # fmt: skip
    assert not out["approved"]


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
    low = request(severity="low", requester="carla", decision=decided("low"))
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
    same_secret = approval.bind_secrets({"db_password": "hunter2"}, first["secret_inputs"])
    run = dict(other, secret_inputs=same_secret)
    assert approval.compare_run(first, run) == ["public_inputs"]


def test_edited_request_no_longer_matches_its_signatures(keys):
    doc = request(severity="high")
    approvals = signed(keys, doc, "carla", "ivan")
    doc["expires_at"] = "2999-01-01T00:00:00Z"  # extended after signing
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
