"""Drills that break things through the lab refuse any inventory but the lab's, before any change.

config_rollback, primary_failover and disaster_recovery inject their failure with `knowngood
lab break`; run from AWX against staging (or by mistake against production), they must stop
before their prepare phase and say why. The check reads what `knowngood lab up` writes (lab.json
and inventory/hosts.json) and compares the inventory's hosts with the lab's: pointing
knowngood_lab_root somewhere with -e only moves where the lab is looked for. The lab's own
inventory passing the same check is tests/integration/test_awx_witness.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LAB_DRILLS = ["config_rollback", "primary_failover", "disaster_recovery"]


def _drill(tmp_path: Path, scenario: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KNOWNGOOD_")}
    env.update(
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        KNOWNGOOD_LAB_DIR=str(tmp_path / "no-lab"),
        KNOWNGOOD_AUDIT_DIR=str(tmp_path / "audit"),
        KNOWNGOOD_DRILL_DIR=str(tmp_path / "drills"),
    )
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "inventories/staging/hosts.yml",
         f"molecule/{scenario}/drill.yml", "-e", f"ansible_python_interpreter={sys.executable}",
         *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _nothing_started(tmp_path: Path, run: subprocess.CompletedProcess) -> None:
    assert run.returncode == 2, run.stdout[-3000:]
    assert "TASK [Open the drill record with its objectives]" not in run.stdout
    assert not (tmp_path / "drills").exists()  # the drill never opened its record
    assert "ok=0" in run.stdout and "changed=0" in run.stdout


@pytest.mark.parametrize("scenario", LAB_DRILLS)
def test_lab_drills_refuse_the_staging_inventory_before_anything_changes(tmp_path, scenario):
    run = _drill(tmp_path, scenario)
    _nothing_started(tmp_path, run)
    assert (
        f"refused outside a lab: drill {scenario} injects its failure with `knowngood lab break`"
        in run.stdout
    )
    assert "this inventory names no lab (knowngood_lab_root)" in run.stdout


def _fake_lab(root: Path, hosts: dict) -> Path:
    (root / "inventory").mkdir(parents=True)
    (root / "lab.json").write_text(json.dumps({"hosts": len(hosts)}))
    inventory = {"all": {"children": {"app": {"hosts": hosts}}}}
    (root / "inventory" / "hosts.json").write_text(json.dumps(inventory))
    return root


def test_pointing_knowngood_lab_root_elsewhere_with_e_does_not_pass(tmp_path):
    # -e at a directory with no lab in it
    run = _drill(tmp_path, "config_rollback", "-e", f"knowngood_lab_root={tmp_path}")
    _nothing_started(tmp_path, run)
    assert f"{tmp_path} holds no lab (`knowngood lab up` writes lab.json" in run.stdout
    # -e at a real-looking lab: the staging hosts are not its hosts
    lab = _fake_lab(tmp_path / "lab", {"app1": {"ansible_connection": "local"}})
    run = _drill(tmp_path, "primary_failover", "-e", f"knowngood_lab_root={lab}")
    _nothing_started(tmp_path, run)
    assert "web-01.staging.example.com is not a lab host" in run.stdout
    # ... even one whose hosts carry staging's names, when staging is reached another way
    names = ["web-01", "web-02", "web-03", "lb-01", "db-01", "db-02"]
    same = {f"{n}.staging.example.com": {"ansible_connection": "local"} for n in names}
    lab = _fake_lab(tmp_path / "lab2", same)
    run = _drill(tmp_path, "disaster_recovery", "-e", f"knowngood_lab_root={lab}")
    _nothing_started(tmp_path, run)
    assert "web-01.staging.example.com is reached by - -, the lab's by local -" in run.stdout


def test_drills_that_break_things_themselves_are_not_lab_only():
    for scenario in ("code_rollback", "table_restore", "database_pitr"):
        text = (REPO / "molecule" / scenario / "drill.yml").read_text()
        assert (
            "lab_only.yml" not in text
            and "inject.yml" not in (REPO / "molecule" / scenario / "side_effect.yml").read_text()
        )
    for scenario in LAB_DRILLS:
        assert "lab_only.yml" in (REPO / "molecule" / scenario / "drill.yml").read_text()
        assert "shared/inject.yml" in (REPO / "molecule" / scenario / "side_effect.yml").read_text()
