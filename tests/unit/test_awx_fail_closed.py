"""Inside AWX the audit record must outlive the execution environment, or the job does not run.

The job runs as AWX runs it (JOB_ID, AWX_HOST in the environment). Without a witness, a lock
period or the audit signing key, and with a witness that cannot be reached, the audit callback
stops the job before its first task (exit 5), saying why. The witness write itself, into the
lab's object-locked bucket, is tests/integration/test_awx_witness.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from knowngood.lab.notify_sinks import closed_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


AWX_ENV = {"JOB_ID": "4242", "AWX_HOST": "https://awx.example.com"}


def _job(tmp_path: Path, awx: bool = True, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    mark = tmp_path / "mark"
    full = {k: v for k, v in os.environ.items() if not k.startswith(("KNOWNGOOD_", "AWS_"))}
    full.pop("JOB_ID", None)
    full.update(
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        KNOWNGOOD_LAB_DIR=str(tmp_path / "no-lab"),
        KNOWNGOOD_AUDIT_DIR=str(tmp_path / "ee" / "audit"),
        **(AWX_ENV if awx else {}),
        **env,
    )
    extra = {"awx_job_mark": str(mark), "ansible_python_interpreter": sys.executable}
    run = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local",
         "tests/playbooks/awx_job.yml", "-e", json.dumps(extra)],
        cwd=REPO, env=full, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return run, mark


@pytest.fixture
def key(tmp_path):
    path = tmp_path / "cred" / "audit_key"
    path.parent.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def test_an_awx_job_without_the_audit_credential_never_starts(tmp_path, key):
    run, mark = _job(tmp_path)
    assert run.returncode == 5, run.stdout + run.stderr
    assert "AWX job 4242: its audit trail would die with the execution environment" in run.stderr
    assert "a witness (KNOWNGOOD_AUDIT_S3_URL)" in run.stderr
    assert "the audit signing key (KNOWNGOOD_AUDIT_KEY) missing" in run.stderr
    assert not mark.exists()
    # A witness without a lock period is no durable record either.
    run, mark = _job(
        tmp_path, KNOWNGOOD_AUDIT_S3_URL="s3://audit/awx", KNOWNGOOD_AUDIT_KEY=str(key)
    )
    assert run.returncode == 5 and "an Object Lock period" in run.stderr, run.stderr
    assert not mark.exists()
    # Outside AWX (no JOB_ID) the same run goes ahead, recorded locally as before.
    local, mark = _job(tmp_path, awx=False, KNOWNGOOD_AUDIT_KEY=str(key))
    assert local.returncode == 0 and mark.read_text() == "ran\n", local.stdout[-2000:]
    assert (tmp_path / "ee" / "audit" / "index.jsonl").is_file()


def test_an_unreachable_witness_stops_the_awx_job_before_its_first_task(tmp_path, key):
    run, mark = _job(
        tmp_path,
        KNOWNGOOD_AUDIT_S3_URL="s3://audit/awx",
        KNOWNGOOD_AUDIT_S3_ENDPOINT=f"http://127.0.0.1:{closed_port()}",
        KNOWNGOOD_AUDIT_S3_LOCK_DAYS="1",
        KNOWNGOOD_AUDIT_KEY=str(key),
        AWS_ACCESS_KEY_ID="id",
        AWS_SECRET_ACCESS_KEY="secret-canary-31",
        AWS_DEFAULT_REGION="us-east-1",
    )
    assert run.returncode == 5, run.stdout + run.stderr
    assert "AWX job 4242 not started: could not open its audit record" in run.stderr
    assert "/awx/awx.example.com/job-4242/records/" in run.stderr
    assert "TASK [Write the mark file]" not in run.stdout
    assert not mark.exists()
    assert "secret-canary-31" not in run.stdout + run.stderr
