"""Notices for failed scheduled jobs and a falling-behind WAL archive (_backup/notice.py): one
per failed backup or restore test, one when archiving starts to fail (none per PostgreSQL
retry), one when a location's copies start to queue; a receiver that is down or a broken
channel never changes the job's result; the configuration keeps its webhook tokens private."""

from __future__ import annotations

import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import notice
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (
    BackupError,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.config import (
    BackupConfig,
)

from knowngood.lab.notify_sinks import WebhookReceiver, closed_port

CONTACTS = {
    role: {"name": name, "email": f"{name}@lab.invalid"}
    for role, name in (("primary_oncall", "o"), ("secondary_oncall", "t"), ("infra_lead", "i"))
}


def state(kind, ok, locations=None):
    return {"cluster": "c1", "jobs": {kind: {"ok": ok}}, "locations": locations or {}}


def test_every_failed_scheduled_backup_or_restore_test_owes_one_notice():
    for kind, words in (("backup_full", "scheduled full backup"), ("verify", "restore test")):
        failed = {"ok": False, "error": "boom", "locations": {"local-a": True, "s3": False}}
        # A failure after a failure is a new scheduled run, not a retry: announced again.
        for before in ({}, state(kind, True), state(kind, False)):
            ((subject, text),) = notice.due(kind, failed, before)
            assert subject.startswith("[knowngood] ") and words in subject and "FAILED" in subject
            assert "error: boom" in text and "locations not stored: s3" in text
    assert notice.due("backup_full", {"ok": True}, state("backup_full", False)) == []


def test_archiving_that_fails_is_announced_once_not_per_retry():
    failed = {"ok": False, "error": "s3 unreachable", "locations": {"s3": False}}
    assert len(notice.due("wal_push", failed, state("wal_push", True))) == 1
    assert len(notice.due("wal_push", failed, {})) == 1
    assert notice.due("wal_push", failed, state("wal_push", False)) == []


def test_a_location_whose_copies_start_to_queue_is_announced_once():
    queued = {"ok": True, "locations": {"a": True, "s3": False}, "pending": {"s3": ["X", "Y"]}}
    ((subject, text),) = notice.due("wal_push", queued, state("wal_push", True, {"s3": True}))
    assert "WAL archive falling behind" in subject and "location s3" in subject
    assert "2 segment(s) queued" in text
    assert notice.due("wal_push", queued, state("wal_push", True, {"s3": False})) == []


def test_a_dead_receiver_or_broken_channels_never_raise():
    lines = []
    settings = {
        "channels": {"webhooks": [f"http://127.0.0.1:{closed_port()}/x"], "attempts": 1},
        "contacts": CONTACTS,
    }
    out = notice.send(settings, [("s", "t")], lines.append)
    assert [o["outcome"] for o in out] == ["failed"] and "failed" in lines[0]
    assert notice.send({"channels": {"webhooks": "nope"}}, [("s", "t")], lines.append) == []
    assert lines[-1] == "notice not sent: NotifyError"
    with WebhookReceiver() as hook:
        good = dict(settings, channels={"webhooks": [hook.url("T/SECRET")]})
        assert notice.send(good, [("subject", "text")], lines.append)[0]["outcome"] == "delivered"
        assert hook.texts() == ["text"]


def test_the_configuration_hides_webhook_tokens_and_refuses_unknown_keys():
    base = {"cluster": "c1", "locations": [{"name": "a", "type": "local", "path": "/srv/a"}]}
    notify = {"channels": {"webhooks": ["https://hooks.example/T/SECRET"]}, "contacts": CONTACTS}
    cfg = BackupConfig.from_dict({**base, "notify": notify})
    assert cfg.notify == notify and BackupConfig.from_dict(cfg.to_dict()).notify == notify
    assert "SECRET" not in str(cfg.public()) and cfg.public()["notify"]["webhooks"] == 1
    with pytest.raises(BackupError, match="notify: unknown keys"):
        BackupConfig.from_dict({**base, "notify": {"webhook": "x"}})
