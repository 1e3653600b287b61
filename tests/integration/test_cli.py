"""The knowngood CLI: lab status contract, runs through ansible-runner, audit records."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, REPO, ansible_env, knowngood

pytestmark = pytest.mark.lab


def test_lab_status_json_has_the_documented_keys(lab):
    status = json.loads(knowngood("lab", "status", "--json").stdout)
    assert {"lb_url", "hosts", "postgres", "prometheus_url", "s3", "inventory"} <= set(status)
    assert {"name", "address", "root", "app_url"} <= set(status["hosts"][0])
    assert {"name", "primary_dsn", "standby_dsn", "primary_data_dir", "standby_data_dir"} <= set(
        status["postgres"]
    )
    assert {"endpoint", "bucket"} <= set(status["s3"]["region-a"])
    assert "secret" not in json.dumps(status["s3"]).lower()
    assert len(status["s3"]) == 2 and status["postgres"]["name"] == "kglab"


def test_run_records_an_audit_trail_and_masks_secrets(lab):
    lab.seed("v1", "v1.1")
    done = knowngood(
        "run",
        "rollback-code",
        "--quiet",
        "-e",
        "rollback_reason=cli",
        "-e",
        "ticket=INC-9",
        "-e",
        "api_token=s3cr3t-value",
        "--check",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "audit record:" in done.stdout
    record_path = done.stdout.rsplit("audit record:", 1)[1].strip()
    record = json.loads(Path(record_path).read_text())
    assert record["status"] == "successful" and record["check_mode"] is True
    assert record["extra_vars"]["api_token"] == "********"
    for path in lab.root.joinpath("audit").rglob("*"):
        assert not path.is_file() or b"s3cr3t-value" not in path.read_bytes(), path
    listed = knowngood("audit", "list").stdout
    assert record["run_id"] in listed
    assert lab.live_releases() == {"v1.1"}  # --check changed nothing


def test_run_maps_a_refused_rollback_to_a_nonzero_exit(lab):
    lab.seed("v1", "v1.1")
    done = knowngood("run", "rollback-code", "--quiet", "-e", "release_id=v9")
    assert done.returncode == 2
    assert "not in the ledger" in done.stdout


def test_run_works_without_the_venv_on_path(lab):
    """make demo, cron and AWX hooks call the CLI by path, with no venv activated."""
    lab.seed("v1", "v1.1")
    env = ansible_env(lab.root)
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    done = subprocess.run(
        [
            str(BIN / "knowngood"),
            "--root",
            str(lab.root),
            "run",
            "rollback-code",
            "--quiet",
            "--check",
            "-e",
            "rollback_reason=cron",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "successful" in done.stdout


def test_bad_cli_input_is_refused_before_anything_runs(lab):
    done = knowngood("run", "../etc/passwd")
    assert done.returncode == 1 and "invalid runbook name" in done.stderr
    done = knowngood("run", "rollback-code", "-e", "novalue")
    assert done.returncode == 1 and "-e expects key=value" in done.stderr
