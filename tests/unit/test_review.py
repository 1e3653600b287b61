"""Post-incident reviews with a real signed chain: open, findings, action items, done with links
to what changed, closed; every refusal writes nothing; an edited or dropped review entry is
caught by verify; reminders once per period; the incident report shows the review."""

from __future__ import annotations

import datetime
import json
import subprocess
import time
from pathlib import Path

import pytest
import test_break_glass
from ansible_collections.knowngood.runbooks.plugins.module_utils import (
    audit_chain,
    audit_record,
    notify,
    review,
)

from knowngood import cli, collection, report

TODAY = datetime.date(2026, 12, 7)
ROOT = str(collection.CHECKOUT)
Refused = review.ReviewError
trail = test_break_glass.trail
recorded_run = test_break_glass.recorded_run


def head() -> str:
    return subprocess.run(
        ["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def kinds(trail) -> list[str]:
    return [e["kind"] for e in audit_chain.entries(trail["audit_dir"])]


def opened(trail, run_id="run-1"):
    recorded_run(trail, run_id, mode="approved")
    review.open_review(trail, run_id, "carla", "v1.1 broke checkout", "root", TODAY)


def test_a_review_is_opened_worked_and_closed_in_the_signed_chain(trail):
    opened(trail)
    review.add_finding(trail, "run-1", "the canary had no latency gate", "root", TODAY)
    review.add_finding(trail, "run-1", "alerts  went to\n an old channel", "root", TODAY)
    a1 = review.add_action(
        trail, "run-1", "add a p95 gate to deploy-code", "ivan", "2026-12-20", "root", TODAY
    )
    a2 = review.add_action(
        trail,
        "run-1",
        "fix the alert route",
        "pat@example.com",
        "2026-12-07",
        "root",
        TODAY,
        "ALERT",
    )
    assert (a1["action_id"], a2["action_id"], a1["due"]) == ("A1", "ALERT", "2026-12-20")
    path = "roles/code_verify/defaults/main.yml"
    done = review.mark_done(trail, "run-1", "A1", [path, head()[:10]], ROOT, "ivan", TODAY)
    assert done["links"][0] == {
        "kind": "path",
        "path": path,
        "sha256": audit_chain.sha256_file(f"{ROOT}/{path}"),
    }
    assert done["links"][1]["kind"] == "commit" and done["links"][1]["commit"] == head()

    state = review.state(audit_chain.entries(trail["audit_dir"]), "run-1", TODAY)
    assert (state["opened_by"], state["summary"], state["state"]) == (
        "carla",
        "v1.1 broke checkout",
        "open",
    )
    assert [f["text"] for f in state["findings"]] == [
        "the canary had no latency gate",
        "alerts went to an old channel",
    ]
    a1_state, alert = state["actions"]
    assert (a1_state["state"], a1_state["done_by"], len(a1_state["links"])) == ("done", "ivan", 2)
    assert (alert["state"], alert["days_left"], alert["owner"]) == ("open", 0, "pat@example.com")
    # a day later the open one is overdue
    later = review.state(audit_chain.entries(trail["audit_dir"]), "run-1", TODAY.replace(day=9))
    assert later["actions"][1]["state"] == "overdue" and later["actions"][1]["days_left"] == -2

    review.mark_done(trail, "run-1", "ALERT", ["docs/governance.md"], ROOT, "pat", TODAY)
    closing = review.close(trail, "run-1", "carla", TODAY)
    assert closing["kind"] == "review_closed" and closing["actions_done"] == ["A1", "ALERT"]
    state = review.state(audit_chain.entries(trail["audit_dir"]), "run-1", TODAY)
    assert (state["state"], state["closed_by"], state["closed_at"]) == (
        "closed",
        "carla",
        closing["at"],
    )
    # every step is a signed, chained entry and the trail verifies
    assert kinds(trail)[1:] == [
        "review_opened",
        "review_finding",
        "review_finding",
        "review_action",
        "review_action",
        "review_action_done",
        "review_action_done",
        "review_closed",
    ]
    assert all("sig" in e for e in audit_chain.entries(trail["audit_dir"]))
    result = audit_chain.check(trail["audit_dir"], trail["key"])
    assert result["tampered"] == [] and result["findings"] == []


def test_every_refusal_is_named_and_writes_nothing(trail):
    recorded_run(trail, "run-2", mode="approved")
    before = kinds(trail)

    def refused(pattern, fn, *args):
        with pytest.raises((Refused, audit_chain.AuditError), match=pattern):
            fn(trail, *args)
        assert kinds(trail) == before

    refused("no recorded run nope", review.open_review, "nope", "carla", "", "root", TODAY)
    refused("run id '../x' refused", review.open_review, "../x", "carla", "", "root", TODAY)
    refused("--by is empty", review.open_review, "run-2", " ", "", "root", TODAY)
    refused("has no review: open it first", review.add_finding, "run-2", "x", "root", TODAY)
    review.open_review(trail, "run-2", "carla", "", "root", TODAY)
    before = kinds(trail)
    refused(
        "already has a review, opened by carla", review.open_review, "run-2", "ivan", "", "r", TODAY
    )
    refused("the finding is empty", review.add_finding, "run-2", " \n", "root", TODAY)
    args = ("run-2", "do it", "ivan")
    for bad in ("2026-02-30", "tomorrow", "2026-1-05", "20261220", ""):
        refused(
            f"due date '{bad}' refused: it must be a day", review.add_action, *args, bad, "r", TODAY
        )
    refused(
        "due date 2026-12-06 refused: it is in the past",
        review.add_action,
        *args,
        "2026-12-06",
        "r",
        TODAY,
    )
    refused("--owner is empty", review.add_action, "run-2", "do it", "  ", "2026-12-20", "r", TODAY)
    refused("the action is empty", review.add_action, "run-2", "", "ivan", "2026-12-20", "r", TODAY)
    refused("action id 'a b' refused", review.add_action, *args, "2026-12-20", "r", TODAY, "a b")
    refused(
        "no recorded run nope", review.add_action, "nope", "x", "ivan", "2026-12-20", "r", TODAY
    )
    review.add_action(trail, *args, "2026-12-20", "root", TODAY, "DB")
    before = kinds(trail)
    refused("already has an action DB", review.add_action, *args, "2026-12-21", "r", TODAY, "DB")
    refused(
        "has no action 'A9' .actions: DB",
        review.mark_done,
        "run-2",
        "A9",
        ["docs"],
        ROOT,
        "r",
        TODAY,
    )
    refused("say what changed", review.mark_done, "run-2", "DB", [], ROOT, "r", TODAY)
    for link in (
        "https://example.com/pr/1",
        "../../etc/passwd",
        "/etc/passwd",
        "roles/no_such_role",
        "deadbeefdeadbeef",
        ".git/config",
        ".",
    ):
        refused(f"link '{link}' refused", review.mark_done, "run-2", "DB", [link], ROOT, "r", TODAY)
    refused("open action.s. DB: mark them done", review.close, "run-2", "carla", TODAY)
    refused("--defer needs a reason of 10", review.close, "run-2", "carla", TODAY, "later")
    review.mark_done(trail, "run-2", "DB", ["roles/db_restore"], ROOT, "ivan", TODAY)
    before = kinds(trail)
    refused(
        "action DB of run-2 was already done by ivan",
        review.mark_done,
        "run-2",
        "DB",
        ["docs"],
        ROOT,
        "r",
        TODAY,
    )
    refused(
        "--defer refused: .* no open action",
        review.close,
        "run-2",
        "carla",
        TODAY,
        "next quarter please",
    )
    review.close(trail, "run-2", "carla", TODAY)
    before = kinds(trail)
    refused("was closed by carla", review.add_finding, "run-2", "late", "root", TODAY)
    refused("was closed by carla", review.add_action, *args, "2026-12-20", "r", TODAY)
    refused("was closed by carla", review.close, "run-2", "carla", TODAY)


def test_open_actions_are_deferred_only_with_a_reason(trail):
    opened(trail, "run-3")
    review.add_action(trail, "run-3", "rewrite the runbook", "ivan", "2027-03-01", "root", TODAY)
    closing = review.close(trail, "run-3", "carla", TODAY, "  next quarter's\nbacklog  ")
    assert closing["deferred"] == ["A1"] and closing["defer_reason"] == "next quarter's backlog"
    state = review.state(audit_chain.entries(trail["audit_dir"]), "run-3", TODAY)
    assert state["actions"][0]["state"] == "deferred" and state["state"] == "closed"
    assert review.action_items(audit_chain.entries(trail["audit_dir"]), TODAY, only_open=True) == []


def test_an_edited_or_dropped_review_entry_is_caught_by_verify(trail):
    opened(trail, "run-4")
    review.add_action(trail, "run-4", "add a gate", "ivan", "2026-12-20", "root", TODAY)
    review.mark_done(trail, "run-4", "A1", ["docs/governance.md"], ROOT, "ivan", TODAY)
    index = Path(trail["audit_dir"]) / "index.jsonl"
    text = index.read_text()
    assert audit_chain.check(trail["audit_dir"], trail["key"])["tampered"] == []
    # the owner changed after the fact: the line's signature no longer matches
    index.write_text(text.replace('"owner":"ivan"', '"owner":"tess"'))
    tampered = audit_chain.check(trail["audit_dir"], trail["key"])["tampered"]
    assert any("signature does not match" in t for t in tampered), tampered
    # the due date pushed back
    index.write_text(text.replace('"due":"2026-12-20"', '"due":"2027-12-20"'))
    tampered = audit_chain.check(trail["audit_dir"], trail["key"])["tampered"]
    assert any("signature does not match" in t for t in tampered), tampered
    # the action dropped from the middle: the chain breaks
    lines = text.splitlines(keepends=True)
    index.write_text("".join(lines[:2] + lines[3:]))
    tampered = audit_chain.check(trail["audit_dir"], trail["key"])["tampered"]
    assert any("entries deleted or reordered" in t for t in tampered), tampered
    # the done entry dropped from the end: a cut tail
    index.write_text("".join(lines[:-1]))
    tampered = audit_chain.check(trail["audit_dir"], trail["key"])["tampered"]
    assert any("tail truncated" in t for t in tampered), tampered


def test_list_puts_overdue_first_and_nag_reminds_once_per_period(trail):
    opened(trail, "run-5")
    opened(trail, "run-6")
    day = datetime.timedelta(days=1)
    add = review.add_action
    add(trail, "run-5", "far off", "ivan", "2027-01-30", "root", TODAY)
    add(trail, "run-5", "soon", "carla", "2026-12-09", "root", TODAY)
    add(trail, "run-6", "due first", "tess", "2026-12-08", "root", TODAY)
    add(trail, "run-6", "done already", "ivan", "2026-12-08", "root", TODAY)
    review.mark_done(trail, "run-6", "A2", ["docs/governance.md"], ROOT, "ivan", TODAY)
    later = TODAY + 3 * day  # 2026-12-10: run-6 A1 and run-5 A2 overdue
    items = review.action_items(audit_chain.entries(trail["audit_dir"]), later)
    assert [(i["run_id"], i["id"], i["state"]) for i in items] == [
        ("run-6", "A1", "overdue"),
        ("run-5", "A2", "overdue"),
        ("run-5", "A1", "open"),
        ("run-6", "A2", "done"),
    ]
    assert len(review.action_items(audit_chain.entries(trail["audit_dir"]), later, True)) == 3

    calls = []

    def send(due):
        calls.append([(i["run_id"], i["id"]) for i in due])
        return {"run_id": "notify-7", "summary": "3 of 3 notice(s) delivered"}

    now = time.time()
    written, _ = review.nag(trail, TODAY, 1, 24.0, now, send, "cron")
    assert calls == [[("run-6", "A1")]]  # due tomorrow; the others later, A2 of run-6 done
    assert written[0]["kind"] == "review_nagged" and written[0]["notify_run_id"] == "notify-7"
    assert written[0]["owner"] == "tess" and written[0]["state"] == "open"
    # the cron again within the period: nothing sent, nothing recorded
    assert review.nag(trail, TODAY, 1, 24.0, now + 3600, send, "cron") == ([], [])
    assert len(calls) == 1
    # a period later, with both overdue: both reminded, run-6's a second time
    written, _ = review.nag(trail, later, 1, 24.0, now + 24 * 3600, send, "cron")
    assert calls[-1] == [("run-6", "A1"), ("run-5", "A2")]
    assert [w["state"] for w in written] == ["overdue", "overdue"]
    state = review.state(audit_chain.entries(trail["audit_dir"]), "run-6", later)
    assert state["actions"][0]["reminders"] == 2
    # done ones are never reminded again
    review.mark_done(trail, "run-6", "A1", ["docs/governance.md"], ROOT, "tess", later)
    review.nag(trail, later, 1, 24.0, now + 48 * 3600, send, "cron")
    assert calls[-1] == [("run-5", "A2")]
    with pytest.raises(Refused, match="--within must be 0 or more"):
        review.nag(trail, later, -1, 24.0, now, send, "cron")
    assert audit_chain.check(trail["audit_dir"], trail["key"])["tampered"] == []


def test_the_notice_goes_to_every_contact_and_the_owner():
    contacts = {
        "primary_oncall": {"name": "Pat Primary", "email": "pat@example.com"},
        "secondary_oncall": {"name": "Sam Secondary", "email": "sam@example.com"},
        "infra_lead": {"name": "Irene Infra", "email": "irene@example.com"},
    }
    approvers = {"ivan": {"roles": ["infra_lead"], "email": "ivan@example.com"}}
    everyone = ["pat@example.com", "sam@example.com", "irene@example.com"]
    for owner, extra in (
        ("dev@example.com", ["dev@example.com"]),
        ("ivan", ["ivan@example.com"]),
        ("sam secondary", []),  # a contact's name: already on the list
        ("infra_lead", []),
        ("nobody known", []),
    ):
        assert notify.recipients("review_action_due", contacts, approvers, (), [owner]) == (
            everyone + extra
        )
    subject, text = notify.compose(
        "review_action_due",
        {"run_id": "run-5", "action": "A2: soon", "owner": "carla", "due": "2026-12-09"},
    )
    assert subject.startswith("[knowngood] post-incident action item due")
    assert "action item: A2: soon\nowner: carla\ndue: 2026-12-09" in text


def test_the_report_shows_findings_actions_and_who_closed_it(trail):
    opened(trail, "run-8")
    review.add_finding(trail, "run-8", "no latency gate", "root", TODAY)
    review.add_action(trail, "run-8", "add a p95 gate", "ivan", "2026-12-20", "root", TODAY)
    review.add_action(trail, "run-8", "page <the> team", "tess", "2026-12-08", "root", TODAY)
    review.mark_done(trail, "run-8", "A1", ["roles/code_verify"], ROOT, "ivan", TODAY)
    record = audit_record.read(trail["audit_dir"], "run-8")
    state = review.state(
        audit_chain.entries(trail["audit_dir"]), "run-8", TODAY + datetime.timedelta(days=3)
    )
    rep = report.Report(dict(record, review_state=state))
    text = report.to_markdown(rep)
    assert "## Post-incident Review" in text
    assert "- review opened by carla at " in text and ": v1.1 broke checkout" in text
    assert "- finding F1: no latency gate" in text
    assert "action A1: add a p95 gate (owner ivan, due 2026-12-20): DONE by ivan at " in text
    assert ": roles/code_verify" in text
    assert "action A2: page <the> team (owner tess, due 2026-12-08): OVERDUE by 2 day(s)" in text
    assert "- review OPEN: close with knowngood review close run-8" in text
    page = report.to_html(rep)
    assert "<th>owner</th><th>due</th><th>state</th>" in page
    assert (
        "<td>page &lt;the&gt; team</td><td>tess</td><td>2026-12-08</td><td>OVERDUE by 2 day(s)</td>"
        in page
    )
    closing = review.close(trail, "run-8", "carla", TODAY, "owner away until January")
    state = review.state(audit_chain.entries(trail["audit_dir"]), "run-8", TODAY)
    text = report.to_markdown(report.Report(dict(record, review_state=state)))
    assert (
        f"review CLOSED by carla at {closing['at']}; deferred A2: owner away until January" in text
    )
    assert "DEFERRED when the review was closed" in text
    bare = report.to_markdown(report.Report(dict(record, review_state=None)))
    assert "no post-incident review recorded: knowngood review open run-8 --by NAME" in bare


def test_the_cli_records_lists_and_refuses(trail, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("KNOWNGOOD_AUDIT_DIR", trail["audit_dir"])
    monkeypatch.setenv("KNOWNGOOD_AUDIT_KEY", trail["key"])
    monkeypatch.delenv("KNOWNGOOD_AUDIT_S3_URL", raising=False)
    recorded_run(trail, "run-9", mode="approved")
    base = ["--root", str(tmp_path / "no-lab"), "review"]
    due = (datetime.datetime.now(datetime.UTC).date() + datetime.timedelta(days=1)).isoformat()
    assert cli.main([*base, "open", "run-9", "--by", "carla"]) == 0
    assert cli.main([*base, "action", "run-9", "add a gate", "--owner", "ivan", "--due", due]) == 0
    capsys.readouterr()
    assert cli.main([*base, "list", "--open", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(a["run_id"], a["id"], a["owner"], a["due"]) for a in doc["actions"]] == [
        ("run-9", "A1", "ivan", due)
    ]
    assert cli.main([*base, "close", "run-9"]) == 1
    assert "open action(s) A1" in capsys.readouterr().err
    assert cli.main([*base, "action", "run-9", "x", "--owner", "ivan", "--due", "12/20"]) == 1
    assert "due date '12/20' refused" in capsys.readouterr().err
    assert cli.main([*base, "done", "run-9", "A1", "--link", "playbooks/rollback-code.yml"]) == 0
    assert cli.main([*base, "close", "run-9"]) == 0
    assert "review of run-9 CLOSED by" in capsys.readouterr().out
    assert cli.main([*base, "list"]) == 0
    assert "run-9 A1  DONE" in capsys.readouterr().out
    assert cli.main(["--root", str(tmp_path / "no-lab"), "audit", "verify"]) == 0
