"""AWX as code: surveys agree with the argument specs, and awx/apply.yml calls awx.awx right.

AWX itself cannot run here. What can be proven: every survey passes the checks AWX's survey
endpoint makes, matches the role option it feeds, and each awx.awx module call apply.yml makes
passes that module's own argument validation (the calls go to stand-in modules built from
the real modules' documented argument specs, validated by AnsibleModule itself).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from knowngood import awx

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
AWX_MODULES = [
    "organization",
    "team",
    "project",
    "execution_environment",
    "notification_template",
    "job_template",
    "workflow_job_template",
    "role",
    "schedule",
]


def test_committed_surveys_agree_with_argument_specs_and_playbooks():
    assert awx.check(awx.load_catalog()) == []


def _scratch_repo(tmp_path: Path) -> Path:
    for part in ("roles", "playbooks", "awx"):
        shutil.copytree(REPO / part, tmp_path / part)
    return tmp_path


def test_drift_between_survey_and_argument_spec_is_caught(tmp_path):
    repo = _scratch_repo(tmp_path)
    spec_file = repo / "roles/db_preflight/meta/argument_specs.yml"
    specs = yaml.safe_load(spec_file.read_text())
    specs["argument_specs"]["main"]["options"]["db_preflight_strategy"]["choices"].append("clone")
    spec_file.write_text(yaml.safe_dump(specs))
    errors = awx.check(awx.load_catalog(repo / "awx/catalog.yml"), repo, repo / "awx/surveys")
    assert any("rollback-database.json differs" in e for e in errors), errors
    assert any("workflows.json is stale" in e for e in errors), errors


def test_survey_input_nothing_reads_is_caught(tmp_path):
    repo = _scratch_repo(tmp_path)
    playbook = repo / "playbooks/rollback-database.yml"
    playbook.write_text(playbook.read_text().replace("{{ confirm | default('') }}", "''"))
    errors = awx.check(awx.load_catalog(repo / "awx/catalog.yml"), repo, repo / "awx/surveys")
    assert any("db_preflight_confirm from confirm" in e for e in errors), errors


def test_playbook_without_job_template_and_unknown_option_are_caught(tmp_path):
    repo = _scratch_repo(tmp_path)
    (repo / "playbooks/new-runbook.yml").write_text("---\n")
    catalog = awx.load_catalog(repo / "awx/catalog.yml")
    catalog["job_templates"][1]["survey"][0]["from"] = "code_identify.code_identify_nope"
    errors = awx.check(catalog, repo, repo / "awx/surveys")
    assert "playbooks/new-runbook.yml has no job template in awx/catalog.yml" in errors
    assert any("does not declare" in e for e in errors), errors


def test_surveys_pass_awx_survey_validation_and_type_from_spec():
    rendered = awx.render(awx.load_catalog())
    for name, spec in rendered.items():
        assert awx.validate_survey(spec) == [], name
    questions = {q["variable"]: q for q in rendered["rollback-database"]["spec"]}
    assert questions["db_strategy"]["type"] == "multiplechoice"
    assert questions["db_strategy"]["choices"] == ["pitr", "snapshot", "table"]
    assert questions["target_immediate"]["choices"] == ["true", "false"]
    assert questions["target_immediate"]["default"] == "false"
    backup = {q["variable"]: q for q in rendered["verify-backup"]["spec"]}
    assert backup["verify_tiers"]["type"] == "multiselect"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda q: q.update(type="checkbox"), "is not one of"),
        (lambda q: q.update(default="clone"), "default must be one of the choices"),
        (lambda q: q.update(default="pitr\ntable"), "only have one default"),
        (lambda q: q.update(min="1"), "min must be an integer"),
        (lambda q: q.pop("required"), "'required' missing"),
        (lambda q: q.update(variable="db-strategy"), "not a valid Ansible variable name"),
        (lambda q: q.update(default="$encrypted$abc"), "$encrypted$ is reserved"),
    ],
)
def test_survey_validation_refuses_what_awx_refuses(mutate, message):
    spec = copy.deepcopy(awx.render(awx.load_catalog())["rollback-database"])
    mutate(spec["spec"][0])
    assert any(message in e for e in awx.validate_survey(spec)), awx.validate_survey(spec)
    spec = copy.deepcopy(awx.render(awx.load_catalog())["rollback-database"])
    spec["spec"].append(dict(spec["spec"][0]))
    assert any("duplicated" in e for e in awx.validate_survey(spec))


def _argspec(options: dict) -> dict:
    """The documented options of a module as an AnsibleModule argument_spec."""
    spec = {}
    for name, doc in options.items():
        entry = {"type": doc.get("type", "str")}
        for key in ("choices", "elements", "required", "aliases", "no_log"):
            if key in doc:
                entry[key] = doc[key]
        if doc.get("suboptions"):
            entry["options"] = _argspec(doc["suboptions"])
        spec[name] = entry
    return spec


STAND_IN = """#!/usr/bin/python
import json, os
from ansible.module_utils.basic import AnsibleModule

SPEC = json.loads(%r)


def main():
    module = AnsibleModule(argument_spec=SPEC, supports_check_mode=True)
    with open(os.environ["AWX_CALLS"], "a") as handle:
        handle.write(json.dumps({"module": %r, "params": module.params}, default=str) + "\\n")
    module.exit_json(changed=True)


main()
"""


def test_apply_playbook_calls_pass_awx_modules_argument_validation(tmp_path):
    names = [f"awx.awx.{m}" for m in AWX_MODULES]
    doc = subprocess.run(
        [str(BIN / "ansible-doc"), "-j", *names], capture_output=True, text=True, check=True
    )
    docs = json.loads(doc.stdout)
    modules = tmp_path / "collections/ansible_collections/awx/awx/plugins/modules"
    modules.mkdir(parents=True)
    (modules.parents[1] / "galaxy.yml").write_text(
        "namespace: awx\nname: awx\nversion: 99.0.0\nreadme: README.md\nauthors: [test]\n"
    )
    for module in AWX_MODULES:
        spec = _argspec(docs[f"awx.awx.{module}"]["doc"]["options"])
        (modules / f"{module}.py").write_text(STAND_IN % (json.dumps(spec), module))
    calls = tmp_path / "calls.jsonl"
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=f"{tmp_path / 'collections'}:{REPO / 'collections'}",
        AWX_CALLS=str(calls),
        ANSIBLE_NOCOLOR="1",
    )
    secrets = {"awx_slack_token": "xoxb-canary-77", "awx_smtp_password": "smtp-canary-77"}
    run = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "awx/apply.yml",
            "-i",
            "localhost,",
            "-e",
            json.dumps({"ansible_python_interpreter": sys.executable, **secrets}),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "canary-77" not in run.stdout + run.stderr
    recorded = [json.loads(line) for line in calls.read_text().splitlines()]
    by_module: dict[str, list[dict]] = {}
    for call in recorded:
        by_module.setdefault(call["module"], []).append(call["params"])
    catalog = awx.load_catalog()
    assert len(by_module["job_template"]) == len(catalog["job_templates"])
    destructive = [t for t in catalog["job_templates"] if t.get("destructive")]
    flows = by_module["workflow_job_template"]
    assert len(flows) == len(destructive) * len(catalog["severities"])
    high = next(f for f in flows if f["name"] == "rollback-database (high)")
    approvals = [
        n["unified_job_template"]["name"]
        for n in high["workflow_nodes"]
        if n["unified_job_template"]["type"] == "workflow_approval"
    ]
    assert approvals == [
        "Approval by technical-directors (cto)",
        "Approval by infrastructure-leads (infra_lead)",
    ]
    assert high["extra_vars"]["knowngood_severity"] == "high"
    surveyed = {j["name"]: j for j in by_module["job_template"]}
    assert surveyed["rollback-database"]["survey_spec"] == awx.render(catalog)["rollback-database"]
    approvers = {
        (r["team"], r["workflows"][0]) for r in by_module["role"] if r["role"] == "approval"
    }
    assert ("infrastructure-leads", "rollback-database (high)") in approvers
    assert ("infrastructure-leads", "rollback-database (medium)") not in approvers
    oncall = [r for r in by_module["role"] if r["team"] == "sre-oncall" and r["job_templates"]]
    assert not {t["name"] for t in destructive} & set(oncall[0]["job_templates"])
    assert len(by_module["schedule"]) == len(catalog["schedules"])


def test_execution_environment_build_context_is_produced(tmp_path):
    """`ansible-builder create` really writes the context AWX's image is built from."""
    shutil.copy(REPO / "execution-environment.yml", tmp_path)
    shutil.copy(REPO / "requirements.txt", tmp_path)
    shutil.copy(REPO / "bindep.txt", tmp_path)
    subprocess.run(
        [
            str(BIN / "ansible-galaxy"),
            "collection",
            "build",
            "--output-path",
            str(tmp_path / "dist"),
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    create = subprocess.run(
        [
            str(BIN / "ansible-builder"),
            "create",
            "-f",
            "execution-environment.yml",
            "-c",
            "context",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert create.returncode == 0, create.stdout + create.stderr
    context = tmp_path / "context"
    build = next(p for p in (context / "Containerfile", context / "Dockerfile") if p.is_file())
    text = build.read_text()
    assert "ansible-galaxy collection install /tmp/knowngood-collection/" in text
    assert "pgdg-redhat-repo" in text
    assert list((context / "_build/collection").glob("knowngood-runbooks-*.tar.gz"))
    requirements = (context / "_build/requirements.txt").read_text()
    runtime = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dependency in runtime:
        if not dependency.startswith(("ansible-core", "ansible-runner")):
            assert dependency in requirements, f"{dependency} from pyproject.toml not in the EE"
    assert "postgresql15 [platform:rpm]" in (context / "_build/bindep.txt").read_text()
