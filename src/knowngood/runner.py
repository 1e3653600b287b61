"""Run a runbook through ansible-runner and keep its audit record.

The audit callback (plugins/callback/audit.py) writes the record; this wrapper adds the
request (who asked, which runbook, inputs) and maps the run's status to an exit code.
"""

from __future__ import annotations

import getpass
import os
import re
import shlex
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from knowngood import collection
from knowngood.errors import KnowngoodError

RUNBOOK_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
FQCN_PREFIX = "knowngood.runbooks."
EXIT_CODES = {"successful": 0, "failed": 2, "timeout": 3, "canceled": 4}
# Runner artifacts kept (and digested) with the record; env/ (extra vars, secrets) never is.
KEPT_ARTIFACTS = ("stdout", "status", "rc", "command")


@dataclass
class RunRequest:
    runbook: str
    inventory: str
    extravars: dict = field(default_factory=dict)
    check: bool = False
    limit: str = ""
    audit_dir: Path | None = None  # None: the one resolution (audit_chain.resolve_trail)
    user: str = ""
    quiet: bool = False
    ticket: str = ""
    reason: str = ""
    audit_key: Path | None = None
    lab_root: str = ""
    verbosity: int = 0
    diff: bool = False
    vault_password_file: str = ""


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
    if runbook.endswith(".yml") and Path(runbook).is_file():
        return Path(runbook).resolve()  # a playbook of one's own, by path
    name = runbook.removeprefix(FQCN_PREFIX)  # knowngood.runbooks.rollback_code works too
    if not RUNBOOK_RE.match(name):
        raise KnowngoodError(f"invalid runbook name {runbook!r}")
    known = collection.playbooks()
    if name not in known:
        raise KnowngoodError(f"no runbook {runbook!r}; known: {', '.join(sorted(known))}")
    return known[name]


def use_color(stream=None) -> bool:
    """Colour only on a terminal, never with NO_COLOR set (https://no-color.org)."""
    stream = stream or sys.stdout
    if os.environ.get("NO_COLOR"):
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


def color_env() -> dict[str, str]:
    return {"ANSIBLE_FORCE_COLOR": "1"} if use_color() else {"ANSIBLE_NOCOLOR": "1"}


def new_run_id() -> str:
    return f"kg-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def operator_fingerprint() -> str:
    """SHA256 fingerprint of the operator's SSH key (agent first, then ~/.ssh/id_*), or ''."""
    import subprocess

    done = subprocess.run(["ssh-add", "-l"], capture_output=True, text=True, check=False)
    if done.returncode == 0 and done.stdout.strip():
        return done.stdout.split()[1]
    for name in ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"):
        pub = Path.home() / ".ssh" / name
        if pub.exists():
            done = subprocess.run(
                ["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode == 0:
                return done.stdout.split()[1]
    return ""


def keep_artifacts(artifact_dir: Path, audit_dir: Path, run_id: str) -> dict[str, str]:
    """Copy the runner's output (never env/) beside the record; {relative path: sha256}."""
    import shutil

    from knowngood.modutils import module_utils

    chain = module_utils("audit_chain")
    kept = audit_dir / "artifacts" / run_id
    digests = {}
    sources = [artifact_dir / n for n in KEPT_ARTIFACTS] + sorted(
        (artifact_dir / "job_events").glob("*.json")
    )
    for src in sources:
        if not src.is_file():
            continue
        dest = kept / src.relative_to(artifact_dir)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        digests[str(dest.relative_to(audit_dir))] = chain.sha256_file(str(dest))
    return digests


def run(request: RunRequest) -> RunResult:
    import ansible_runner

    playbook = playbook_path(request.runbook)
    home = collection.root()
    from knowngood.modutils import module_utils

    chain = module_utils("audit_chain")
    try:
        trail = chain.resolve_trail(
            str(request.audit_dir or ""), str(request.audit_key or ""), request.lab_root or None
        )
        user = chain.check_name(request.user or getpass.getuser(), "user")
    except (ValueError, chain.AuditError) as exc:  # a bad witness setting or user: stop first
        raise KnowngoodError(str(exc)) from None
    run_id = new_run_id()
    audit_dir = Path(trail["audit_dir"])
    audit_dir.mkdir(parents=True, exist_ok=True)
    started_at = chain.utcnow()
    line = chain.open_record(trail, _opening(request, run_id, user, playbook, started_at))
    _warn_witness(line)
    # ansible-runner writes the extra variables (secrets included) and raw output into its
    # private data dir; the audit record is our callback's, so that dir lives only for the run.
    cmdline = []
    if request.check:
        cmdline += ["--check", "--diff"]
    elif request.diff:
        cmdline += ["--diff"]
    if request.limit:
        cmdline += ["--limit", request.limit]
    if request.vault_password_file:
        cmdline += ["--vault-password-file", str(Path(request.vault_password_file).resolve())]
    env = {
        "KNOWNGOOD_RUN_ID": run_id,
        "KNOWNGOOD_AUDIT_OPENED": run_id,  # the callback closes the record opened here
        "KNOWNGOOD_AUDIT_DIR": str(audit_dir),
        # ansible-runner wraps this stdout callback; it hides no_log tasks' error messages,
        # which the wrapped default callback of ansible-core 2.19 would print.
        "ANSIBLE_STDOUT_CALLBACK": "knowngood.runbooks.safe_default",
        "KNOWNGOOD_USER": user,
        "KNOWNGOOD_KEY_FINGERPRINT": operator_fingerprint(),
        "KNOWNGOOD_AUDIT_KEY": trail["key"],
        "KNOWNGOOD_TICKET": request.ticket,
        "KNOWNGOOD_REASON": request.reason,
        **({"KNOWNGOOD_LAB_DIR": request.lab_root} if request.lab_root else {}),
        "ANSIBLE_CONFIG": str(home / "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": str(collection.collections_dir(home)),
        "ANSIBLE_ROLES_PATH": str(home / "roles"),
        # ansible-runner gives ansible-playbook a terminal: colour only when ours is one.
        **color_env(),
        # ansible-runner starts ansible-playbook from PATH: the one beside this interpreter,
        # even when the venv is not activated (make demo, cron, AWX hooks).
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"knowngood-{run_id}-") as private:
        result = ansible_runner.run(
            private_data_dir=private,
            project_dir=str(home),
            playbook=str(playbook),
            inventory=request.inventory,
            extravars=request.extravars,
            cmdline=shlex.join(cmdline) or None,
            envvars=env,
            quiet=request.quiet,
            ident=run_id,
            verbosity=request.verbosity or None,
        )
        digests = keep_artifacts(Path(private) / "artifacts" / run_id, audit_dir, run_id)
    duration = time.monotonic() - started
    record_format = module_utils("audit_record")
    record_path = audit_dir / record_format.record_name(run_id)
    if not record_path.exists():
        # ansible-playbook ended without closing its record (killed, crashed): close it here,
        # saying so, rather than leave the run looking as if it were still going.
        closing = {
            "run_id": run_id,
            "kind": "knowngood-run",
            "user": user,
            "playbook": str(playbook),
            "started_at": started_at,
            "finished_at": chain.utcnow(),
            "status": result.status,
            "rc": result.rc,
            "note": "ansible-playbook ended without its record; closed by knowngood run",
            "events": [],
        }
        _warn_witness(chain.close_record(trail, closing)[1])
    _warn_witness(
        chain.append(
            str(audit_dir),
            {"kind": "artifacts", "run_id": run_id, "status": result.status, "artifacts": digests},
            trail["key"],
            trail["witness"],
        )
    )
    record = record_format.read(audit_dir, run_id) or {}
    return RunResult(run_id, result.status, result.rc, duration, record_path, record)


def _warn_witness(line: dict) -> None:
    if line.get("remote_checkpoint_error"):
        print(
            f"knowngood: WARNING the audit witness copy of the checkpoint failed "
            f"({line['remote_checkpoint_error']})",
            file=sys.stderr,
        )


def _opening(request: RunRequest, run_id: str, user: str, playbook: Path, at: str) -> dict:
    """What the open record says before anything runs: who, what, why, the request's approvals."""
    from knowngood.modutils import module_utils

    opening = {
        "run_id": run_id,
        "kind": "knowngood-run",
        "user": user,
        "os_user": getpass.getuser(),
        "playbook": str(playbook),
        "inventory": [request.inventory],
        "limit": request.limit,
        "started_at": at,
        "ticket": request.ticket,
        "reason": request.reason,
        "check_mode": request.check,
        "extra_vars": module_utils("audit_record").mask(request.extravars),
        "break_glass": str(request.extravars.get("knowngood_break_glass") or ""),
    }
    path = request.extravars.get("knowngood_request")
    if path:
        opening["request"] = str(path)
        try:
            data = module_utils("approval").load_request_file(str(path))
            opening["request_id"] = data.get("id")
            opening["approvals"] = [
                {k: a.get(k) for k in ("signer", "key_fingerprint", "signed_at")}
                for a in data.get("approvals") or []
            ]
        except Exception as exc:  # the gate refuses it in the run; the record says why not here
            opening["request_error"] = type(exc).__name__
    return opening


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
