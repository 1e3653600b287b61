#!/usr/bin/python
# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: approval_gate
short_description: Refuse a destructive run unless its exact request carries signed approvals
version_added: "0.2.0"
description:
  - Runs on the controller (action plugin). Rebuilds the rollback request from the run itself
    (playbook, inventory, limit and extra variables as ansible-playbook received them),
    compares it with the request file in I(request), and verifies each approval with
    C(ssh-keygen -Y verify) against I(allowed_signers_file) in the C(knowngood-approval)
    namespace.
  - The decision matrix row for the request's severity names the roles required. Each role
    must be held by a distinct signer (High, the CTO and the Infrastructure Lead, two people),
    never the requester, and the request must not have expired.
  - Break-glass; without valid approvals the run proceeds only with I(break_glass_reason) of at
    least 10 characters. The result says so and leaves a post-hoc approval open. The request to
    sign afterwards is written to I(audit_dir)/requests/<request_id>.json.
  - When I(required) is false and no request is given, the gate passes and records that no
    approval was required. Extra variables cannot lower I(required); setting
    C(knowngood_approval_required=false) with -e is refused.
  - In check mode the gate reports what it would decide and never fails.
options:
  request:
    description:
      - Path to the request file (C(knowngood request) writes it, C(knowngood approve) signs it).
    type: path
  required:
    description: Whether this environment requires approvals (C(knowngood_approval_required)).
    type: bool
    default: true
  allowed_signers_file:
    description: The trust root, an OpenSSH allowed_signers file.
    type: path
  approvers:
    description:
      - Signer principal to C({roles, email}); roles are C(team_lead), C(cto), C(infra_lead).
    type: dict
    default: {}
  matrix:
    description: Decision matrix (C(low), C(medium), C(high) each with C(approvals)).
    type: dict
    default: {}
  break_glass_reason:
    description: Proceed without approvals for this stated reason (audited, post-hoc approval open).
    type: str
    default: ""
  audit_dir:
    description: Where a break-glass run leaves the request to sign post hoc.
    type: path
  awx:
    description:
      - Inside AWX, the workflow's approval nodes take the place of signed requests. Set from
        the variables AWX injects (C(awx_job_id), C(awx_workflow_job_id)), the severity the
        workflow passes (C(knowngood_severity)) and the inventory's C(knowngood_awx) settings.
      - The gate asks AWX's API that this job is running and was spawned by that workflow job,
        that the workflow ran one approved node per role the matrix requires for the severity,
        in order, each approved by a member of the team mapped to that role, by distinct people,
        none of whom launched the workflow.
      - C(host) must come from the inventory; a C(knowngood_awx) given with -e is refused.
    type: dict
    suboptions:
      job_id:
        description: This job's id (AWX's C(awx_job_id)).
        type: int
      workflow_job_id:
        description: The workflow job that spawned it (AWX's C(awx_workflow_job_id)).
        type: int
      severity:
        description: The workflow's severity (C(knowngood_severity)).
        type: str
      host:
        description: AWX URL, from the inventory (C(knowngood_awx.host)).
        type: str
      token:
        description: OAuth2 token (AWX's controller credential injects C(CONTROLLER_OAUTH_TOKEN)).
        type: str
      role_teams:
        description: Approval role to the AWX team whose members hold it.
        type: dict
      validate_certs:
        description: Verify AWX's TLS certificate.
        type: bool
        default: true
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - knowngood.runbooks.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
author:
  - knowngood contributors (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Require signed approvals for this exact run
  knowngood.runbooks.approval_gate:
    request: "{{ knowngood_request | default(omit) }}"
    required: "{{ knowngood_approval_required | default(true) }}"
    allowed_signers_file: "{{ knowngood_allowed_signers_file }}"
    approvers: "{{ knowngood_approvers }}"
    matrix: "{{ knowngood_decision_matrix }}"
  run_once: true
"""

RETURN = r"""
approved:
  description: Whether the run may proceed.
  returned: always
  type: bool
mode:
  description: C(approved), C(awx_approved), C(not_required), C(break_glass) or C(refused).
  returned: always
  type: str
request_id:
  description: sha256 of the canonical request this run is.
  returned: always
  type: str
request:
  description: The canonical request document (public inputs only).
  returned: always
  type: dict
severity:
  description: The request's severity.
  returned: always
  type: str
signers:
  description: Valid signers with their roles.
  returned: always
  type: list
  elements: dict
refused:
  description: Why each refused approval (or the request) was refused.
  returned: always
  type: list
  elements: str
missing_roles:
  description: Required roles no valid signer holds.
  returned: always
  type: list
  elements: str
break_glass_reason:
  description: The stated reason when the run proceeded by break-glass.
  returned: always
  type: str
post_hoc_approval:
  description:
    - C(open) after a break-glass run; the request file to sign is in C(post_hoc_request_file).
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

ARGUMENT_SPEC = dict(
    request=dict(type="path"),
    required=dict(type="bool", default=True),
    allowed_signers_file=dict(type="path"),
    approvers=dict(type="dict", default={}),
    matrix=dict(type="dict", default={}),
    break_glass_reason=dict(type="str", default=""),
    audit_dir=dict(type="path"),
    awx=dict(
        type="dict",
        options=dict(
            job_id=dict(type="int"),
            workflow_job_id=dict(type="int"),
            severity=dict(type="str"),
            host=dict(type="str"),
            token=dict(type="str", no_log=True),
            role_teams=dict(type="dict"),
            validate_certs=dict(type="bool", default=True),
        ),
    ),
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    module.fail_json(
        msg="knowngood.runbooks.approval_gate runs on the controller as an action plugin; "
        "call it as a task, not as a module"
    )


if __name__ == "__main__":
    main()
