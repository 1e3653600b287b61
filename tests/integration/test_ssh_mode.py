"""SSH mode: every app host behind its own sshd on 127.0.1.x; a host down is an sshd stopped."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import Lab, http_json, knowngood

pytestmark = pytest.mark.lab

SSH_ROOT = Path(os.environ.get("KNOWNGOOD_TEST_SSH_LAB", "/tmp/knowngood-test-ssh-lab"))
SSH_BASE_PORT = os.environ.get("KNOWNGOOD_TEST_SSH_BASE_PORT", "30000")


@pytest.fixture(scope="module")
def ssh_lab():
    up = knowngood(
        "lab", "up", "--ssh", "--hosts", "3", "--base-port", SSH_BASE_PORT, root=SSH_ROOT
    )
    assert up.returncode == 0, up.stdout + up.stderr
    status = json.loads(knowngood("lab", "status", "--json", root=SSH_ROOT).stdout)
    yield Lab(SSH_ROOT, status)
    if not os.environ.get("KNOWNGOOD_KEEP_LAB"):
        knowngood("lab", "down", root=SSH_ROOT)


def sshd(action: str, index: int) -> None:
    from knowngood.lab import sshd
    from knowngood.lab.config import LabConfig

    cfg = LabConfig.load(SSH_ROOT)
    if action == "down":
        sshd.sshd_down(cfg, index)
    else:
        sshd.sshd_up(cfg, print, index)


def test_hosts_are_reached_over_ssh(ssh_lab):
    inventory = Path(ssh_lab.inventory).read_text()
    assert "ansible_connection: ssh" in inventory and "127.0.1.3" in inventory
    run = ssh_lab.playbook("deploy-code", release_id="v1", code_deploy_serial=["100%"])
    assert run.rc == 0, run.output[-3000:]
    assert ssh_lab.live_releases() == {"v1"}


def test_unreachable_host_is_reported_others_roll_back_and_a_rerun_converges(ssh_lab):
    run = ssh_lab.playbook("deploy-code", release_id="v1.1", code_deploy_serial=["100%"])
    assert run.rc == 0, run.output[-3000:]
    sshd("down", 2)
    try:
        run = ssh_lab.playbook("rollback-code", rollback_reason="ssh drill")
        assert run.rc != 0
        assert run.recap["app3"]["unreachable"] == 1
        assert "UNREACHABLE" in run.output
        assert 'app3\\": {\\"v1.1' in run.output and "were not rolled back" in run.output
        serving = {h["name"]: h for h in ssh_lab.status["hosts"]}
        assert http_json(serving["app1"]["app_urls"]["blue"] + "/version")["release"] == "v1"
        assert http_json(serving["app2"]["app_urls"]["blue"] + "/version")["release"] == "v1"
        assert http_json(serving["app3"]["app_urls"]["blue"] + "/version")["release"] == "v1.1"
    finally:
        sshd("up", 2)
    run = ssh_lab.playbook("rollback-code", rollback_reason="ssh drill, rerun")
    assert run.rc == 0, run.output[-3000:]
    assert set(ssh_lab.serving()) <= {"v1", None} and ssh_lab.live_releases() == {"v1"}
    assert run.recap["app1"]["failed"] == 0
