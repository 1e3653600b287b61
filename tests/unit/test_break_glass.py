"""The break-glass lifecycle with real ssh-keygen and a real signed chain: open, partly signed,
closed in the audit trail; every refusal; escalation once per period; a tampered closing entry."""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

import pytest
import test_approval
from ansible_collections.knowngood.runbooks.plugins.module_utils import (
    approval,
    audit_chain,
    audit_record,
    break_glass,
    decision,
    policy,
)

from knowngood import report

# tess team_lead, carla cto, ivan infra_lead, boss both; mallory not in the trust root
keys = test_approval.keys


@pytest.fixture
def trust(keys):
    return {
        "decision_matrix": decision.DEFAULT_MATRIX,
        "approvers": {
            n: {"roles": r, "email": f"{n}@x.invalid"} for n, r in test_approval.PEOPLE.items()
        },
        "allowed_signers_file": str(keys / "allowed_signers"),
        "digest": "d" * 64,
        "break_glass_escalate_after_h": 24.0,
    }


@pytest.fixture
def trail(tmp_path):
    audit = tmp_path / "audit"
    audit.mkdir()
    return {"audit_dir": str(audit), "key": str(tmp_path / "k" / "audit_key"), "witness": None}


def stamp(hours_ago: float) -> str:
    when = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=hours_ago)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def recorded_run(trail, run_id, mode="break_glass", hours_ago=1.0, breaker="boss"):
    """A finished run in the chain, as the gate and the callback leave a break-glass one."""
    doc = approval.build_request(
        "/x/playbooks/rollback-code.yml",
        [],
        "",
        {"release_id": "v1"},
        "high",
        breaker,
        "INC-43",
        "break-glass: site down, CTO unreachable",
        7 * 86400,
    )
    rid = approval.request_id(doc)
    requests = f"{trail['audit_dir']}/requests"
    Path(requests).mkdir(parents=True, exist_ok=True)
    approval.write_request_file(
        f"{requests}/{rid}.json", {"request": doc, "id": rid, "approvals": []}
    )
    record = {
        "run_id": run_id,
        "playbook": "/x/playbooks/rollback-code.yml",
        "status": "successful",
        "started_at": stamp(hours_ago),
        "finished_at": stamp(hours_ago - 0.01),
        "user": breaker,
        "ticket": "INC-43",
        "events": [],
        "approvals": {
            "mode": mode,
            "request_id": rid,
            "severity": "high",
            "executed_by": breaker,
            "break_glass_reason": "site down, CTO unreachable" if mode == "break_glass" else "",
        },
    }
    audit_chain.close_record(trail, record)
    return record


def sign(trail, trust, keys, run_id, who, signer=None):
    return break_glass.sign(
        trail,
        run_id,
        str(keys / who),
        who if signer is None else signer,
        trust,
        time.time(),
        "root",
    )


def test_open_then_partly_signed_then_closed_in_the_chain(trail, trust, keys):
    recorded_run(trail, "bg-1", hours_ago=3)
    (item,) = break_glass.states(trail["audit_dir"], trust, time.time())
    assert (item["state"], item["runbook"], item["broken_by"]) == ("open", "rollback-code", "boss")
    assert item["missing_roles"] == ["cto", "infra_lead"] and item["signers"] == []
    assert 2.9 < item["age_h"] < 3.1 and item["reason"] == "site down, CTO unreachable"

    after, closing = sign(trail, trust, keys, "bg-1", "carla")
    assert closing is None and after["state"] == "partly signed"
    assert after["missing_roles"] == ["infra_lead"]
    assert [s["principal"] for s in after["signers"]] == ["carla"]

    after, closing = sign(trail, trust, keys, "bg-1", "ivan")
    assert after["state"] == "closed" and after["closed_by"] == "ivan"
    assert closing["kind"] == "break_glass_closed" and closing["broken_by"] == "boss"
    assert {(s["principal"], s["role"]) for s in closing["signers"]} == {
        ("carla", "cto"),
        ("ivan", "infra_lead"),
    }
    # the closing entry is chained and signed like every entry, and the trail still verifies
    last = audit_chain.entries(trail["audit_dir"])[-1]
    assert last["seq"] == closing["seq"] and last["closed_by"] == "ivan" and "sig" in last
    assert audit_chain.check(trail["audit_dir"], trail["key"])["tampered"] == []
    assert break_glass.states(trail["audit_dir"], trust, time.time()) == []
    (closed,) = break_glass.states(trail["audit_dir"], trust, time.time(), include_closed=True)
    assert closed["closed_at"] == closing["closed_at"]
    with pytest.raises(break_glass.BreakGlassError, match="already closed .by ivan"):
        sign(trail, trust, keys, "bg-1", "tess")


def test_refusals(trail, trust, keys):
    recorded_run(trail, "bg-2")
    recorded_run(trail, "ok-1", mode="approved")
    refused = break_glass.BreakGlassError
    with pytest.raises(refused, match="no audit record nope"):
        sign(trail, trust, keys, "nope", "carla")
    with pytest.raises(refused, match="ok-1 was not break-glass .approval mode approved"):
        sign(trail, trust, keys, "ok-1", "carla")
    with pytest.raises(refused, match="key .*mallory refused: signed by a key that is not in"):
        sign(trail, trust, keys, "bg-2", "mallory")
    with pytest.raises(refused, match="belongs to carla .* not to ivan"):
        sign(trail, trust, keys, "bg-2", "carla", signer="ivan")
    with pytest.raises(refused, match="boss broke the glass on run bg-2"):
        sign(trail, trust, keys, "bg-2", "boss")
    with pytest.raises(refused, match="tess holds team_lead; .* still needs cto, infra_lead"):
        sign(trail, trust, keys, "bg-2", "tess")
    sign(trail, trust, keys, "bg-2", "carla")
    with pytest.raises(refused, match="carla already signed break-glass bg-2"):
        sign(trail, trust, keys, "bg-2", "carla")
    # the breaker's os_user counts too: ivan logs in as boss here
    trust["approvers"]["ivan"]["os_user"] = "boss"
    with pytest.raises(refused, match="ivan broke the glass"):
        sign(trail, trust, keys, "bg-2", "ivan")
    assert [e["kind"] for e in audit_chain.entries(trail["audit_dir"])] == ["record", "record"]


def test_a_forged_or_edited_request_does_not_count(trail, trust, keys):
    record = recorded_run(trail, "bg-3")
    path = break_glass.request_path(trail["audit_dir"], record)
    data = json.loads(Path(path).read_text())
    # a signature by ivan over another document, pasted in: not counted, named
    other = dict(data["request"], ticket="INC-99")
    data["approvals"].append(
        {"signer": "ivan", "signature": approval.sign(other, str(keys / "ivan"))}
    )
    approval.write_request_file(path, data)
    (item,) = break_glass.states(trail["audit_dir"], trust, time.time())
    assert item["missing_roles"] == ["cto", "infra_lead"]
    assert any("does not match this request" in r for r in item["refused"])
    # the request itself edited (severity lowered): refused as not what the run recorded
    data["request"]["severity"] = "low"
    approval.write_request_file(path, data)
    with pytest.raises(break_glass.BreakGlassError, match="edited after the run"):
        sign(trail, trust, keys, "bg-3", "carla")


def test_a_tampered_closing_entry_is_caught_by_verify(trail, trust, keys):
    recorded_run(trail, "bg-4")
    sign(trail, trust, keys, "bg-4", "carla")
    sign(trail, trust, keys, "bg-4", "ivan")
    index = Path(trail["audit_dir"]) / "index.jsonl"
    text = index.read_text()
    assert '"closed_by":"ivan"' in text
    index.write_text(text.replace('"closed_by":"ivan"', '"closed_by":"carla"'))
    tampered = audit_chain.check(trail["audit_dir"], trail["key"])["tampered"]
    assert any("signature does not match" in t for t in tampered), tampered
    # dropping the closing entry (the last line) is a cut tail
    index.write_text("".join(text.splitlines(keepends=True)[:-1]))
    tampered = audit_chain.check(trail["audit_dir"], trail["key"])["tampered"]
    assert any("tail truncated" in t for t in tampered), tampered


def test_escalation_once_per_period(trail, trust, keys):
    recorded_run(trail, "bg-old", hours_ago=30)
    recorded_run(trail, "bg-new", hours_ago=2)
    calls = []

    def send(items):
        calls.append([i["run_id"] for i in items])
        return {"run_id": "notify-1", "summary": "4 of 4 notice(s) delivered"}

    now = time.time()
    written, _ = break_glass.escalate(trail, trust, 24.0, now, send)
    assert calls == [["bg-old"]] and [w["run_id"] for w in written] == ["bg-old"]
    assert (
        written[0]["kind"] == "break_glass_escalated" and written[0]["notify_run_id"] == "notify-1"
    )
    assert written[0]["missing_roles"] == ["cto", "infra_lead"]
    # the cron calls again within the period: nothing sent, nothing recorded
    assert break_glass.escalate(trail, trust, 24.0, now + 60, send)[0] == []
    assert len(calls) == 1
    (old,) = [
        s for s in break_glass.states(trail["audit_dir"], trust, now) if s["run_id"] == "bg-old"
    ]
    assert old["escalations"] == 1 and old["last_escalated_at"] == written[0]["at"]
    # a whole period later both are due (bg-new is 26 h old by then), bg-old a second time
    later = now + 24 * 3600 + 60
    written, _ = break_glass.escalate(trail, trust, 24.0, later, send)
    assert calls[-1] == ["bg-old", "bg-new"] and len(written) == 2
    # closed ones are never escalated
    sign(trail, trust, keys, "bg-old", "carla")
    sign(trail, trust, keys, "bg-old", "ivan")
    assert break_glass.escalate(trail, trust, 24.0, later + 48 * 3600, send)[1][0]["run_id"] == (
        "bg-new"
    )
    assert audit_chain.check(trail["audit_dir"], trail["key"])["tampered"] == []


def test_the_limit_comes_from_the_policy_and_may_only_be_shortened(trust, tmp_path):
    assert break_glass.escalate_after(trust) == 24.0
    assert break_glass.escalate_after(trust, 1.5) == 1.5
    with pytest.raises(break_glass.BreakGlassError, match="at most the policy's 24.0 h"):
        break_glass.escalate_after(trust, 48)
    with pytest.raises(break_glass.BreakGlassError, match="more than 0"):
        break_glass.escalate_after(trust, 0)
    assert break_glass.escalate_after(None) == 24.0  # no policy: the default
    good = {
        "decision_matrix": decision.DEFAULT_MATRIX,
        "approvers": {},
        "allowed_signers_file": "/x",
        "break_glass": {"escalate_after_hours": 4},
    }
    policy._validate(good, "p.yml")
    for bad in ({"escalate_after_hours": 0}, {"escalate_after_hours": "4"}, {"every": 4}, [4]):
        with pytest.raises(policy.PolicyError, match="break_glass"):
            policy._validate(dict(good, break_glass=bad), "p.yml")


def test_the_report_shows_open_and_closed(trail, trust, keys):
    record = recorded_run(trail, "bg-5", hours_ago=5)
    _, state = break_glass.of_run(trail["audit_dir"], "bg-5", trust, time.time())
    lines = report._approvals(dict(record, break_glass_state=state))
    assert any("break-glass OPEN for 5.0 h: missing cto, infra_lead" in line for line in lines)
    sign(trail, trust, keys, "bg-5", "carla")
    after, closing = sign(trail, trust, keys, "bg-5", "ivan")
    text = report.to_markdown(
        report.Report(dict(audit_record.read(trail["audit_dir"], "bg-5"), break_glass_state=after))
    )
    assert f"break-glass CLOSED by ivan at {closing['closed_at']}" in text
    assert "carla (cto), ivan (infra_lead)" in text
