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
