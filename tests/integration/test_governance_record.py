"""The audit record of a real run, and the secrets canary through -vvv, --diff and failing loops."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, knowngood

pytestmark = pytest.mark.lab

CANARIES = ("CANARY-VAULT-93b1c", "CANARY-SURVEY-51d0e", "canary-vault-pass-7f3a")


def test_secrets_appear_nowhere_and_the_trail_verifies(lab, tmp_path):
    vault_pw = tmp_path / "vault-pw"
    vault_pw.write_text(CANARIES[2] + "\n")
    done = knowngood(
        "run",
        str(REPO / "tests" / "playbooks" / "canary.yml"),
        "-vvv",
        "--diff",
        "--vault-password-file",
        str(vault_pw),
        "--ticket",
        "INC-77",
        "--reason",
        "canary drill",
        "-e",
        json.dumps({"survey_db_password": CANARIES[1], "canary_dir": str(tmp_path)}),
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output  # the last task fails on purpose
    assert (tmp_path / "secret.txt").read_text().strip() == CANARIES[0]  # the secret was used
    record_path = Path(output.rsplit("audit record:", 1)[1].strip().splitlines()[0])
    record = json.loads(record_path.read_text())
    assert record["ticket"] == "INC-77" and record["reason"] == "canary drill"
    assert record["extra_vars"]["survey_db_password"] == "********"
    statuses = [(e["task"], e["status"]) for e in record["events"]]
    assert ("Fail in a loop over secrets", "ignored") in statuses
    assert all(
        {"host", "task", "status", "changed", "duration_s"} <= set(e) for e in record["events"]
    )

    for canary in CANARIES:
        assert canary not in output, canary
    audit = lab.root / "audit"
    artifacts = list((audit / "artifacts" / record["run_id"]).rglob("*"))
    assert any(p.name == "stdout" for p in artifacts) and len(artifacts) > 5
    for path in [p for p in audit.rglob("*") if p.is_file()]:
        data = path.read_bytes()
        for canary in CANARIES:
            assert canary.encode() not in data, (canary, path)

    verified = knowngood("audit", "verify")
    assert verified.returncode == 0, verified.stdout
    assert "intact" in verified.stdout
