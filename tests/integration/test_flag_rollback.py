"""Feature flag rollback end to end.

rollback-flag.yml against a running lab (KNOWNGOOD_TEST_LAB=<lab root>; the tests toggle
new_checkout there and leave it off), and the feature_flag module's http backend against the lab
flag service started in a temporary directory (needs no lab).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PLAYBOOK = "playbooks/rollback-flag.yml"
FLAG = "new_checkout"
RunPlaybook = Callable[..., subprocess.CompletedProcess[str]]
RECAP_RE = re.compile(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)", re.M)


@dataclass(frozen=True)
class Lab:
    root: str
    inventory: str
    lb_url: str
    flags_files: dict[str, Path]


def _env(audit_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KNOWNGOOD_FLAG_TOKEN",)}
    env.update(
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        KNOWNGOOD_AUDIT_DIR=str(audit_dir),
        KNOWNGOOD_RUN_ID=f"test-{uuid.uuid4().hex[:12]}",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    env.update(extra)
    return env


def _recap(output: str) -> dict[str, tuple[int, int]]:
    """host -> (changed, failed) from the PLAY RECAP."""
    return {host: (int(ch), int(f)) for host, ch, f in RECAP_RE.findall(output)}


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _burst(url: str, n: int = 60) -> int:
    """Send n requests; return how many failed (5xx or no answer)."""
    errors = 0
    for _ in range(n):
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                errors += response.status >= 500
        except urllib.error.HTTPError as exc:
            errors += exc.code >= 500
        except OSError:
            errors += 1
    return errors


# ------------------------------------------------------------------ the lab


@pytest.fixture(scope="module")
def flag_lab(lab_session) -> Lab:
    """The shared test lab, emptied and serving v1, whose risky path sits behind new_checkout."""
    lab_session.reset()
    run = lab_session.playbook("deploy-code", release_id="v1", code_deploy_serial=["100%"])
    assert run.rc == 0, run.output[-3000:]
    inventory = yaml.safe_load(Path(lab_session.inventory).read_text())["all"]
    hosts = inventory["children"]["app"]["hosts"]
    return Lab(
        root=str(lab_session.root),
        inventory=lab_session.inventory,
        lb_url=inventory["vars"]["knowngood_lb_url"],
        flags_files={name: Path(hv["knowngood_flags_file"]) for name, hv in hosts.items()},
    )


@pytest.fixture
def flag_playbook(flag_lab: Lab, tmp_path: Path) -> Iterator[RunPlaybook]:
    """Run rollback-flag.yml on the lab; new_checkout is switched off again afterwards."""

    def run(extravars: dict, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        argv = [str(BIN / "ansible-playbook"), "-i", flag_lab.inventory, PLAYBOOK]
        argv += ["-e", json.dumps(extravars), *args]
        return _run(argv, _env(tmp_path / "audit", KNOWNGOOD_LAB_DIR=flag_lab.root, **env))

    yield run
    if any(record and record["enabled"] for record in _flag_records(flag_lab).values()):
        done = run({"flag": FLAG, "rollback_reason": "test cleanup"})
        assert done.returncode == 0, done.stdout + done.stderr


def _flag_records(flag_lab: Lab) -> dict[str, dict | None]:
    records = {}
    for host, path in flag_lab.flags_files.items():
        flags = json.loads(path.read_text())["flags"] if path.exists() else {}
        records[host] = flags.get(FLAG)
    return records


def _snapshot(flag_lab: Lab) -> dict[str, tuple[bytes, int] | None]:
    """Content and mtime of every flags file: the apps reload on a new mtime alone."""
    return {
        host: (path.read_bytes(), path.stat().st_mtime_ns) if path.exists() else None
        for host, path in flag_lab.flags_files.items()
    }


def _switch_on(run: RunPlaybook) -> None:
    done = run({"flag": FLAG, "code_flag_enabled": True, "rollback_reason": "demo: break it"})
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.lab
def test_turning_the_flag_off_stops_the_errors_on_every_host(
    flag_lab: Lab, flag_playbook: RunPlaybook
) -> None:
    _switch_on(flag_playbook)
    errors = _burst(flag_lab.lb_url + "/")
    assert errors / 60 > 0.10, f"only {errors}/60 errors with {FLAG} on"

    run_id, reason = f"test-{uuid.uuid4().hex[:12]}", "checkout errors 34%"
    done = flag_playbook(
        {"flag": FLAG, "rollback_reason": reason, "ticket": "INC-7"}, KNOWNGOOD_RUN_ID=run_id
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(changed == 1 for changed, _ in _recap(done.stdout).values()), done.stdout
    assert _burst(flag_lab.lb_url + "/") == 0
    for host, record in _flag_records(flag_lab).items():
        assert record is not None, f"{host} has no {FLAG}"
        assert record["enabled"] is False, host
        assert record["run_id"] == run_id, host
        assert record["reason"] == f"{reason} (INC-7)", host

    again = flag_playbook({"flag": FLAG, "rollback_reason": reason})
    assert again.returncode == 0, again.stdout + again.stderr
    recap = _recap(again.stdout)
    assert set(recap) == set(flag_lab.flags_files)
    assert all(changed == 0 for changed, _ in recap.values()), again.stdout


@pytest.mark.lab
def test_check_mode_reports_the_change_and_makes_none(
    flag_lab: Lab, flag_playbook: RunPlaybook
) -> None:
    _switch_on(flag_playbook)
    before = _snapshot(flag_lab)
    done = flag_playbook({"flag": FLAG, "rollback_reason": "dry run"}, "--check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(changed == 1 for changed, _ in _recap(done.stdout).values()), done.stdout
    assert "would be off" in done.stdout
    assert _snapshot(flag_lab) == before


@pytest.mark.lab
@pytest.mark.parametrize("name", ["../x", "a;b"])
def test_invalid_flag_name_fails_before_anything_changes(
    flag_lab: Lab, flag_playbook: RunPlaybook, name: str
) -> None:
    before = _snapshot(flag_lab)
    done = flag_playbook({"flag": name, "rollback_reason": "bad input"})
    assert done.returncode != 0
    assert f"flag {json.dumps(name)} is not a flag name" in done.stdout + done.stderr
    assert all(changed == 0 for changed, _ in _recap(done.stdout).values()), done.stdout
    assert "Set the flag" not in done.stdout
    assert _snapshot(flag_lab) == before


# ------------------------------------------------------------------ the http backend


@dataclass(frozen=True)
class FlagService:
    url: str
    token: str
    token_file: Path
    state: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def flag_service(tmp_path: Path) -> Iterator[FlagService]:
    token = secrets.token_urlsafe(24)
    token_file = tmp_path / "flag-service.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    state, port = tmp_path / "flags-state.json", _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "knowngood.lab.flagservice", "--port", str(port)]
        + ["--state", str(state), "--token-file", str(token_file)]
        + ["--pidfile", str(tmp_path / "flagservice.pid")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"flag service did not start: {proc.communicate()[1]!r}")
            time.sleep(0.05)
    yield FlagService(url=url, token=token, token_file=token_file, state=state)
    proc.terminate()
    proc.wait(timeout=10)


# The token reaches the module through the environment, as an operator's would: an ad-hoc
# `ansible -m ... -a '{"token": ...}'` that fails echoes its raw arguments, token included.
SET_FLAG_PLAY = """\
- name: Set one flag through the flag service
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Set the flag
      knowngood.runbooks.feature_flag:
        name: "{{ name }}"
        enabled: "{{ enabled }}"
        backend: http
        url: "{{ url }}"
        token: "{{ lookup('ansible.builtin.env', 'FLAG_TOKEN') }}"
        run_id: "{{ lookup('ansible.builtin.env', 'KNOWNGOOD_RUN_ID') }}"
        reason: "{{ reason }}"
"""


def _set_flag(
    service: FlagService, tmp_path: Path, token: str, enabled: bool, *args: str
) -> subprocess.CompletedProcess[str]:
    play = tmp_path / "set-flag.yml"
    play.write_text(SET_FLAG_PLAY)
    extravars = {
        "name": FLAG,
        "enabled": enabled,
        "url": service.url,
        "reason": "errors 34%",
        "ansible_python_interpreter": sys.executable,
    }
    argv = [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(play)]
    argv += ["-e", json.dumps(extravars), "-v", *args]
    return _run(argv, _env(tmp_path / "audit", FLAG_TOKEN=token, KNOWNGOOD_RUN_ID="run-http"))


def _state(service: FlagService) -> dict:
    return json.loads(service.state.read_text())["flags"] if service.state.exists() else {}


def test_http_backend_refuses_a_wrong_token(flag_service: FlagService, tmp_path: Path) -> None:
    wrong = secrets.token_urlsafe(24)
    done = _set_flag(flag_service, tmp_path, wrong, False)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "401" in output
    assert wrong not in output and flag_service.token not in output
    assert _state(flag_service) == {}


def test_http_backend_sets_the_flag_once_and_never_prints_the_token(
    flag_service: FlagService, tmp_path: Path
) -> None:
    token = flag_service.token
    first = _set_flag(flag_service, tmp_path, token, False)
    assert first.returncode == 0, first.stdout + first.stderr
    assert _recap(first.stdout)["localhost"] == (1, 0)
    record = _state(flag_service)[FLAG]
    assert record["enabled"] is False
    assert (record["run_id"], record["reason"]) == ("run-http", "errors 34%")

    second = _set_flag(flag_service, tmp_path, token, False)
    assert second.returncode == 0, second.stdout + second.stderr
    assert _recap(second.stdout)["localhost"] == (0, 0)

    before = flag_service.state.read_bytes()
    check = _set_flag(flag_service, tmp_path, token, True, "--check", "--diff")
    assert check.returncode == 0, check.stdout + check.stderr
    assert _recap(check.stdout)["localhost"] == (1, 0)
    assert flag_service.state.read_bytes() == before

    for done in (first, second, check):
        assert token not in done.stdout + done.stderr


@pytest.mark.lab
def test_rollback_flag_playbook_drives_the_flag_service(
    flag_lab: Lab, flag_playbook: RunPlaybook, flag_service: FlagService, tmp_path: Path
) -> None:
    # The lab's apps read their flags files, not this service: the probes need the file flag off.
    if any(record and record["enabled"] for record in _flag_records(flag_lab).values()):
        assert flag_playbook({"flag": FLAG, "rollback_reason": "precondition"}).returncode == 0
    extravars = {
        "flag": FLAG,
        "rollback_reason": "errors 34%",
        "code_flag_backend": "http",
        "code_flag_url": flag_service.url,
        "code_flag_token_file": str(flag_service.token_file),
    }
    argv = [str(BIN / "ansible-playbook"), "-i", flag_lab.inventory, PLAYBOOK, "-v"]
    done = _run(
        argv + ["-e", json.dumps(extravars)],
        _env(tmp_path / "audit", KNOWNGOOD_LAB_DIR=flag_lab.root, KNOWNGOOD_RUN_ID="run-role"),
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert flag_service.token not in output
    # Set once for the whole play, not once per host.
    assert sum(changed for changed, _ in _recap(done.stdout).values()) == 1
    record = _state(flag_service)[FLAG]
    assert (record["enabled"], record["run_id"]) == (False, "run-role")

    # Switching it back on needs a PUT, which a wrong token cannot make.
    (tmp_path / "wrong.token").write_text("not-the-token\n")
    wrong = dict(
        extravars, code_flag_enabled=True, code_flag_token_file=str(tmp_path / "wrong.token")
    )
    refused = _run(
        argv + ["-e", json.dumps(wrong)], _env(tmp_path / "audit", KNOWNGOOD_LAB_DIR=flag_lab.root)
    )
    assert refused.returncode != 0
    assert "401" in refused.stdout + refused.stderr
    assert "not-the-token" not in refused.stdout + refused.stderr
