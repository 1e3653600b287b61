"""Contacts are validated; notices reach a real webhook and SMTP server, with bounded retries."""

from __future__ import annotations

import json
import time

import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils import notify

from knowngood.lab.notify_sinks import SmtpReceiver, WebhookReceiver, closed_port

CONTACTS = {
    "primary_oncall": {"name": "Pat Primary", "email": "pat@example.com", "phone": "+1-555-0100"},
    "secondary_oncall": {"name": "Sam Secondary", "email": "sam@example.com"},
    "infra_lead": {"name": "Irene Infra", "email": "irene@example.com"},
}
APPROVERS = {
    "carla": {"roles": ["cto"], "email": "carla@example.com"},
    "ivan": {"roles": ["infra_lead"], "email": "ivan@example.com"},
    "tess": {"roles": ["team_lead"], "email": "tess@example.com"},
}
FAST = {"attempts": 3, "timeout_s": 1, "backoff_s": 0.05}
TOKEN = "T0KEN/B0T/xoxb-SECRET-4242"
PASSWORD = "smtp-pass-CANARY-77"


@pytest.mark.parametrize(
    ("broken", "says"),
    [
        ({"secondary_oncall": None}, "secondary_oncall is missing"),
        ({"infra_lead": {"name": "Irene", "email": "irene at example.com"}}, "not an address"),
        ({"primary_oncall": {"name": "", "email": "pat@example.com"}}, "name"),
        ({"pager": {"name": "x", "email": "x@example.com"}}, "unknown contact roles"),
    ],
)
def test_invalid_contacts_are_refused_with_the_reason(broken, says):
    contacts = {k: v for k, v in dict(CONTACTS, **broken).items() if v is not None}
    with pytest.raises(notify.NotifyError, match=says):
        notify.validate_contacts(contacts)


def test_invalid_channels_are_refused_without_echoing_the_webhook_token():
    with pytest.raises(notify.NotifyError) as err:
        notify.validate_channels(
            {"webhooks": [f"ftp://hooks.example.com/{TOKEN}"], "smtp": {"host": "mx"}}
        )
    text = str(err.value)
    assert "webhook 1 (ftp://hooks.example.com/***) is not an http(s) URL" in text
    assert "smtp.sender" in text and TOKEN not in text
    with pytest.raises(notify.NotifyError, match="attempts"):
        notify.validate_channels({"attempts": 50})


def test_routing_follows_the_event():
    contacts = notify.validate_contacts(CONTACTS)
    assert notify.recipients("start", contacts) == ["pat@example.com", "sam@example.com"]
    assert notify.recipients("failure", contacts)[-1] == "irene@example.com"
    assert notify.recipients("break_glass", contacts) == [
        "pat@example.com",
        "sam@example.com",
        "irene@example.com",
    ]
    needed = notify.recipients("approval_needed", contacts, APPROVERS, ["cto", "infra_lead"])
    assert needed == ["irene@example.com", "carla@example.com", "ivan@example.com"]


@pytest.mark.parametrize("event", ["start", "success", "failure", "break_glass"])
def test_every_run_event_reaches_the_webhook_and_the_mailboxes(event):
    subject, text = notify.compose(
        event, {"playbook": "rollback-code", "ticket": "INC-9", "run_id": "kg-1", "user": "oscar"}
    )
    with WebhookReceiver() as hook, SmtpReceiver() as smtp:
        sent = notify.deliver(
            event,
            text,
            CONTACTS,
            dict(FAST, webhooks=[hook.url(TOKEN)], smtp=smtp.config()),
            subject=subject,
        )
        assert hook.texts() == [text] and hook.hits[0]["path"].endswith(TOKEN)
        assert len(smtp.mails) == 1
        mail = smtp.mails[0]
    routed = notify.recipients(event, notify.validate_contacts(CONTACTS))
    assert sorted(mail.recipients) == sorted(routed)
    assert mail.subject == subject and "rollback-code (INC-9)" in subject
    assert "run: kg-1" in mail.body
    assert [n["outcome"] for n in sent] == ["delivered"] * (1 + len(routed))
    assert {n["event"] for n in sent} == {event}
    webhook = sent[0]
    assert webhook["channel"] == "webhook" and webhook["attempts"] == 1
    assert webhook["target"] == f"http://127.0.0.1:{hook.server.server_address[1]}/***"
    if event == "break_glass":
        assert len(mail.recipients) == len(CONTACTS)  # every contact


def test_a_500_is_retried_then_delivered():
    with WebhookReceiver(statuses=[500, 503]) as hook:
        sent = notify.deliver("start", "hello", CONTACTS, dict(FAST, webhooks=[hook.url()]))
    assert [(n["outcome"], n["attempts"]) for n in sent] == [("delivered", 3)]
    assert len(hook.hits) == 3


def test_receivers_down_or_failing_are_recorded_without_secrets_and_never_raise():
    with WebhookReceiver(status=500) as hook:
        channels = dict(
            FAST,
            webhooks=[hook.url(TOKEN), f"http://127.0.0.1:{closed_port()}/hooks/{TOKEN}"],
            smtp={
                "host": "127.0.0.1",
                "port": closed_port(),
                "sender": "kg@example.com",
                "username": "kg",
            },
        )
        started = time.monotonic()
        sent = notify.deliver("failure", "rollback failed", CONTACTS, channels, PASSWORD)
        took = time.monotonic() - started
    assert len(hook.hits) == 3  # every attempt reached the failing receiver
    assert [n["outcome"] for n in sent] == ["failed"] * 5  # 2 webhooks, 3 addresses
    assert all(n["attempts"] == 3 and n["error"] for n in sent)
    assert {n["error"] for n in sent if n["channel"] == "webhook"} >= {"HTTP 500"}
    assert any("Connection" in n["error"] or "refused" in n["error"] for n in sent)
    assert took < 10  # bounded: three quick attempts with short backoff
    dumped = json.dumps(sent)
    assert TOKEN not in dumped and PASSWORD not in dumped and "/hooks" not in dumped


def test_a_4xx_is_final_and_a_refused_address_fails_alone():
    with WebhookReceiver(status=404) as hook, SmtpReceiver(refuse=("sam@example.com",)) as smtp:
        sent = notify.deliver(
            "start", "hi", CONTACTS, dict(FAST, webhooks=[hook.url()], smtp=smtp.config())
        )
        assert smtp.mails[0].recipients == ["pat@example.com"]
    by_target = {n["target"]: n for n in sent}
    hook_outcome = next(n for n in sent if n["channel"] == "webhook")
    assert (hook_outcome["outcome"], hook_outcome["attempts"]) == ("failed", 1)
    assert by_target["pat@example.com"]["outcome"] == "delivered"
    assert by_target["sam@example.com"]["outcome"] == "failed"
    assert "550" in by_target["sam@example.com"]["error"]


def test_mask_url_keeps_only_scheme_and_host():
    assert notify.mask_url("https://hooks.slack.com/services/T/B/x?token=1") == (
        "https://hooks.slack.com/***"
    )
    assert notify.mask_url("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"


def test_a_receiver_that_never_answers_is_given_up_on_within_the_bound():
    import socket

    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/hook/{TOKEN}"
        started = time.monotonic()
        sent = notify.deliver(
            "start", "hi", CONTACTS, {"webhooks": [url], "attempts": 2, "timeout_s": 0.5}
        )
        took = time.monotonic() - started
    assert [(n["outcome"], n["attempts"]) for n in sent] == [("failed", 2)]
    assert "timed out" in sent[0]["error"] and TOKEN not in sent[0]["error"]
    assert took < 4  # 2 x 0.5 s timeouts plus one jittered backoff of at most 0.75 s
