"""An AWX job's audit record outlives its execution environment: the lab's object-locked bucket.

The job runs as AWX runs it: the environment AWX sets for every job (JOB_ID, INVENTORY_ID,
PROJECT_REVISION, AWX_HOST), the extra vars AWX adds (awx_user_name, awx_job_id), the witness
and the audit signing key as the knowngood credentials inject them, and an audit directory
that is deleted afterwards like the EE. The auditor then verifies the job from the witness alone.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils import audit_chain
from conftest import BIN, REPO, ansible_env

from knowngood.lab import governance, s3
from knowngood.lab.config import LabConfig

pytestmark = pytest.mark.lab

AWX_HOST = "https://awx.example.com"
PREFIX = "s3://knowngood-cold/awx-audit"


def _keygen(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "t", "-f", str(path)], check=True
    )
    return path


def test_an_awx_jobs_record_lands_in_the_locked_witness_and_verifies_from_it(lab_session, tmp_path):
    root = lab_session.root
    cfg = LabConfig.load(root)
    witness_env = {**governance.audit_s3_env(cfg), "KNOWNGOOD_AUDIT_S3_URL": PREFIX}
    key = _keygen(tmp_path / "credential" / "audit_key")  # the audit signing key credential
    job = int(time.time() * 1000) % 10**9  # Object Lock keeps earlier runs' objects for a day
    ee = tmp_path / "ee"
    mark = tmp_path / "mark"
    env = {**ansible_env(root), **witness_env}
    env.update(
        JOB_ID=str(job),
        INVENTORY_ID="3",
        PROJECT_REVISION="0123abc",
        AWX_HOST=AWX_HOST,
        KNOWNGOOD_AUDIT_DIR=str(ee / "audit"),
        KNOWNGOOD_AUDIT_KEY=str(key),
    )
    extra = {"awx_job_id": job, "awx_user_name": "oscar", "awx_job_template_name": "verify"}
    extra |= {"awx_job_mark": str(mark), "ansible_python_interpreter": str(BIN / "python")}
    argv = [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local"]
    run = subprocess.run(
        [*argv, "tests/playbooks/awx_job.yml", "-e", json.dumps(extra)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert mark.read_text() == "ran\n"
    trail = f"awx/awx.example.com/job-{job}"
    assert f"AWX job {job} recorded in the witness {PREFIX}/{trail}/" in run.stdout

    # In the bucket: both records, both signed lines, both checkpoints, each under COMPLIANCE lock.
    client = s3.s3_client(cfg, s3.COLD_REGION)
    listed = client.list_objects_v2(Bucket=s3.COLD_BUCKET, Prefix=f"awx-audit/{trail}/")
    keys = sorted(o["Key"][len(f"awx-audit/{trail}/") :] for o in listed["Contents"])
    record = json.loads((ee / "audit" / "index.jsonl").read_text().splitlines()[-1])["record"]
    opened = record.replace(".json", ".open.json")
    assert keys == [
        "lines/seq-000000000001.json",
        "lines/seq-000000000002.json",
        f"records/{record}",
        f"records/{opened}",
        "seq-000000000001.json",
        "seq-000000000002.json",
    ]
    for name in keys:
        head = client.head_object(Bucket=s3.COLD_BUCKET, Key=f"awx-audit/{trail}/{name}")
        assert head["ObjectLockMode"] == "COMPLIANCE", name
    stored = client.get_object(Bucket=s3.COLD_BUCKET, Key=f"awx-audit/{trail}/records/{record}")
    body = json.loads(stored["Body"].read())
    assert body["awx"]["job_id"] == job and body["awx"]["user_name"] == "oscar"
    assert body["status"] == "successful"
    assert [e["task"] for e in body["events"]] == ["Write the mark file"]

    # The EE is thrown away; the auditor verifies the job from the witness and the public key.
    shutil.rmtree(ee)
    auditor = {k: v for k, v in env.items() if k not in ("JOB_ID", "KNOWNGOOD_AUDIT_KEY")}

    def verify(*extra_args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "knowngood"), "--root", str(root), "audit", "verify", "--awx-job",
             str(job), "--awx-host", AWX_HOST, *extra_args],
            cwd=REPO, env=auditor, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    ok = verify("--public-key", f"{key}.pub", "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["intact"] and doc["entries"] == 2 and not doc["findings"], doc
    assert doc["runs"] == [
        {
            "run_id": body["run_id"],
            "status": "successful",
            "playbook": "awx_job.yml",
            "launched_by": "oscar",
            "started_at": body["started_at"],
            "finished_at": body["finished_at"],
            "events": 1,
            "approvals": "",
        }
    ]
    # Signed by the credential's key, not any key: another public key reads TAMPERED.
    other = _keygen(tmp_path / "other" / "audit_key")
    forged = verify("--public-key", f"{other}.pub")
    assert forged.returncode == 3 and "signature does not match" in forged.stdout, forged.stdout
    # A job that never recorded anything is a finding, not a pass.
    auditor_unknown = subprocess.run(
        [str(BIN / "knowngood"), "--root", str(root), "audit", "verify", "--awx-job",
         str(job + 1), "--awx-host", AWX_HOST, "--public-key", f"{key}.pub"],
        cwd=REPO, env=auditor, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert auditor_unknown.returncode == 4, auditor_unknown.stdout
    assert f"no record of AWX job {job + 1}" in auditor_unknown.stdout
    # Nor can the runner's account remove the record: Object Lock refuses.
    name = f"awx-audit/{trail}/records/{record}"
    versions = client.list_object_versions(Bucket=s3.COLD_BUCKET, Prefix=name)["Versions"]
    with pytest.raises(Exception, match="AccessDenied"):
        client.delete_object(Bucket=s3.COLD_BUCKET, Key=name, VersionId=versions[0]["VersionId"])
    assert audit_chain.awx_trail_id(AWX_HOST, job) == trail


def test_the_lab_drill_guard_passes_the_labs_inventory_and_refuses_staging_with_its_root(
    lab_session, tmp_path
):
    """The other half of tests/unit/test_lab_guard.py: the lab's own inventory passes."""
    root = lab_session.root
    env = {**ansible_env(root), "KNOWNGOOD_DRILL_DIR": str(tmp_path / "drills")}

    def guard(inventory: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "ansible-playbook"), "-i", inventory, "molecule/shared/lab_only.yml",
             "-e", "drill_name=primary_failover", "-v", *args],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip

    ok = guard(lab_session.inventory)
    assert ok.returncode == 0, ok.stdout[-2000:]
    hosts = json.loads((root / "inventory" / "hosts.json").read_text())
    count = sum(len(g["hosts"]) for g in hosts["all"]["children"].values())
    assert f'"hosts": {count}, "root": "{root.resolve()}"' in ok.stdout
    # The real lab's root given with -e does not make staging the lab.
    refused = guard("inventories/staging/hosts.yml", "-e", f"knowngood_lab_root={root}")
    assert refused.returncode == 2, refused.stdout[-2000:]
    assert "web-01.staging.example.com is not a lab host" in refused.stdout
