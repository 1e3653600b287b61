"""Governance story (issue 6): decide, request, sign, run, verify, report.

Deploys v1.1, decides (a declared security issue: high severity, CTO + Infrastructure Lead),
writes the rollback request to v1, has the lab's CTO (carla) and Infrastructure Lead (ivan)
sign it with their SSH keys, runs rollback-code through `knowngood run` with the gate on,
verifies the audit trail (with a second copy of its checkpoint in the lab's object-locked cold
bucket) and prints the HTML incident report's path. A local webhook receiver and SMTP server
stand in for Slack and the mail relay: the demo prints what each contact was told.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from knowngood.demo.story import say
from knowngood.lab import governance
from knowngood.lab.config import LabConfig
from knowngood.lab.notify_sinks import SmtpReceiver, WebhookReceiver
from knowngood.traffic import Traffic

KNOWNGOOD = str(Path(sys.executable).parent / "knowngood")


def _kg(cfg: LabConfig, *args: str) -> subprocess.CompletedProcess:
    # The audit checkpoint is also kept in the cold bucket (S3 Object Lock).
    env = {**os.environ, **governance.audit_s3_env(cfg)}
    return subprocess.run(
        [KNOWNGOOD, "--root", str(cfg.root), *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )


def _told(hook: WebhookReceiver, smtp: SmtpReceiver, seen: tuple[int, int]) -> tuple[int, int]:
    """Print the notices received since `seen`; returns the new counts."""
    for text in hook.texts()[seen[0] :]:
        print(f"    webhook  {text.splitlines()[0]}")
    for mail in smtp.mails[seen[1] :]:
        print(f"    e-mail   {mail.subject} -> {', '.join(mail.recipients)}")
    return len(hook.hits), len(smtp.mails)


def _record(done: subprocess.CompletedProcess) -> dict:
    path = done.stdout.rsplit("audit record:", 1)[1].strip().splitlines()[0]
    return json.loads(Path(path).read_text())


def story(cfg: LabConfig, lb: str) -> None:
    with WebhookReceiver() as hook, SmtpReceiver() as smtp:
        report = _tell(cfg, hook, smtp)
    print(f"    incident report (HTML, one file): {report}")


def _tell(cfg: LabConfig, hook: WebhookReceiver, smtp: SmtpReceiver) -> Path:
    """Returns the HTML report's path."""
    notices = json.dumps(
        {"knowngood_notify": {"webhooks": [hook.url()], "smtp": smtp.config(), "timeout_s": 2}}
    )
    say("governance: deploy v1 and v1.1, then an incident is declared on v1.1")
    for rid in ("v1", "v1.1"):
        done = _kg(cfg, "run", "deploy-code", "--quiet", "-e", f"release_id={rid}")
        print(f"    deploy {rid}: exit {done.returncode}")
    declared = [{"trigger": "security", "note": "session tokens logged in v1.1"}]
    done = _kg(
        cfg, "run", "decide", "--quiet", "-e", json.dumps({"window": 30, "declared": declared})
    )
    decision = next(
        e["result"] for e in _record(done)["events"] if e["action"].endswith("rollback_decision")
    )
    print(f"    decision: {decision['msg']}")
    severity = decision["severity"] if decision["severity"] != "none" else "high"

    say(f"request a rollback to v1 ({severity}); the CTO and the Infrastructure Lead sign it")
    extra = ["-e", "release_id=v1"]
    done = _kg(
        cfg,
        "request",
        "rollback-code",
        *extra,
        "-e",
        notices,
        "--severity",
        severity,
        "--ticket",
        "INC-1001",
        "--reason",
        "security: session tokens logged",
        "--requester",
        "oscar",
    )
    request = done.stdout.strip()
    print(f"    request {request}")
    seen = _told(hook, smtp, (0, 0))
    keys = cfg.root / "governance" / "keys"
    for who in ("carla", "ivan"):
        print(
            "    "
            + _kg(cfg, "approve", request, "--key", str(keys / who), "--signer", who).stdout.strip()
        )

    say("roll back through `knowngood run`: the gate checks the signatures over this exact run")
    gate_on = json.dumps({"knowngood_approval_required": True})
    with Traffic(f"http://127.0.0.1:{cfg.lb_port}/", threads=2) as traffic:
        done = _kg(
            cfg,
            "run",
            "rollback-code",
            "--quiet",
            "-e",
            gate_on,
            "-e",
            notices,
            *extra,
            "--request",
            request,
        )
    record = _record(done)
    print(
        f"    rollback-code: exit {done.returncode}, approvals {record['approvals']['mode']} "
        f"by {[s['principal'] for s in record['approvals']['signers']]}; traffic {traffic.report()}"
    )
    _told(hook, smtp, seen)
    failed = [n for n in record.get("notifications", []) if n["outcome"] != "delivered"]
    print(f"    recorded {len(record.get('notifications', []))} notices, {len(failed)} failed")

    say("verify the audit trail: chain, signatures, records, checkpoint and its S3 copy")
    print("    " + _kg(cfg, "audit", "verify").stdout.strip())
    out = _kg(cfg, "report", record["run_id"], "--format", "html").stdout.strip()
    say(f"incident report: {out}")
    return Path(out)
