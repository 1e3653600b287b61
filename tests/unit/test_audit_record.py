"""The audit record's one format: written whole and masked, read back, chained when closed,
listed one line per run."""

from __future__ import annotations

import json

from ansible_collections.knowngood.runbooks.plugins.module_utils import audit_chain, audit_record


def test_a_closed_record_reads_back_and_verifies(tmp_path):
    audit = tmp_path / "audit"
    trail = {"audit_dir": str(audit), "key": str(tmp_path / "keys" / "k"), "witness": None}
    record = {"run_id": "kg-1", "status": "successful", "finished_at": "t1", "playbook": "/p.yml"}
    path, line = audit_chain.close_record(trail, record)
    assert path == str(audit / "kg-1.json")
    assert json.loads((audit / "kg-1.json").read_text()) == record
    assert (line["kind"], line["record"], line["status"], line["seq"]) == (
        "record",
        "kg-1.json",
        "successful",
        1,
    )
    assert audit_record.read(audit, "kg-1") == record
    assert audit_record.read(audit, "kg-2") is None
    assert audit_record.read(audit, "../audit/kg-1") is None
    assert audit_chain.check(str(audit), trail["key"])["tampered"] == []


def test_secrets_are_masked_by_name():
    masked = audit_record.mask({"db_password": "x", "hosts": [{"api_token": "y", "n": 1}]})
    assert masked == {"db_password": "********", "hosts": [{"api_token": "********", "n": 1}]}


def test_the_listing_shows_finished_runs_and_runs_never_closed():
    entries = [
        {"kind": "open", "run_id": "a", "started_at": "t0", "playbook": "/x/deploy.yml"},
        {"kind": "open", "run_id": "b", "started_at": "t1", "playbook": "/x/rollback.yml"},
        {
            "kind": "record",
            "run_id": "b",
            "finished_at": "t2",
            "status": "failed",
            "playbook": "/x/rollback.yml",
        },
        {"kind": "artifacts", "run_id": "b"},
    ]
    assert audit_record.run_lines(entries) == [
        "t0  OPEN        a  deploy.yml",
        "t2  failed      b  rollback.yml",
    ]
    assert audit_record.run_lines(entries, last=1) == ["t2  failed      b  rollback.yml"]
