"""Run a runbook through ansible-runner and keep its audit record.

The audit callback (plugins/callback/audit.py) writes the record; this wrapper adds the
request (who asked, which runbook, inputs) and maps the run's status to an exit code.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNBOOK_RE = re.compile(r"^[a-z][a-z0-9-]{0,63}$")
EXIT_CODES = {"successful": 0, "failed": 2, "timeout": 3, "canceled": 4}
DEFAULT_AUDIT_DIR = Path(
    os.environ.get("KNOWNGOOD_AUDIT_DIR", "~/.local/state/knowngood/audit")
).expanduser()


class KnowngoodError(Exception):
    """Base of every error the CLI reports without a traceback."""


@dataclass
class RunRequest:
    runbook: str
    inventory: str
    extravars: dict = field(default_factory=dict)
    check: bool = False
    limit: str = ""
    audit_dir: Path = DEFAULT_AUDIT_DIR
    user: str = ""
    quiet: bool = False


@dataclass
class RunResult:
    run_id: str
    status: str
    rc: int
    duration_s: float
    record_path: Path
    record: dict

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.status, 1)


def playbook_path(runbook: str) -> Path:
    if not RUNBOOK_RE.match(runbook):
        raise KnowngoodError(f"invalid runbook name {runbook!r}")
    path = REPO / "playbooks" / f"{runbook}.yml"
    if not path.exists():
        known = sorted(p.stem for p in (REPO / "playbooks").glob("*.yml"))
        raise KnowngoodError(f"no runbook {runbook!r}; known: {', '.join(known)}")
    return path


def new_run_id() -> str:
    return f"kg-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def run(request: RunRequest) -> RunResult:
    import ansible_runner

    playbook = playbook_path(request.runbook)
    run_id = new_run_id()
    audit_dir = request.audit_dir
    audit_dir.mkdir(parents=True, exist_ok=True)
    # ansible-runner writes the extra variables (secrets included) and raw output into its
    # private data dir; the audit record is our callback's, so that dir lives only for the run.
    cmdline = []
    if request.check:
        cmdline += ["--check", "--diff"]
    if request.limit:
        cmdline += ["--limit", request.limit]
    env = {
        "KNOWNGOOD_RUN_ID": run_id,
        "KNOWNGOOD_AUDIT_DIR": str(audit_dir),
        "KNOWNGOOD_USER": request.user or getpass.getuser(),
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": str(REPO / "collections"),
        "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
        # ansible-runner starts ansible-playbook from PATH: the one beside this interpreter,
        # even when the venv is not activated (make demo, cron, AWX hooks).
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"knowngood-{run_id}-") as private:
        result = ansible_runner.run(
            private_data_dir=private,
            project_dir=str(REPO),
            playbook=str(playbook),
            inventory=request.inventory,
            extravars=request.extravars,
            cmdline=" ".join(cmdline) or None,
            envvars=env,
            quiet=request.quiet,
        )
    duration = time.monotonic() - started
    record_path = audit_dir / f"{run_id}.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    return RunResult(run_id, result.status, result.rc, duration, record_path, record)


def summarize(record: dict) -> list[str]:
    """The lines an on-call engineer reads after a run: what changed, where, how long."""
    lines = [
        f"run {record.get('run_id')}: {record.get('status')} in {record.get('duration_s')}s "
        f"by {record.get('user')} ({Path(record.get('playbook', '?')).name})"
    ]
    for event in record.get("events", []):
        res = event.get("result", {})
        if event["status"] in ("changed", "failed", "unreachable") or res.get("breaches"):
            detail = res.get("msg") or "; ".join(res.get("actions", [])) or ""
            if not detail or detail == "All items completed":
                continue
            lines.append(
                f"  {event['status']:<11} {event['host']:<6} {event['task']}: {detail}"[:200]
            )
    return lines
