"""The approval gate in a real rollback: refusals before anything changes, a valid pair runs."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

import pytest
from conftest import LoadClient, knowngood
from pngcheck import screenshot

pytestmark = pytest.mark.lab

REQUIRED = json.dumps({"knowngood_approval_required": True})


def record_of(done) -> dict:
    path = done.stdout.rsplit("audit record:", 1)[1].strip().splitlines()[0]
    return json.loads(Path(path).read_text())


def gate_result(record: dict) -> dict:
    return next(e for e in record["events"] if e["action"].endswith("approval_gate"))["result"]


def rollback(*args: str):
    return knowngood("run", "rollback-code", "--quiet", "-e", REQUIRED, *args)


def check_html_report(run_id: str, tmp_path: Path) -> None:
    """The report renders in a real browser: not blank, with the chart's lines drawn."""
    out = tmp_path / "report.html"
    made = knowngood("report", run_id, "--format", "html", "-o", str(out))
    assert made.returncode == 0, made.stderr
    text = out.read_text()
    assert "<svg" in text and "carla (cto)" in text and "ivan (infra_lead)" in text
    assert "src=" not in text and "href=" not in text  # one self-contained file
    px = screenshot(out, tmp_path / "report.png", "1000,2600")  # the chart is below the fold
    ink = sum(1 for p in px if sum(p) < 600) / len(px)
    red = sum(1 for r, g, b in px if r > 180 and g < 90 and b < 90)
    blue = sum(1 for r, g, b in px if b > 150 and r < 90 and 90 < g < 150)
    assert ink > 0.02 and red > 50 and blue > 50, (ink, red, blue)


def test_gate_refuses_until_the_exact_request_is_signed_by_cto_and_infra_lead(lab, tmp_path):
    lab.seed("v1", "v1.1")
    keys = lab.root / "governance" / "keys"
    made = knowngood(
        "request",
        "rollback-code",
        "-e",
        "release_id=v1",
        "--severity",
        "high",
        "--ticket",
        "INC-42",
        "--reason",
        "v1.1 checkout errors",
        "--requester",
        "oscar",
    )
    assert made.returncode == 0, made.stderr
    request = made.stdout.strip()

    none = rollback("--ticket", "INC-42", "--reason", "no request", "-e", "release_id=v1")
    assert none.returncode == 2 and "approval refused" in none.stdout

    def sign(who: str) -> None:
        done = knowngood("approve", request, "--key", str(keys / who), "--signer", who)
        assert done.returncode == 0, done.stderr

    sign("carla")
    half = rollback("--request", request, "-e", "release_id=v1")
    assert half.returncode == 2
    assert gate_result(record_of(half))["missing_roles"] == ["infra_lead"]

    short = rollback("--request", request, "-e", "release_id=v1", "--break-glass", "urgent")
    assert short.returncode == 2 and "break-glass needs a stated reason" in short.stdout
    assert lab.live_releases() == {"v1.1"}  # nothing changed so far

    sign("ivan")
    other = rollback("--request", request, "-e", "release_id=v1.1")  # signed for v1, not v1.1
    assert other.returncode == 2 and "public_inputs differ" in other.stdout

    with LoadClient(lab.status["lb_url"] + "/", threads=2):
        done = rollback("--request", request, "-e", "release_id=v1")
    assert done.returncode == 0, done.stdout
    gate = gate_result(record_of(done))
    assert gate["mode"] == "approved" and gate["approved"] is True
    assert {s["principal"] for s in gate["signers"]} == {"carla", "ivan"}
    assert lab.live_releases() == {"v1"}
    check_html_report(record_of(done)["run_id"], tmp_path)

    # Signed requests run once (test_governance_policy proves the refusals under a policy).
    again = rollback("--request", request, "-e", "release_id=v1")
    assert again.returncode == 2 and "was already used at" in again.stdout


def open_break_glass(run_id: str) -> list[dict]:
    listed = knowngood("breakglass", "list", "--json", "--all")
    assert listed.returncode == 0, listed.stderr
    return [b for b in json.loads(listed.stdout)["break_glass"] if b["run_id"] == run_id]


def test_break_glass_proceeds_and_stays_open_until_cto_and_infra_lead_sign_it_off(lab, tmp_path):
    lab.seed("v1", "v1.1")
    done = rollback("--check", "--ticket", "INC-43", "--break-glass", "site down, CTO unreachable")
    assert done.returncode == 0, done.stdout
    record = record_of(done)
    gate, run_id = gate_result(record), record["run_id"]
    assert gate["mode"] == "break_glass" and gate["post_hoc_approval"] == "open"
    posthoc = json.loads(Path(gate["post_hoc_request_file"]).read_text())
    assert posthoc["request"]["playbook"] == "rollback-code" and posthoc["approvals"] == []

    # Listed open, with who broke the glass, why, and the roles the policy's matrix needs.
    (item,) = open_break_glass(run_id)
    assert item["state"] == "open" and item["runbook"] == "rollback-code"
    assert (
        item["broken_by"] == record["approvals"]["executed_by"] == getpass.getuser()
        and item["reason"] == "site down, CTO unreachable"
    )
    assert item["missing_roles"] == ["cto", "infra_lead"] and item["age_h"] < 1
    text = knowngood("breakglass", "list").stdout
    assert run_id in text and "missing: cto, infra_lead" in text

    keys = lab.root / "governance" / "keys"

    def sign(who: str):
        return knowngood("breakglass", "sign", run_id, "--key", str(keys / who), "--signer", who)

    tess = sign("tess")  # a team lead: not a role this severity needs
    assert tess.returncode == 1 and "still needs cto, infra_lead" in tess.stderr
    half = sign("carla")
    assert half.returncode == 0 and "still missing infra_lead" in half.stdout, half.stderr
    (item,) = open_break_glass(run_id)
    assert item["state"] == "partly signed" and item["missing_roles"] == ["infra_lead"]
    again = sign("carla")
    assert again.returncode == 1 and "carla already signed" in again.stderr
    closed = sign("ivan")
    assert closed.returncode == 0 and "CLOSED by ivan" in closed.stdout, closed.stderr

    (item,) = open_break_glass(run_id)
    assert item["state"] == "closed" and item["closed_by"] == "ivan" and item["closed_at"]
    assert run_id not in knowngood("breakglass", "list").stdout  # open ones only by default
    out = tmp_path / "report.md"
    assert knowngood("report", run_id, "-o", str(out)).returncode == 0
    assert f"break-glass CLOSED by ivan at {item['closed_at']}" in out.read_text()
    assert "carla (cto), ivan (infra_lead)" in out.read_text()
    # The closing entry is in the chain, signed and witnessed like every entry.
    verify = knowngood("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    index = (lab.root / "audit" / "index.jsonl").read_text().splitlines()
    closing = [json.loads(line) for line in index if '"break_glass_closed"' in line]
    assert [c["closed_by"] for c in closing if c["run_id"] == run_id] == ["ivan"]
