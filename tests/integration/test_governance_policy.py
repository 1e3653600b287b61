"""The governance policy against the lab: variables cannot loosen it, requests run once, the
executing user cannot approve, severity follows the decision; every refusal leaves the lab as
it was (the load balancer serves the same release, no ledger event, archive_command intact)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import psycopg
import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils import approval
from conftest import knowngood

from knowngood.lab import governance

pytestmark = pytest.mark.lab


@pytest.fixture
def governed(lab, tmp_path, monkeypatch):
    """The lab under a policy of the test's own: approvals required, and the OS user running
    the tests (root) holds the CTO role, so a request it signs itself can be tried."""
    os.chmod(tmp_path, 0o755)
    trust = tmp_path / "trust"
    trust.mkdir()
    me = trust / "me"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(me)], check=True)
    kind, blob = (trust / "me.pub").read_text().split()[:2]
    user = approval_user()
    signers = trust / "allowed_signers"
    signers.write_text(
        (lab.root / "governance" / "allowed_signers").read_text()
        + f'{user} namespaces="knowngood-approval" {kind} {blob}\n'
    )
    people = {**governance.LAB_APPROVERS, user: ["cto"]}
    approvers = governance.lab_approvers(people)
    doc = governance.policy_document(
        signers, tmp_path / "state", required=True, approvers=approvers
    )
    path = governance.write_policy(trust / "policy.yml", doc)
    monkeypatch.setenv("KNOWNGOOD_POLICY_FILE", str(path))
    lab.seed("v1", "v1.1")
    return {
        "lab": lab,
        "key": me,
        "user": user,
        "approvers": approvers,
        "state": tmp_path / "state",
    }


def approval_user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def record_of(done) -> dict:
    path = done.stdout.rsplit("audit record:", 1)[1].strip().splitlines()[0]
    return json.loads(Path(path).read_text())


def gate(done) -> dict:
    return next(e for e in record_of(done)["events"] if e["action"].endswith("approval_gate"))[
        "result"
    ]


def request(lab, *extra: str) -> str:
    made = knowngood(
        "request", "rollback-code", "--no-notify", "--ticket", "INC-13", "--reason",
        "v1.1 errors", "--requester", "oscar", *extra,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def sign(lab, path: str, *who: str, key: Path | None = None) -> None:
    for name in who:
        k = key or lab.root / "governance" / "keys" / name
        done = knowngood("approve", path, "--key", str(k), "--signer", name)
        assert done.returncode == 0, done.stderr


def test_variables_cannot_loosen_the_policy_and_nothing_changes(governed):
    lab = governed["lab"]
    events = len(lab.ledger())
    lowered = lab.playbook("rollback-code", release_id="v1", knowngood_approval_required=False)
    assert lowered.rc != 0
    assert "approval_gate_required (knowngood_approval_required)=false" in lowered.output
    assert "cannot loosen the governance policy" in lowered.output
    loose = {
        "approval_gate_required": False,
        "knowngood_decision_matrix": {s: {"approvals": []} for s in ("low", "medium", "high")},
        "knowngood_approvers": {"oscar": {"roles": ["cto", "infra_lead"]}},
        "knowngood_allowed_signers_file": str(lab.root / "mine"),
    }
    replaced = lab.playbook("rollback-code", release_id="v1", **loose)
    assert replaced.rc != 0
    for named in (
        "approval_gate_required (knowngood_approval_required)=false",
        "approval_gate_matrix (knowngood_decision_matrix) requires fewer approvals",
        "approval_gate_approvers (knowngood_approvers) gives roles the policy does not to oscar",
        "approval_gate_allowed_signers_file (knowngood_allowed_signers_file)",
    ):
        assert named in replaced.output, named
    # setup-backups rewrites archive_command: gated like the rollbacks.
    with psycopg.connect(lab.status["postgres"]["primary_dsn"]) as conn:
        before = conn.execute("SHOW archive_command").fetchone()[0]
    setup = lab.playbook("setup-backups")
    assert setup.rc != 0 and "approval refused" in setup.output
    with psycopg.connect(lab.status["postgres"]["primary_dsn"]) as conn:
        assert conn.execute("SHOW archive_command").fetchone()[0] == before
    assert lab.live_releases() == {"v1.1"} and len(lab.ledger()) == events

    # Break-glass stays possible without an audit directory: recorded in the state dir.
    glass = lab.playbook(
        "rollback-code", "--check", release_id="v1", approval_gate_audit_dir="",
        knowngood_break_glass="site down, CTO unreachable, INC-13",
    )  # fmt: skip
    assert glass.rc == 0, glass.output[-3000:]
    assert f"BREAK-GLASS by {governed['user']}" in glass.output
    kept = list((governed["state"] / "break-glass").glob("*.json"))
    assert len(kept) == 1
    data = json.loads(kept[0].read_text())
    assert data["break_glass"]["executed_by"] == governed["user"]
    assert data["request"]["playbook"] == "rollback-code"


def test_requests_run_once_never_self_approved_never_below_their_decision(governed, tmp_path):
    lab, user = governed["lab"], governed["user"]
    me = ["-e", json.dumps({"knowngood_approvers": governed["approvers"]})]
    events = len(lab.ledger())

    def rollback(path: str, *extra: str):
        return knowngood("run", "rollback-code", "--quiet", "--request", path, *extra)

    # Signed by the OS user who runs it (holding the CTO role) and the infra lead: refused.
    mine = request(lab, "-e", "release_id=v1", *me)
    sign(lab, mine, user, key=governed["key"])
    sign(lab, mine, "ivan")
    selfish = rollback(mine, "-e", "release_id=v1", *me)
    assert selfish.returncode == 2, selfish.stdout[-3000:]
    assert f"{user}: signed a request that {user} executes: self-approval" in selfish.stdout

    # Severity from the decision record: the CLI refuses a lower one, and so does the gate.
    decision = tmp_path / "decide.json"
    decision.write_text(json.dumps({"run_id": "decide-13", "events": [{
        "action": "knowngood.runbooks.rollback_decision",
        "result": {"verdict": "rollback", "severity": "high"}}]}))  # fmt: skip
    low = knowngood(
        "request", "rollback-code", "--no-notify", "-e", "release_id=v1", "--decision",
        str(decision), "--severity", "low", "--ticket", "T", "--reason", "r",
    )  # fmt: skip
    assert low.returncode != 0 and "lower than its decision's high" in low.stderr
    edited = request(lab, "-e", "release_id=v1", "--decision", str(decision))
    data = json.loads(Path(edited).read_text())
    assert data["request"]["severity"] == "high"
    data["request"]["severity"] = "low"  # the low row needs only a team lead
    data["id"] = approval.request_id(data["request"])
    approval.write_request_file(edited, data)
    sign(lab, edited, "tess")
    below = rollback(edited, "-e", "release_id=v1")
    assert below.returncode == 2
    assert "request severity low is lower than its decision's high" in below.stdout
    assert lab.live_releases() == {"v1.1"} and len(lab.ledger()) == events

    # A valid request runs once: its id and the policy's digest are in the audit record.
    good = request(lab, "-e", "release_id=v1", "--decision", str(decision))
    sign(lab, good, "carla", "ivan")
    done = rollback(good, "-e", "release_id=v1")
    assert done.returncode == 0, done.stdout[-3000:]
    approvals = record_of(done)["approvals"]
    assert approvals["mode"] == "approved" and approvals["executed_by"] == user
    assert len(approvals["policy_digest"]) == 64 and approvals["consumed"]
    assert lab.live_releases() == {"v1"}
    events = len(lab.ledger())
    again = rollback(good, "-e", "release_id=v1")
    assert again.returncode == 2
    assert f"request {approvals['request_id'][:12]} was already used at" in again.stdout
    assert len(lab.ledger()) == events and lab.live_releases() == {"v1"}
