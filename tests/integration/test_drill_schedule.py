"""playbooks/schedule-drills.yml on this machine (no systemd as PID 1): the cron path for real
(entries written to a cron file, idempotent, a drill dropped from the inventory's schedule
loses its entry, removed with state=absent, check mode changing nothing) and the systemd
units rendered into a temporary root, their content checked and their calendars parsed by
systemd-analyze."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BIN, REPO, ansible_env, parse_recap

QUARTERLY = ["code_rollback", "config_rollback", "table_restore", "database_pitr"]
ANNUAL = ["disaster_recovery", "primary_failover"]
PYTHON = json.dumps({"ansible_python_interpreter": sys.executable})


def schedule(tmp_path: Path, *args: str, **extra):
    argv = [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", "-e", PYTHON]
    argv += ["playbooks/schedule-drills.yml", *args]
    params = {"drill_schedule_lab_dir": str(tmp_path / "lab"), "drill_schedule_cli": "/opt/kg"}
    params.update(extra)
    for key, value in params.items():
        argv += ["-e", json.dumps({key: value})]
    proc = subprocess.run(
        argv, cwd=REPO, env=ansible_env(tmp_path), capture_output=True, text=True, timeout=300
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    return output, parse_recap(output)["localhost"]


def timer_line(path: Path, key: str) -> str:
    return next(line for line in path.read_text().splitlines() if line.startswith(key))[len(key) :]


def entries(cron_file: Path) -> dict[str, str]:
    """name -> schedule line of every drill in the cron file (its comment names it)."""
    lines = cron_file.read_text().splitlines()
    return {
        line.removeprefix("# knowngood drill ").split(" ")[0]: lines[i + 1]
        for i, line in enumerate(lines)
        if line.startswith("# knowngood drill ")
    }


def test_cron_schedule_is_written_idempotent_follows_the_inventory_and_is_removed(tmp_path):
    cron_file = tmp_path / "cron.d" / "knowngood-drills"
    cron = {"drill_schedule_kind": "auto", "drill_schedule_cron_file": str(cron_file)}
    output, recap = schedule(tmp_path, "--check", "--diff", **cron)
    assert recap["changed"] > 0 and not cron_file.exists()  # check mode: planned, not written
    assert "knowngood drill code_rollback" in output  # the diff shows the entries to come

    schedule(tmp_path, **cron)
    jobs = entries(cron_file)
    assert list(jobs) == QUARTERLY + ANNUAL  # the strategy's split by default; cron, no systemd
    lab, log = tmp_path / "lab", tmp_path / "lab" / "log"
    for day, name in enumerate(QUARTERLY, start=2):
        assert jobs[name] == (
            f"0 10 {day} 1,4,7,10 * root KNOWNGOOD_LAB_DIR={lab} /opt/kg drill run {name} "
            f"--lab-dir {lab} --quiet >> {log}/drill-{name}.log 2>&1"
        )
    for day, name in enumerate(ANNUAL, start=16):
        assert jobs[name].startswith(f"0 10 {day} 1 * root KNOWNGOOD_LAB_DIR={lab} ")
    assert log.is_dir()

    _output, recap = schedule(tmp_path, **cron)
    assert recap["changed"] == 0  # a second run changes nothing

    moved = {"knowngood_drill_schedule": {"quarterly": ["code_rollback"], "annual": ANNUAL}}
    _output, recap = schedule(tmp_path, **cron, **moved, drill_schedule_hour=6)
    assert recap["changed"] > 0
    jobs = entries(cron_file)
    assert list(jobs) == ["code_rollback", *ANNUAL]  # the dropped drills lost their entries
    assert jobs["code_rollback"].startswith("0 6 2 1,4,7,10 * root ")

    _output, recap = schedule(tmp_path, **cron, drill_schedule_state="absent")
    assert recap["changed"] > 0 and not cron_file.exists()


@pytest.mark.parametrize(
    "bad",
    [
        {"knowngood_drill_schedule": {"quarterly": ["code_rollback", "nope"], "annual": []}},
        {"drill_schedule_cli": "/opt/kg%s"},  # cron would cut the command at the %
    ],
    ids=["unknown-drill", "percent-in-command"],
)
def test_bad_schedule_is_refused_before_anything_changes(tmp_path, bad):
    cron_file = tmp_path / "knowngood-drills"
    params = {
        "drill_schedule_lab_dir": str(tmp_path / "lab"),
        "drill_schedule_cron_file": str(cron_file),
    }
    argv = [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", "-e", PYTHON]
    argv += ["playbooks/schedule-drills.yml", "-e", json.dumps({**params, **bad})]
    proc = subprocess.run(
        argv, cwd=REPO, env=ansible_env(tmp_path), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0 and "refused before anything changes" in proc.stdout
    assert parse_recap(proc.stdout)["localhost"]["failed"] == 1
    assert not cron_file.exists() and not (tmp_path / "lab").exists()


def test_systemd_units_rendered_into_a_root(tmp_path):
    root = tmp_path / "root"
    units = root / "etc" / "systemd" / "system"
    systemd = {"drill_schedule_kind": "systemd", "drill_schedule_systemd_root": str(root)}
    only = {
        "knowngood_drill_schedule": {
            "quarterly": ["table_restore"],
            "annual": ["disaster_recovery"],
        }
    }
    schedule(tmp_path, **systemd, **only)
    assert sorted(p.name for p in units.iterdir()) == [
        "knowngood-drill-disaster_recovery.service",
        "knowngood-drill-disaster_recovery.timer",
        "knowngood-drill-table_restore.service",
        "knowngood-drill-table_restore.timer",
    ]
    lab = tmp_path / "lab"
    service = (units / "knowngood-drill-table_restore.service").read_text()
    assert "Description=knowngood quarterly drill table_restore" in service
    assert "Type=oneshot" in service and f"Environment=KNOWNGOOD_LAB_DIR={lab}" in service
    assert f"ExecStart=/opt/kg drill run table_restore --lab-dir {lab} --quiet" in service
    assert f"StandardOutput=append:{lab}/log/drill-table_restore.log" in service
    calendars = {
        name: timer_line(units / f"knowngood-drill-{name}.timer", "OnCalendar=").split()
        for name in ("table_restore", "disaster_recovery")
    }
    assert calendars == {
        "table_restore": ["*-01,04,07,10-02", "10:00:00"],
        "disaster_recovery": ["*-01-16", "10:00:00"],
    }
    timer = (units / "knowngood-drill-disaster_recovery.timer").read_text()
    assert "Persistent=true" in timer and "WantedBy=timers.target" in timer
    if shutil.which("systemd-analyze"):
        for parts in calendars.values():
            parsed = subprocess.run(
                ["systemd-analyze", "calendar", " ".join(parts)], capture_output=True, text=True
            )
            assert parsed.returncode == 0 and "Next elapse" in parsed.stdout, parsed.stderr

    # (a second run changing nothing is proven on the cron path above: one playbook run less)
    schedule(tmp_path, **systemd, drill_schedule_state="absent")
    assert list(units.iterdir()) == []
