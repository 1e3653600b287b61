"""The approval gate's AWX mode, against a local HTTP server answering AWX's API shapes.

AWX cannot run on these machines; like moto for AWS, the server below serves the documented
JSON of /api/v2/workflow_jobs, their workflow_nodes, workflow_approvals and teams, including
pagination, over real HTTP with a bearer token, and the gate's client talks to it unchanged.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from knowngood.modutils import module_utils

awx = module_utils("awx_approval")
TOKEN = "awx-token-canary"
TEAMS = {"technical-directors": ["carla"], "infrastructure-leads": ["ivan"], "team-leads": ["tess"]}
ROLE_TEAMS = {"cto": "technical-directors", "infra_lead": "infrastructure-leads"}


def world(approvals, launcher="oscar"):
    """AWX state: workflow job 41 launched by `launcher`, one approval node per entry."""
    routes = {
        "/api/v2/workflow_jobs/41/": {
            "id": 41,
            "summary_fields": {"created_by": {"username": launcher}},
        },
        "/api/v2/jobs/77/": {
            "id": 77,
            "status": "running",
            "summary_fields": {"source_workflow_job": {"id": 41}},
        },
        "/api/v2/jobs/76/": {
            "id": 76,
            "status": "successful",
            "summary_fields": {"source_workflow_job": {"id": 41}},
        },
    }
    nodes = [{"identifier": "run", "summary_fields": {"job": {"id": 900, "type": "job"}}}]
    for index, (status, actor) in enumerate(approvals):
        nodes.append(
            {
                "identifier": f"approve-{index}",
                "summary_fields": {"job": {"id": 500 + index, "type": "workflow_approval"}},
            }
        )
        fields = {"approved_or_denied_by": {"id": 7, "username": actor}} if actor else {}
        routes[f"/api/v2/workflow_approvals/{500 + index}/"] = {
            "id": 500 + index,
            "status": status,
            "summary_fields": fields,
        }
    # two pages, as AWX paginates
    routes["/api/v2/workflow_jobs/41/workflow_nodes/"] = {
        "results": nodes[:1],
        "next": "https://awx.example/api/v2/workflow_jobs/41/workflow_nodes/?page=2",
    }
    routes["/api/v2/workflow_jobs/41/workflow_nodes/?page=2"] = {"results": nodes[1:], "next": None}
    for number, (team, members) in enumerate(TEAMS.items()):
        routes[f"/api/v2/teams/?name={team}"] = {"results": [{"id": number, "name": team}]}
        routes[f"/api/v2/teams/{number}/users/"] = {"results": [{"username": m} for m in members]}
    return routes


@pytest.fixture
def api():
    state = {"routes": {}}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self.send_response(401)
                self.end_headers()
                return
            body = state["routes"].get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps(body or {"detail": "Not found."}).encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_port}"
    state["get"] = awx.api_client(state["url"], TOKEN)
    yield state
    server.shutdown()


def judge(api, approvals, launcher="oscar", roles=("cto", "infra_lead")):
    api["routes"] = world(approvals, launcher)
    return awx.judge(api["get"], 77, 41, list(roles), ROLE_TEAMS)


def test_cto_then_infra_lead_by_two_people_passes(api):
    result = judge(api, [("successful", "carla"), ("successful", "ivan")])
    assert result["launcher"] == "oscar"
    assert [(a["role"], a["principal"]) for a in result["approvers"]] == [
        ("cto", "carla"),
        ("infra_lead", "ivan"),
    ]


@pytest.mark.parametrize(
    ("approvals", "launcher", "message"),
    [
        ([("successful", "carla"), ("successful", "ivan")], "carla", "self-approval is refused"),
        ([("successful", "carla"), ("successful", "carla")], "oscar", "approved twice"),
        ([("successful", "ivan"), ("successful", "carla")], "oscar", "is not in team"),
        ([("successful", "carla"), ("failed", "ivan")], "oscar", "is failed, not approved"),
        ([("successful", "carla")], "oscar", "needs 2"),
        (
            [("successful", "tess"), ("successful", "ivan")],
            "oscar",
            "not in team technical-directors",
        ),
    ],
)
def test_missing_wrong_role_denied_or_self_approvals_are_refused(api, approvals, launcher, message):
    with pytest.raises(awx.AwxApprovalError, match=message):
        judge(api, approvals, launcher)


def test_one_person_in_both_teams_cannot_fill_both_roles(api):
    # High severity needs two distinct people even when one person holds both roles.
    TEAMS["infrastructure-leads"].append("carla")
    try:
        with pytest.raises(awx.AwxApprovalError, match="approved twice"):
            judge(api, [("successful", "carla"), ("successful", "carla")])
    finally:
        TEAMS["infrastructure-leads"].remove("carla")


def test_a_wrong_token_is_an_error_not_an_approval(api):
    api["routes"] = world([("successful", "carla"), ("successful", "ivan")])
    bad = awx.api_client(api["url"], "wrong")
    with pytest.raises(Exception, match="401"):
        awx.judge(bad, 77, 41, ["cto", "infra_lead"], ROLE_TEAMS)


def test_approvals_of_a_finished_job_or_another_workflow_cannot_be_replayed(api):
    api["routes"] = world([("successful", "carla"), ("successful", "ivan")])
    with pytest.raises(awx.AwxApprovalError, match="cannot be used"):
        awx.judge(api["get"], 76, 41, ["cto", "infra_lead"], ROLE_TEAMS)  # finished job
    api["routes"]["/api/v2/workflow_jobs/40/"] = api["routes"]["/api/v2/workflow_jobs/41/"]
    with pytest.raises(awx.AwxApprovalError, match="cannot be used"):
        awx.judge(api["get"], 77, 40, ["cto", "infra_lead"], ROLE_TEAMS)  # not its workflow


def _gate(api, tmp_path, extra, inventory_awx=None):
    """Run the approval_gate role as a job inside AWX would: AWX's variables as extra vars."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    playbook = tmp_path / "gate.yml"
    playbook.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.import_role:\n        name: knowngood.runbooks.approval_gate\n"
    )
    from knowngood.lab import governance

    os.chmod(tmp_path, 0o755)
    (tmp_path / "gov").mkdir(exist_ok=True)
    signers = tmp_path / "gov" / "allowed_signers"
    signers.write_text("")
    trust = governance.policy_document(signers, tmp_path / "state", required=True)
    trust["awx"] = {"host": api["url"], "role_teams": ROLE_TEAMS}
    governance.write_policy(tmp_path / "gov" / "policy.yml", trust)
    group_vars = {"ansible_python_interpreter": sys.executable}
    if inventory_awx:
        group_vars["knowngood_awx"] = inventory_awx
    inventory = tmp_path / "inventory.json"
    inventory.write_text(
        json.dumps(
            {"all": {"hosts": {"localhost": {"ansible_connection": "local"}}, "vars": group_vars}}
        )
    )
    env = dict(os.environ, CONTROLLER_OAUTH_TOKEN=TOKEN, ANSIBLE_CONFIG=str(repo / "ansible.cfg"))
    env["KNOWNGOOD_AUDIT_DIR"] = str(tmp_path / "audit")
    env["KNOWNGOOD_POLICY_FILE"] = str(tmp_path / "gov" / "policy.yml")
    awx_vars = {"awx_job_id": 77, "awx_workflow_job_id": 41, "knowngood_severity": "high"}
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory), str(playbook),
         "-e", json.dumps({**awx_vars, **extra})],
        cwd=repo, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_the_gate_role_inside_awx_accepts_the_workflows_approvals(api, tmp_path):
    api["routes"] = world([("successful", "carla"), ("successful", "ivan")])
    run = _gate(api, tmp_path, {})
    assert run.returncode == 0, run.stdout[-2000:]
    assert "approved in AWX by carla as cto, ivan as infra_lead; launched by oscar" in run.stdout
    assert TOKEN not in run.stdout + run.stderr


def test_the_gate_role_inside_awx_refuses_self_approval_and_an_awx_host_from_extra_vars(
    api, tmp_path
):
    api["routes"] = world([("successful", "carla"), ("successful", "ivan")], launcher="ivan")
    run = _gate(api, tmp_path, {})
    assert run.returncode != 0 and "self-approval is refused" in run.stdout, run.stdout[-2000:]
    api["routes"] = world([("successful", "carla"), ("successful", "ivan")])
    forged = {"knowngood_awx": {"host": api["url"], "role_teams": ROLE_TEAMS}}
    run = _gate(api, tmp_path, forged)
    assert run.returncode != 0 and "cannot be given with -e" in run.stdout, run.stdout[-2000:]
    # The AWX host and the team mapping are the policy's: an inventory cannot replace them.
    evil = {"host": "http://127.0.0.1:9", "role_teams": {"cto": "everyone"}}
    run = _gate(api, tmp_path, {}, inventory_awx=evil)
    assert run.returncode != 0, run.stdout[-2000:]
    assert "approval_gate_awx.host (knowngood_awx.host) differs from the policy's" in run.stdout
    assert "approval_gate_awx.role_teams" in run.stdout
