"""The collection and the CLI as users get them, against the lab: the built tarball installed
into a fresh path runs a rollback by FQCN, and the CLI installed from its wheel into a fresh
venv (outside the checkout) finds that collection's runbooks and rolls back with them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import psycopg
import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils import audit_chain
from conftest import BIN, REPO, ansible_env

pytestmark = pytest.mark.lab

REASON = {"rollback_reason": "error rate above 30%", "ticket": "INC-17"}


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    """The collection tarball installed with ansible-galaxy, and the CLI's wheel in a new venv."""
    tmp = tmp_path_factory.mktemp("dist")
    galaxy = str(BIN / "ansible-galaxy")
    # As a user runs it: not with our ansible.cfg (`make test` exports ANSIBLE_CONFIG), whose
    # collections path holds the checkout itself, so "already installed" would install nothing.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    subprocess.run(
        [galaxy, "collection", "build", "--output-path", str(tmp / "dist")],
        cwd=REPO,
        check=True,
        capture_output=True,
        env=env,
    )
    (tarball,) = (tmp / "dist").glob("knowngood-runbooks-*.tar.gz")
    subprocess.run(
        [galaxy, "collection", "install", str(tarball), "-p", str(tmp / "colls")],
        cwd=tmp,
        check=True,
        capture_output=True,
        env=env,
    )
    subprocess.run(
        [str(BIN / "pip"), "wheel", ".", "--no-deps", "-w", str(tmp)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp.glob("knowngood-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # The dependencies (ansible-core, ansible-runner, psycopg, ...) come from the checkout's venv
    # through a .pth line (installing them again from the index takes minutes); the .pth files
    # there (the editable knowngood) are not processed, so `knowngood` is the wheel's alone.
    (site,) = (venv / "lib").glob("python3*/site-packages")
    (site / "checkout-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [str(venv / "bin/pip"), "install", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    return {"tmp": tmp, "colls": tmp / "colls", "venv": venv, "wheel": wheel}


def _user_env(lab, dist) -> dict[str, str]:
    """A user's shell outside the checkout: no ansible.cfg of ours, the installed collection."""
    env = ansible_env(lab.root)
    env.pop("ANSIBLE_CONFIG")
    env["ANSIBLE_COLLECTIONS_PATH"] = str(dist["colls"])
    return env


def _user_run(dist, env, *argv: str) -> subprocess.CompletedProcess:
    """argv run from outside the checkout, as a user's shell would."""
    return subprocess.run(
        list(argv), cwd=dist["tmp"], env=env, capture_output=True, text=True, timeout=600
    )


def _schema(lab) -> list[str]:
    with psycopg.connect(lab.status["postgres"]["primary_dsn"]) as conn:
        query = "SELECT revision FROM knowngood_schema_migrations ORDER BY 1"
        return [r[0] for r in conn.execute(query)]


def _statuses(lab) -> dict[str, str]:
    return {e["release_id"]: e["status"] for e in lab.ledger()}


def test_installed_collection_rolls_back_by_fqcn(lab, dist):
    lab.seed("v1", "v2")
    assert lab.live_releases() == {"v2"} and _schema(lab) == ["0001", "0002"]
    env = _user_env(lab, dist)
    env["ANSIBLE_CALLBACKS_ENABLED"] = "knowngood.runbooks.audit"  # as docs/setup.md says
    env["KNOWNGOOD_AUDIT_DIR"] = str(dist["tmp"] / "audit-fqcn")
    fqcn = "knowngood.runbooks.rollback_code"
    run = _user_run(
        dist,
        env,
        str(BIN / "ansible-playbook"),
        "-i",
        lab.inventory,
        fqcn,
        "-e",
        json.dumps(REASON),
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert lab.live_releases() == {"v1"}
    assert set(lab.serving()) >= {"v1"}
    assert _schema(lab) == ["0001"]  # the down migration ran before the switch
    assert _statuses(lab)["v2"] == "rolled-back"
    # The audit record names the installed collection's playbook, not the checkout's.
    entries = audit_chain.entries(str(dist["tmp"] / "audit-fqcn"))
    (closed,) = [e for e in entries if e.get("kind", "record") == "record"]
    assert closed["status"] == "successful"
    playbook = closed["playbook"]
    colls = str(dist["colls"].resolve())
    assert playbook.startswith(colls) and playbook.endswith("playbooks/rollback_code.yml")


def test_wheel_cli_outside_the_checkout_runs_the_installed_collections_runbook(lab, dist):
    knowngood = str(dist["venv"] / "bin/knowngood")
    env = _user_env(lab, dist)
    python = str(dist["venv"] / "bin/python")
    where = _user_run(dist, env, python, "-c", "import knowngood; print(knowngood.__file__)")
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(str(dist["venv"]))  # the wheel's package, not src/
    version = _user_run(dist, env, knowngood, "--version")
    home = (dist["colls"] / "ansible_collections/knowngood/runbooks").resolve()
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"knowngood 0.1.0 (runbooks: collection {home})"

    lab.seed("v1", "v2")
    root = ["--root", str(lab.root)]
    # The plan, not a terminal: no colour codes in what a pipe or a log gets.
    plan = _user_run(
        dist, env, knowngood, *root, "run", "rollback-code", "--check", "-e", json.dumps(REASON)
    )
    assert plan.returncode == 0, (plan.stdout + plan.stderr)[-3000:]
    assert "-> v1" in plan.stdout and "\x1b[" not in plan.stdout + plan.stderr
    assert lab.live_releases() == {"v2"}

    done = _user_run(
        dist, env, knowngood, *root, "run", "rollback-code", "--json", "-e", json.dumps(REASON)
    )
    result = json.loads(done.stdout)  # --json: nothing but the document on stdout
    assert done.returncode == 0 == result["exit_code"], done.stderr[-3000:]
    assert result["status"] == "successful"
    assert result["record"]["playbook"] == str(home / "playbooks/rollback-code.yml")
    assert lab.live_releases() == {"v1"}
    assert _schema(lab) == ["0001"]
    rolled = [e for e in lab.ledger() if e["status"] == "rolled-back"][-1]
    assert (rolled["release_id"], rolled["ticket"]) == ("v2", "INC-17")
    listed = _user_run(dist, env, knowngood, *root, "audit", "list", "--json")
    runs = json.loads(listed.stdout)["runs"]
    assert runs[-1]["run_id"] == result["run_id"] and runs[-1]["status"] == "successful"

    # Not in a checkout and no collection on the path: one clear line, no traceback.
    env["ANSIBLE_COLLECTIONS_PATH"] = str(dist["tmp"] / "nowhere")
    env["HOME"] = str(dist["tmp"])  # no ~/.ansible/collections either
    missing = _user_run(dist, env, knowngood, *root, "run", "rollback-code", "--check")
    assert missing.returncode == 1
    assert missing.stderr.startswith(
        "knowngood: the knowngood.runbooks collection is not installed"
    )
