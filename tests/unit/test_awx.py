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
    "credential_type",
    "credential",
    "inventory",
    "inventory_source",
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
# Stand-in for awx.awx.%s: its action plugin below does the work, in the controller.
"""

# Each stand-in validates its arguments against the real module's documented spec, with the
# validator AnsibleModule uses (unsupported parameters, types, choices, required, suboptions),
# and records the call. An action plugin, not a module run per call: the playbook makes about
# 200 calls, and a Python start-up for each was 43 s of make test.
STAND_IN_ACTION = """
import json, os
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase

SPEC = json.loads(%r)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        checked = ArgumentSpecValidator(SPEC).validate(dict(self._task.args))
        if checked.error_messages:
            return {**result, "failed": True, "msg": "; ".join(checked.error_messages)}
        with open(os.environ["AWX_CALLS"], "a") as handle:
            call = {"module": %r, "params": checked.validated_parameters}
            handle.write(json.dumps(call, default=str) + "\\n")
        return {**result, "changed": True}
"""


def test_apply_playbook_calls_pass_awx_modules_argument_validation(tmp_path):
    names = [f"awx.awx.{m}" for m in AWX_MODULES]
    doc = subprocess.run(
        [str(BIN / "ansible-doc"), "-j", *names], capture_output=True, text=True, check=True
    )
    docs = json.loads(doc.stdout)
    modules = tmp_path / "collections/ansible_collections/awx/awx/plugins/modules"
    modules.mkdir(parents=True)
    actions = modules.parent / "action"
    actions.mkdir()
    (modules.parents[1] / "galaxy.yml").write_text(
        "namespace: awx\nname: awx\nversion: 99.0.0\nreadme: README.md\nauthors: [test]\n"
    )
    for module in AWX_MODULES:
        spec = _argspec(docs[f"awx.awx.{module}"]["doc"]["options"])
        (modules / f"{module}.py").write_text(STAND_IN % module)
        (actions / f"{module}.py").write_text(STAND_IN_ACTION % (json.dumps(spec), module))
    calls = tmp_path / "calls.jsonl"
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=f"{tmp_path / 'collections'}:{REPO / 'collections'}",
        AWX_CALLS=str(calls),
        ANSIBLE_NOCOLOR="1",
    )
    secrets = {"awx_slack_token": "xoxb-canary-77", "awx_smtp_password": "smtp-canary-77"}
    catalog = awx.load_catalog()
    secrets["awx_credential_inputs"] = {
        c["name"]: {"token": f"{c['name']}-canary-77"} for c in catalog["credentials_as_code"]
    }
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

    # Drills run on staging with staging's credentials; everything else on production.
    for call in by_module["job_template"]:
        if call["name"].startswith("drill-"):
            assert call["inventory"] == "staging", call["name"]
            assert call["playbook"].startswith("molecule/")
            assert not [c for c in call["credentials"] if "production" in c], call["name"]
        else:
            assert call["inventory"] == "production", call["name"]
            assert "production-ssh" in call["credentials"]
        assert "knowngood-audit" in call["credentials"], call["name"]
    assert [i["name"] for i in by_module["inventory"]] == ["staging"]
    source = by_module["inventory_source"][0]
    assert (source["source"], source["source_path"]) == ("scm", "inventories/staging/hosts.yml")
    # The credential types reach AWX with their injector templates untouched (AWX renders them).
    types = {t["name"]: t for t in by_module["credential_type"]}
    assert types["knowngood controller token"]["injectors"] == {
        "env": {"CONTROLLER_OAUTH_TOKEN": "{{ token }}"}
    }
    audit_type = types["knowngood audit"]
    assert (
        audit_type["injectors"]["env"]["KNOWNGOOD_AUDIT_KEY"] == "{{ tower.filename.signing_key }}"
    )
    assert {c["name"]: c["credential_type"] for c in by_module["credential"]} == {
        c["name"]: c["credential_type"] for c in catalog["credentials_as_code"]
    }
    assert by_module["credential"][0]["inputs"] == {"token": "knowngood-controller-canary-77"}


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


def test_no_drill_template_names_a_production_inventory_or_credential(tmp_path):
    catalog = awx.load_catalog()
    assert awx.check_drills(catalog) == []
    drills = [t for t in catalog["job_templates"] if awx.is_drill(t)]
    assert len(drills) == 6 and all(t["name"].startswith("drill-") for t in drills)
    staging = REPO / catalog["drill_inventory"]["source_path"]
    production = awx._inventory_hosts(REPO / "inventories/example/hosts.yml")
    assert awx._inventory_hosts(staging) and not awx._inventory_hosts(staging) & production

    named = copy.deepcopy(catalog)
    next(t for t in named["job_templates"] if awx.is_drill(t))["inventory"] = "production"
    assert any("a drill runs on staging, not on production" in e for e in awx.check_drills(named))
    same = copy.deepcopy(catalog)
    same["drill_inventory"]["name"] = "production"
    assert any("is no staging inventory" in e for e in awx.check_drills(same))
    scheduled = copy.deepcopy(catalog)
    scheduled["schedules"].append(
        {"name": "dr", "unified_job_template": "drill-disaster-recovery", "rrule": "x"}
    )
    errors = awx.check_drills(scheduled)
    assert any("breaks the lab itself and refuses staging" in e for e in errors), errors
    creds = copy.deepcopy(catalog)
    creds["drill_credentials"][0] = "production-ssh"
    assert any("production credential" in e for e in awx.check_drills(creds))
    repo = _scratch_repo(tmp_path)
    (repo / "inventories").mkdir()
    shutil.copytree(REPO / "inventories/example", repo / "inventories/example")
    shutil.copytree(REPO / "inventories/staging", repo / "inventories/staging")
    hosts = repo / "inventories/staging/hosts.yml"
    hosts.write_text(hosts.read_text().replace("db-01.staging", "db-01.prod"))
    assert any("names production hosts" in e for e in awx.check_drills(catalog, repo))


def test_credential_type_injectors_use_only_declared_inputs_and_feed_the_code():
    catalog = awx.load_catalog()
    assert awx.check_credential_types(catalog) == []
    types = {t["name"]: t for t in catalog["credential_types"]}
    for ctype in types.values():  # every secret AWX stores is marked secret
        for field in ctype["inputs"]["fields"]:
            if field["id"] in ("token", "signing_key", "encryption_key", "secret_access_key"):
                assert field.get("secret") is True, (ctype["name"], field["id"])

    def broken(name, mutate, message):
        mutated = copy.deepcopy(catalog)
        mutate(next(t for t in mutated["credential_types"] if t["name"] == name))
        errors = awx.check_credential_types(mutated)
        assert any(message in e for e in errors), errors

    broken(
        "knowngood controller token",
        lambda t: t["injectors"]["env"].update(CONTROLLER_OAUTH_TOKEN="{{ tokn }}"),
        "uses tokn, which is no input it declares",
    )
    broken(
        "knowngood audit",
        lambda t: t["injectors"]["env"].update(KNOWNGOOD_AUDIT_KEY="{{ tower.filename.key }}"),
        "names file tower.filename.key, not declared",
    )
    broken(
        "knowngood backup keys",
        lambda t: t["inputs"]["fields"][0].pop("secret"),
        "input encryption_key holds a secret: mark it secret",
    )
    broken(
        "knowngood audit",
        lambda t: t["injectors"]["env"].update(KNOWNGOOD_AUDIT_WITNESS="{{ witness_url }}"),
        "env KNOWNGOOD_AUDIT_WITNESS is read by nothing in the code",
    )
    broken(
        "knowngood backup keys",
        lambda t: t["injectors"]["extra_vars"].update(backup_key="{{ signing_key }}"),
        "extra var backup_key is read by no role or playbook",
    )


def _render_injectors(ctype: dict, inputs: dict, private: Path) -> tuple[dict, dict]:
    """What AWX does at launch: files written, then env and extra vars rendered with the inputs."""
    import jinja2

    files = {}
    for key, template in (ctype["injectors"].get("file") or {}).items():
        name = key.partition(".")[2]
        path = private / f"cred-{name}"
        path.write_text(jinja2.Template(template).render(**inputs))
        path.chmod(0o600)
        files[name] = str(path)
    context = {**inputs, "tower": {"filename": files}}
    env = {
        k: jinja2.Template(v).render(**context)
        for k, v in ctype["injectors"].get("env", {}).items()
    }
    extra = {
        k: jinja2.Template(v).render(**context)
        for k, v in (ctype["injectors"].get("extra_vars") or {}).items()
    }
    return env, extra


def test_the_audit_credential_as_awx_injects_it_is_what_an_awx_job_needs(tmp_path):
    from knowngood.modutils import module_utils

    chain = module_utils("audit_chain")
    types = {t["name"]: t for t in awx.load_catalog()["credential_types"]}
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True
    )
    inputs = {
        "signing_key": (tmp_path / "k").read_text(),
        "witness_url": "s3://audit-bucket/awx",
        "witness_endpoint": "",
        "witness_region": "eu-west-1",
        "lock_days": "400",
    }
    env, _ = _render_injectors(types["knowngood audit"], inputs, tmp_path)
    job = {"JOB_ID": "812", "AWX_HOST": "https://awx.example.com", **env}
    trail = chain.resolve_trail(audit_dir=str(tmp_path / "ee"), environ=job)
    witness = trail["witness"]
    assert (witness["bucket"], witness["lock_days"], witness["required"]) == (
        "audit-bucket",
        400,
        True,
    )
    assert witness["trail"] == "awx/awx.example.com/job-812"
    assert Path(trail["key"]).read_text() == inputs["signing_key"]
    # The injected key signs: a line signed with it verifies against the public half.
    (tmp_path / "ee").mkdir()
    line = chain.append(str(tmp_path / "ee"), {"kind": "test"}, trail["key"], None)
    (tmp_path / "pub").write_text((tmp_path / "k.pub").read_text())
    assert chain._verify_sig(chain._body({k: v for k, v in line.items() if k != "sig"}),
                             line["sig"], (tmp_path / "k.pub").read_text())  # fmt: skip
    # Without the credential (no witness, no key) an AWX job refuses.
    with pytest.raises(chain.AuditError, match="a witness .* missing"):
        chain.resolve_trail(environ={"JOB_ID": "812"})
    backup_env, extra = _render_injectors(
        types["knowngood backup keys"], {"encryption_key": "e1", "signing_key": "s1"}, tmp_path
    )
    assert extra == {"knowngood_backup_encryption_key": "e1", "knowngood_backup_signing_key": "s1"}
