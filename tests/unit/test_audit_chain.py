"""The audit index detects modification, deletion, reordering and a cut-off tail."""

from __future__ import annotations

import hashlib
import json

import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils import audit_chain


@pytest.fixture
def trail(tmp_path):
    audit, key = tmp_path / "audit", str(tmp_path / "keys" / "audit_key")
    audit.mkdir()
    for n in range(4):
        body = json.dumps({"run_id": f"r{n}", "status": "successful"})
        (audit / f"r{n}.json").write_text(body)
        audit_chain.append(
            str(audit),
            {
                "kind": "record",
                "run_id": f"r{n}",
                "record": f"r{n}.json",
                "sha256": hashlib.sha256(body.encode()).hexdigest(),
                "status": "successful",
            },
            key,
        )
    return audit, key


def lines(audit):
    return (audit / "index.jsonl").read_text().splitlines()


def write(audit, rows):
    (audit / "index.jsonl").write_text("\n".join(rows) + "\n")


def problems(audit, key):
    return " | ".join(audit_chain.verify(str(audit), key)[0])


def test_an_untouched_trail_verifies(trail):
    audit, key = trail
    assert audit_chain.verify(str(audit), key) == ([], 4)


def test_a_modified_record_is_detected(trail):
    audit, key = trail
    (audit / "r1.json").write_text(json.dumps({"run_id": "r1", "status": "failed"}))
    assert "record r1.json was modified" in problems(audit, key)


def test_a_modified_index_line_is_detected_even_with_the_chain_recomputed(trail):
    audit, key = trail
    rows = lines(audit)
    rows[3] = rows[3].replace('"status":"successful"', '"status":"failed"')
    write(audit, rows)
    assert "signature does not match" in problems(audit, key)


def test_a_deleted_entry_is_detected(trail):
    audit, key = trail
    rows = lines(audit)
    write(audit, rows[:1] + rows[2:])
    found = problems(audit, key)
    assert "deleted or reordered" in found and "chain broken" in found


def test_a_deleted_record_file_is_detected(trail):
    audit, key = trail
    (audit / "r2.json").unlink()
    assert "record r2.json is missing" in problems(audit, key)


def test_reordered_entries_are_detected(trail):
    audit, key = trail
    rows = lines(audit)
    write(audit, [rows[0], rows[2], rows[1], rows[3]])
    assert "deleted or reordered" in problems(audit, key)


def test_a_cut_off_tail_is_detected_by_the_checkpoint(trail):
    audit, key = trail
    write(audit, lines(audit)[:3])  # the remaining chain is perfectly consistent
    assert "tail truncated" in problems(audit, key)
    (audit / "index.jsonl").write_text("")
    assert "tail truncated" in problems(audit, key)


def test_without_a_checkpoint_verification_says_it_cannot_tell(trail, tmp_path):
    audit, _key = trail
    other_key = str(tmp_path / "other" / "k")
    audit_chain.ensure_key(other_key)
    assert "no checkpoint" in problems(audit, other_key)


def test_torn_tail_is_pinned_reported_and_repaired(trail):
    audit, key = trail
    with (audit / "index.jsonl").open("ab") as handle:
        handle.write(b'{"kind":"rec')
    assert "torn last line (12 bytes" in problems(audit, key)
    line = audit_chain.append(str(audit), {"kind": "test"}, key, None)
    assert line["seq"] == 5 and line["after_torn"]["bytes"] == 12
    found = audit_chain.check(str(audit), key)
    assert not found["tampered"] and "torn by an interrupted write" in found["findings"][0]
    written = audit_chain.repair(str(audit), key, "ops", None)
    assert [w["kind"] for w in written] == ["repair"]
    assert audit_chain.verify(str(audit), key) == ([], 6)
    # A garbage line no later entry pins is tampering: repair refuses to hide it.
    rows = lines(audit)
    write(audit, rows[:2] + ["not json"] + rows[2:])
    assert "not JSON (modified)" in problems(audit, key)
    with pytest.raises(audit_chain.AuditError, match="tampering"):
        audit_chain.repair(str(audit), key, "ops", None)


def test_open_runs_are_findings_until_closed_and_names_are_checked(tmp_path):
    audit, key = tmp_path / "audit", str(tmp_path / "k" / "audit_key")
    audit.mkdir()
    assert audit_chain.check(str(audit), key)["empty"]
    trail = {"audit_dir": str(audit), "key": key, "witness": None}
    audit_chain.open_record(trail, {"run_id": "kg-1", "user": "ops", "started_at": "T"})
    assert "run kg-1 opened at T by ops never closed" in problems(audit, key)
    for bad in ("../../x", "a/b", "", ".hidden", "x" * 200):
        with pytest.raises(audit_chain.AuditError):
            audit_chain.check_name(bad, "run id")
    assert audit_chain.check_name("kg-20261202T1-ab.c_d", "run id")
    (tmp_path / "k" / "audit_key.pub").unlink()
    assert "public key missing" in problems(audit, key)


def test_one_resolution_of_the_trail(tmp_path):
    lab = tmp_path / "lab"
    (lab / "governance").mkdir(parents=True)
    (lab / "lab.json").write_text("{}")
    got = audit_chain.resolve_trail(environ={"KNOWNGOOD_LAB_DIR": str(lab)})
    assert got["audit_dir"] == str(lab / "audit") and got["witness"] is None
    assert got["key"] == str(lab / "governance" / "audit_key")
    env = {"KNOWNGOOD_LAB_DIR": str(tmp_path / "none"), "KNOWNGOOD_AUDIT_DIR": "/x/a"}
    assert audit_chain.resolve_trail(environ=env)["audit_dir"] == "/x/a"
    (lab / "governance" / "audit_witness.json").write_text(
        json.dumps({"KNOWNGOOD_AUDIT_S3_URL": "s3://b/p", "aws_access_key_id": "A"})
    )
    witness = audit_chain.resolve_trail(environ={"KNOWNGOOD_LAB_DIR": str(lab)})["witness"]
    assert witness["bucket"] == "b" and witness["prefix"] == "p" and witness["access_key"] == "A"
