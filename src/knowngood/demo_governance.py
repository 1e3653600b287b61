"""Demo step for governance (issue 6): decide, request, sign, run, verify, report.

    from knowngood import demo_governance
    demo_governance.run(cfg, say)   # cfg: LabConfig of a running lab, say: demo.say

Deploys v1.1, decides (a declared security issue: high severity, CTO + Infrastructure Lead),
writes the rollback request to v1, has the lab's CTO (carla) and Infrastructure Lead (ivan)
sign it with their SSH keys, runs rollback-code through `knowngood run` with the gate on,
verifies the audit trail and prints the HTML incident report's path.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from knowngood.lab.config import LabConfig
from knowngood.traffic import Traffic

KNOWNGOOD = str(Path(sys.executable).parent / "knowngood")


def _kg(cfg: LabConfig, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [KNOWNGOOD, "--root", str(cfg.root), *args], capture_output=True, text=True, check=False
    )


def _record(done: subprocess.CompletedProcess) -> dict:
    path = done.stdout.rsplit("audit record:", 1)[1].strip().splitlines()[0]
    return json.loads(Path(path).read_text())


def run(cfg: LabConfig, say: Callable[[str], None]) -> Path:
    """Returns the HTML report's path."""
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
            cfg, "run", "rollback-code", "--quiet", "-e", gate_on, *extra, "--request", request
        )
    record = _record(done)
    print(
        f"    rollback-code: exit {done.returncode}, approvals {record['approvals']['mode']} "
        f"by {[s['principal'] for s in record['approvals']['signers']]}; traffic {traffic.report()}"
    )

    say("verify the audit trail: chain, signatures, records, checkpoint")
    print("    " + _kg(cfg, "audit", "verify").stdout.strip())
    out = _kg(cfg, "report", record["run_id"], "--format", "html").stdout.strip()
    say(f"incident report: {out}")
    return Path(out)
