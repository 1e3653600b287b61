# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The approval gate inside AWX: judge a workflow's approval nodes through AWX's API.

AWX grants approval per workflow: anyone in a team holding the workflow's approval role may
approve any of its nodes, and nothing stops the launcher approving their own request. The
workflows knowngood defines (awx/workflows.json) chain one approval node per required role, in
order, and pass the roles to the job as knowngood_awx_approval_roles. This checks, from inside
the job, that node i was approved by a member of the team holding role i, that every approver
is a different person, and that none of them launched the workflow.
"""

import json

from ansible.module_utils.six.moves.urllib.parse import quote
from ansible.module_utils.urls import open_url


class AwxApprovalError(Exception):
    """Approvals are missing or invalid; the message says which and why."""


def api_client(host, token, timeout=10, validate_certs=True):
    """GET <host>/api/v2/<path> as JSON, authenticated with an OAuth2 token."""
    base = host.rstrip("/")

    def get(path):
        response = open_url(
            base + path,
            headers={"Authorization": "Bearer " + token, "Accept": "application/json"},
            timeout=timeout,
            validate_certs=validate_certs,
        )
        return json.loads(response.read())

    return get


def _all(get, path):
    out = []
    while path:
        page = get(path)
        out.extend(page.get("results") or [])
        following = page.get("next")
        path = following[following.index("/api/") :] if following else None
    return out


def team_members(get, team):
    teams = _all(get, "/api/v2/teams/?name=%s" % quote(team))
    if len(teams) != 1:
        raise AwxApprovalError("AWX has %d teams named %r, expected one" % (len(teams), team))
    return set(u["username"] for u in _all(get, "/api/v2/teams/%d/users/" % teams[0]["id"]))


def judge(get, job_id, workflow_job_id, roles, role_teams):
    """The approvers, one per role in order; AwxApprovalError when any rule is broken.

    The approvals count only for the job asking: it must be running now, spawned by that very
    workflow job (an old approved workflow cannot be replayed from a jump host)."""
    job = get("/api/v2/jobs/%d/" % int(job_id))
    source = ((job.get("summary_fields") or {}).get("source_workflow_job") or {}).get("id")
    if job.get("status") != "running" or source != int(workflow_job_id):
        raise AwxApprovalError(
            "AWX job %s is %s and was spawned by workflow job %s, not a running job of workflow "
            "job %s: its approvals cannot be used"
            % (job_id, job.get("status"), source, workflow_job_id)
        )
    workflow = get("/api/v2/workflow_jobs/%d/" % int(workflow_job_id))
    launcher = ((workflow.get("summary_fields") or {}).get("created_by") or {}).get("username")
    if not launcher:
        raise AwxApprovalError("workflow job %s names no launcher" % workflow_job_id)
    nodes = _all(get, "/api/v2/workflow_jobs/%d/workflow_nodes/" % int(workflow_job_id))
    approvals = []
    for node in nodes:
        job = (node.get("summary_fields") or {}).get("job") or {}
        if job.get("type") == "workflow_approval":
            approvals.append((node.get("identifier") or "", job))
    approvals.sort(key=lambda item: item[0])
    if len(approvals) != len(roles):
        raise AwxApprovalError(
            "the workflow ran %d approval node(s), severity needs %d (%s)"
            % (len(approvals), len(roles), ", ".join(roles))
        )
    approvers, seen = [], set()
    for (identifier, job), role in zip(approvals, roles):  # noqa: B905 - lengths checked above; targets may run Python 3.8
        detail = get("/api/v2/workflow_approvals/%d/" % int(job["id"]))
        actor = ((detail.get("summary_fields") or {}).get("approved_or_denied_by") or {}).get(
            "username"
        )
        if detail.get("status") != "successful" or not actor:
            raise AwxApprovalError(
                "approval node %s (%s) is %s, not approved"
                % (identifier, role, detail.get("status"))
            )
        if actor == launcher:
            raise AwxApprovalError(
                "%s approved the rollback they launched (node %s): self-approval is refused"
                % (actor, identifier)
            )
        if actor in seen:
            raise AwxApprovalError(
                "%s approved twice; %s needs distinct people" % (actor, " and ".join(roles))
            )
        team = role_teams.get(role)
        if not team:
            raise AwxApprovalError("no AWX team is mapped to role %s" % role)
        if actor not in team_members(get, team):
            raise AwxApprovalError(
                "%s approved node %s as %s but is not in team %s" % (actor, identifier, role, team)
            )
        seen.add(actor)
        approvers.append({"role": role, "principal": actor, "node": identifier, "team": team})
    return {"launcher": launcher, "approvers": approvers}
