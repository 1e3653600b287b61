"""Notices through `knowngood run` on the lab, and the audit checkpoint's copy in real S3.

A local webhook receiver and SMTP server (knowngood.lab.notify_sinks) hear start, success,
failure and break-glass; a receiver that is down or answers 500 changes nothing about the
rollback and is recorded with its retries; secrets reach no record. The checkpoint's second
copy goes to the lab's object-locked cold bucket on SeaweedFS.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils import audit_chain
from conftest import BIN, REPO, ansible_env, knowngood

from knowngood.lab import governance, s3
from knowngood.lab.config import LabConfig
from knowngood.lab.notify_sinks import SmtpReceiver, WebhookReceiver, closed_port

pytestmark = pytest.mark.lab

TOKEN = "T0KEN/B0T/xoxb-notify-CANARY-31"
PASSWORD = "smtp-CANARY-pass-6131"


def _record(done: subprocess.CompletedProcess) -> dict:
    output = done.stdout + done.stderr
    path = Path(output.rsplit("audit record:", 1)[1].strip().splitlines()[0])
    return json.loads(path.read_text())


def _flag_run(*extra: str) -> subprocess.CompletedProcess:
    return knowngood(
        "run", "rollback-flag", "--quiet", "--ticket", "INC-31", "--reason", "drill", *extra
    )


def test_notices_go_out_and_a_dead_receiver_never_stops_the_rollback(lab):
    lab.seed("v1")
    flags = Path(lab.status["hosts"][0]["root"]) / "shared" / "flags.json"
    with WebhookReceiver(status=500) as broken:
        dead_smtp = {
            "host": "127.0.0.1",
            "port": closed_port(),
            "sender": "kg@lab.invalid",
            "username": "kg",
        }
        down = {
            "webhooks": [broken.url(TOKEN)],
            "smtp": dead_smtp,
            "attempts": 2,
            "timeout_s": 1,
            "backoff_s": 0.05,
        }
        done = _flag_run(
            "-e",
            json.dumps(
                {
                    "flag": "new_checkout",
                    "knowngood_notify": down,
                    "knowngood_notify_smtp_password": PASSWORD,
                }
            ),
            "-e",
            json.dumps({"knowngood_approval_required": True}),
            "--break-glass",
            "pager storm, approvers unreachable",
        )
        hits = len(broken.hits)
    record = _record(done)
    assert done.returncode == 0, done.stdout + done.stderr  # the rollback went through
    assert record["approvals"]["mode"] == "break_glass"
    sent = record["notifications"]
    assert {n["event"] for n in sent} == {"break_glass", "success"}
    assert all(n["outcome"] == "failed" and n["attempts"] == 2 for n in sent), sent
    assert hits == 4  # two events, each tried twice
    # break-glass and success were both routed to e-mail; the relay was down for both
    mailed = {n["target"] for n in sent if n["channel"] == "email" and n["event"] == "break_glass"}
    assert mailed == {c["email"] for c in _lab_contacts(lab).values()}  # every contact

    with WebhookReceiver() as hook, SmtpReceiver() as smtp:
        up = {"webhooks": [hook.url(TOKEN)], "smtp": smtp.config(), "timeout_s": 2}
        failed = _flag_run("-e", json.dumps({"flag": "Not A Flag!", "knowngood_notify": up}))
        texts, mails = hook.texts(), smtp.mails
    assert failed.returncode == 2
    failure = _record(failed)
    assert [t.splitlines()[0] for t in texts] == [
        "[knowngood] rollback starting: rollback-flag (INC-31)",
        "[knowngood] rollback FAILED: rollback-flag (INC-31)",
    ]
    assert f"run: {failure['run_id']}" in texts[1] and "failed:" in texts[1]
    assert [m.subject.split(":")[0] for m in mails] == [
        "[knowngood] rollback starting",
        "[knowngood] rollback FAILED",
    ]
    assert "ivan@lab.invalid" in mails[1].recipients  # failure reaches the infrastructure lead
    assert all(n["outcome"] == "delivered" for n in failure["notifications"])

    bad = {"primary_oncall": {"name": "oscar", "email": "oscar at lab"}}
    before = flags.read_bytes() if flags.exists() else None
    refused = _flag_run("-e", json.dumps({"flag": "new_checkout", "knowngood_contacts": bad}))
    assert refused.returncode == 2
    ran = [e for e in _record(refused)["events"] if "argument_spec" not in e["action"]]
    assert [(e["action"], e["status"]) for e in ran] == [("knowngood.runbooks.notify", "failed")]
    why = ran[0]["result"]["msg"]
    assert why.startswith("knowngood_contacts: ") and "secondary_oncall is missing" in why
    assert "'oscar at lab' is not an address" in why
    assert (flags.read_bytes() if flags.exists() else None) == before

    assert PASSWORD not in done.stdout + done.stderr and TOKEN not in done.stdout + done.stderr
    for path in [p for p in (lab.root / "audit").rglob("*") if p.is_file()]:
        data = path.read_bytes()
        assert TOKEN.encode() not in data and PASSWORD.encode() not in data, path
        assert b"/services/" not in data, path


def _lab_contacts(lab) -> dict:
    return governance.inventory_vars(LabConfig.load(lab.root))["knowngood_contacts"]


def test_the_checkpoint_copy_in_the_object_locked_bucket_catches_a_cut_tail(lab_session, tmp_path):
    cfg = LabConfig.load(lab_session.root)
    s3_env = governance.audit_s3_env(cfg)
    audit, key = tmp_path / "audit", tmp_path / "keys" / "audit_key"
    env = {**ansible_env(lab_session.root), **s3_env, "KNOWNGOOD_AUDIT_KEY": str(key)}
    for n in range(3):  # three entries, each checkpointed beside the key and in S3
        _append(audit, key, env, n)

    def verify(environ: dict) -> subprocess.CompletedProcess:
        argv = [str(BIN / "knowngood"), "--root", str(lab_session.root)]
        return subprocess.run(
            [*argv, "audit", "--audit-dir", str(audit), "verify"],
            cwd=REPO,
            env=environ,
            capture_output=True,
            text=True,
            timeout=120,
        )

    ok = verify(env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "witness in s3://knowngood-cold/audit-checkpoints" in ok.stdout

    # Someone who owns the host cuts the last entry and rolls the local checkpoint back to match.
    lines = (audit / "index.jsonl").read_bytes().splitlines(keepends=True)
    (audit / "index.jsonl").write_bytes(b"".join(lines[:-1]))
    local = Path(audit_chain.checkpoint_path(str(key), str(audit)))
    point = dict(json.loads(local.read_text()), seq=2)
    point["sha256"] = hashlib.sha256(lines[1].rstrip(b"\n")).hexdigest()
    local.write_text(json.dumps(point))
    # Without the S3 settings in the environment, the lab's own witness (on by default) still
    # holds the checkpoint: the default verify is not fooled either.
    default = verify({k: v for k, v in env.items() if k not in s3_env})
    assert default.returncode == 3 and "seq 3 missing" in default.stdout, default.stdout
    cut = verify(env)
    assert cut.returncode == 3, cut.stdout
    assert (
        "the witness in s3://knowngood-cold/audit-checkpoints holds checkpoint seq 3" in cut.stdout
    )
    assert "(tail cut)" in cut.stdout

    # Nor can the copy be removed: the cold bucket keeps it under Object Lock.
    client = s3.s3_client(cfg, s3.COLD_REGION)
    remote = audit_chain.remote_from_env(s3_env)
    name = audit_chain._remote_dir(remote, str(audit)) + "seq-000000000003.json"
    versions = client.list_object_versions(Bucket=s3.COLD_BUCKET, Prefix=name)["Versions"]
    assert versions
    with pytest.raises(Exception, match="AccessDenied"):
        client.delete_object(Bucket=s3.COLD_BUCKET, Key=name, VersionId=versions[0]["VersionId"])


def _append(audit: Path, key: Path, env: dict, n: int) -> None:
    """Append in a process of its own, with the S3 settings in its environment only."""
    audit.mkdir(parents=True, exist_ok=True)
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(REPO / 'collections')!r})\n"
        "from ansible_collections.knowngood.runbooks.plugins.module_utils import audit_chain\n"
        f"line = audit_chain.append({str(audit)!r}, {{'kind': 'test', 'n': {n}}}, {str(key)!r})\n"
        "assert not line.get('remote_checkpoint_error'), line\n"
    )
    subprocess.run([str(BIN / "python"), "-c", code], env=env, check=True, timeout=60)
