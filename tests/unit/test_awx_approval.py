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
    return awx.judge(api["get"], 41, list(roles), ROLE_TEAMS)


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
        awx.judge(bad, 41, ["cto", "infra_lead"], ROLE_TEAMS)
