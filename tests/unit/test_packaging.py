"""The collection and the CLI as users get them: the built tarball installed into a fresh path
(every playbook by an FQCN, the dependencies ansible-builder finds), and the CLI's --version,
exit codes, --json, colour and errors without a lab."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from ansible_collections.knowngood.runbooks.plugins.module_utils import audit_chain, audit_record

from knowngood import cli, collection, runner
from knowngood.errors import KnowngoodError

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# ansible-core's pattern for a collection playbook's name (no hyphen, no leading digit).
FQCN_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The built collection tarball, installed with ansible-galaxy into a path of its own."""
    tmp = tmp_path_factory.mktemp("collection")
    galaxy = str(BIN / "ansible-galaxy")
    # As a user runs it: not with our ansible.cfg (`make test` exports ANSIBLE_CONFIG), whose
    # collections path holds the checkout itself, so "already installed" would install nothing.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    build = [galaxy, "collection", "build", "--output-path", str(tmp / "dist")]
    subprocess.run(build, cwd=REPO, check=True, capture_output=True, env=env)
    (tarball,) = (tmp / "dist").glob("knowngood-runbooks-*.tar.gz")
    install = [galaxy, "collection", "install", str(tarball), "-p", str(tmp / "colls")]
    subprocess.run(install, cwd=tmp, check=True, capture_output=True, env=env)
    return tmp / "colls"


def _runbooks() -> dict[str, Path]:
    return {p.stem: p for p in (REPO / "playbooks").glob("*.yml") if not collection.alias_target(p)}


def test_every_playbook_is_reachable_by_fqcn_from_the_installed_collection(installed):
    playbooks = installed / "ansible_collections/knowngood/runbooks/playbooks"
    fqcns = {}
    for name, path in sorted(_runbooks().items()):
        fqcn_name = name.replace("-", "_")
        assert FQCN_NAME.match(fqcn_name), name
        target = playbooks / f"{fqcn_name}.yml"
        assert target.is_file(), f"{name}: no {target.name} in the built collection"
        if fqcn_name != name:  # the alias imports the runbook, which ships beside it
            assert collection.alias_target(target) == path.name
            assert (playbooks / path.name).read_text() == path.read_text()
        fqcns[f"knowngood.runbooks.{fqcn_name}"] = target
    assert len(fqcns) == len(_runbooks()) >= 13
    # ansible-playbook resolves each name in the installed collection, from outside the checkout.
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(installed)}
    env.pop("ANSIBLE_CONFIG", None)
    check = subprocess.run(
        [str(BIN / "ansible-playbook"), "--syntax-check", *fqcns],
        cwd=installed,
        env=env,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    resolved = re.findall(r"^playbook: (\S+)$", check.stdout, re.M)
    assert sorted(resolved) == sorted(str(p) for p in fqcns.values())


def test_ansible_builder_finds_the_collections_dependencies(installed):
    done = subprocess.run(
        [str(BIN / "ansible-builder"), "introspect", str(installed)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    found = yaml.safe_load(done.stdout.split("\n", 1)[1])
    python = " ".join(found["python"])
    for package in ("psycopg", "boto3", "lz4", "zstandard", "cryptography"):
        assert package in python
    assert any(line.startswith("postgresql15 ") for line in found["system"])


def test_requirements_txt_carries_every_runtime_dependency_of_pyproject():
    runtime = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = [
        line for line in (REPO / "requirements.txt").read_text().splitlines() if line[:1].isalpha()
    ]
    for dependency in runtime:
        if not dependency.startswith(("ansible-core", "ansible-runner")):
            assert dependency in lines, f"{dependency} from pyproject.toml not in requirements.txt"


def test_metadata_is_real_and_claims_the_tested_ansible():
    galaxy = yaml.safe_load((REPO / "galaxy.yml").read_text())
    assert "example.invalid" not in (REPO / "galaxy.yml").read_text()
    assert galaxy["license"] == ["GPL-3.0-or-later"]
    assert "GNU GENERAL PUBLIC LICENSE" in (REPO / "LICENSE").read_text()[:200]
    runtime = yaml.safe_load((REPO / "meta/runtime.yml").read_text())
    # pyproject pins the ansible-core the tests run (2.19); the collection claims no older one.
    assert runtime["requires_ansible"] == ">=2.19.0"
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "ansible-core>=2.19,<2.20" in pins


def test_runbook_names_in_every_spelling_find_the_same_playbook():
    real = runner.playbook_path("rollback-code")
    assert real == REPO / "playbooks/rollback-code.yml"
    alias = runner.playbook_path("knowngood.runbooks.rollback_code")
    assert alias == runner.playbook_path("rollback_code") == REPO / "playbooks/rollback_code.yml"
    assert collection.alias_target(alias) == "rollback-code.yml"
    with pytest.raises(KnowngoodError, match="known: .*rollback-code"):
        runner.playbook_path("rollback-everything")


def test_a_collection_outside_the_checkout_is_found_on_the_collections_path(installed, monkeypatch):
    monkeypatch.setattr(collection, "CHECKOUT", Path("/nonexistent"))
    monkeypatch.setenv("ANSIBLE_COLLECTIONS_PATH", str(installed))
    home = collection.root()
    assert home == (installed / "ansible_collections/knowngood/runbooks").resolve()
    assert collection.collections_dir(home) == installed.resolve()
    assert collection.playbooks(home)["rollback_code"].parent == home / "playbooks"
    monkeypatch.setenv("ANSIBLE_COLLECTIONS_PATH", str(installed / "empty"))
    monkeypatch.setattr(collection, "search_paths", lambda: [installed / "empty"])
    with pytest.raises(KnowngoodError, match="collection is not installed"):
        collection.root()


def _cli(*argv: str, env: dict | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "knowngood"), *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def test_version_and_exit_codes_are_documented():
    from importlib import metadata

    done = _cli("--version")
    assert done.returncode == 0
    assert done.stdout.startswith(f"knowngood {metadata.version('knowngood')} (runbooks: checkout")
    helptext = _cli("--help").stdout
    for code in ("0  success", "1  knowngood refused", "2  the runbook failed", "3  run: timed"):
        assert code in helptext
    docs = (REPO / "docs/setup.md").read_text()
    assert "Exit codes" in docs and "3  run: timed out" not in docs  # a table, not a copy
    for code in runner.EXIT_CODES.values():
        assert f"| {code} |" in docs


def test_run_without_a_lab_or_inventory_is_one_clear_error(tmp_path):
    done = _cli("--root", str(tmp_path / "no-lab"), "run", "decide", "--check")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("knowngood: no inventory: give -i INVENTORY")
    assert not (tmp_path / "no-lab").exists()


def test_audit_list_and_verify_as_json(tmp_path):
    audit = tmp_path / "audit"
    key = tmp_path / "keys" / "k"
    trail = {"audit_dir": str(audit), "key": str(key), "witness": None}
    audit_chain.open_record(trail, {"run_id": "kg-a", "started_at": "t0", "playbook": "/p/a.yml"})
    audit_chain.close_record(
        trail,
        {"run_id": "kg-a", "status": "successful", "finished_at": "t1", "playbook": "/p/a.yml"},
    )
    env = {"KNOWNGOOD_AUDIT_KEY": str(key)}
    args = ("--root", str(tmp_path / "no-lab"), "audit", "--audit-dir", str(audit))
    listed = _cli(*args, "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    doc = json.loads(listed.stdout)
    assert doc["runs"] == [
        {"at": "t1", "status": "successful", "run_id": "kg-a", "playbook": "a.yml"}
    ]
    assert doc["runs"] == audit_record.runs(audit_chain.entries(str(audit)))
    verified = _cli(*args, "verify", "--json", env=env)
    assert verified.returncode == 0, verified.stderr
    doc = json.loads(verified.stdout)
    assert (doc["intact"], doc["entries"], doc["tampered"]) == (True, 2, [])
    record = audit / "kg-a.json"
    record.write_text(record.read_text().replace("successful", "failed"))
    tampered = _cli(*args, "verify", "--json", env=env)
    doc = json.loads(tampered.stdout)
    assert tampered.returncode == 3 == doc["exit_code"]
    assert doc["intact"] is False and doc["tampered"]


def test_drill_report_as_json(tmp_path):
    done = _cli("drill", "report", "--json", "--lab-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"lab_dir": str(tmp_path), "drills": {}}


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_colour_only_on_a_terminal_and_never_with_no_color(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert runner.use_color(_Stream(True)) is True
    assert runner.use_color(_Stream(False)) is False
    monkeypatch.setattr(sys, "stdout", _Stream(False))
    assert runner.color_env() == {"ANSIBLE_NOCOLOR": "1"}
    monkeypatch.setattr(sys, "stdout", _Stream(True))
    assert runner.color_env() == {"ANSIBLE_FORCE_COLOR": "1"}
    monkeypatch.setenv("NO_COLOR", "1")
    assert runner.use_color(_Stream(True)) is False
    assert runner.color_env() == {"ANSIBLE_NOCOLOR": "1"}


def test_the_cli_parser_takes_json_where_documented():
    parser = cli.build_parser()
    assert parser.parse_args(["run", "decide", "--json"]).json
    assert parser.parse_args(["audit", "list", "--json"]).json
    assert parser.parse_args(["audit", "verify", "--json"]).json
    assert parser.parse_args(["drill", "report", "--json"]).json
