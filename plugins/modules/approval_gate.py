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
  - The trust root is the controller's governance policy, C(/etc/knowngood/policy.yml)
    (without it C(KNOWNGOOD_POLICY_FILE), then C($KNOWNGOOD_LAB_DIR/governance/policy.yml),
    each root-owned in root-owned directories). It holds approvals required, decision matrix,
    allowed_signers file, approvers, AWX host and team mapping. The options below may only
    make it stricter; one that would loosen it is refused, naming the variable. Without a
    policy the gate refuses (break-glass excepted). The result carries the policy's sha256.
  - A signed request runs once; the run that uses it records its id in the policy's state
    directory (C(consumed/)) and a second run with it is refused naming when it ran.
  - No signer may be who executes the run (the OS user of this process, the sudo user, the AWX
    launcher), whatever the request's requester says.
  - When approvals are not required (policy and variables) and no request is given, the gate
    passes and records that no approval was required.
  - In check mode the gate reports what it would decide and never fails.
options:
  request:
    description:
      - Path to the request file (C(knowngood request) writes it, C(knowngood approve) signs it).
    type: path
  required:
    description:
      - Require approvals (C(knowngood_approval_required)). Unset, the policy decides; C(true)
        tightens a policy that does not require them; C(false) under one that does is refused.
    type: bool
  allowed_signers_file:
    description: Must be the policy's allowed_signers file when given (narrow with I(approvers)).
    type: path
  approvers:
    description:
      - Signer principal to C({roles, email, os_user}); empty, the policy's. Given, each signer
        must be in the policy with at most the policy's roles.
    type: dict
    default: {}
  matrix:
    description:
      - Decision matrix (C(low), C(medium), C(high) each with C(approvals)); empty, the
        policy's. Given, every severity must require at least the policy's roles.
    type: dict
    default: {}
  break_glass_reason:
    description: Proceed without approvals for this stated reason (audited, post-hoc approval open).
    type: str
    default: ""
  audit_dir:
    description:
      - Where a break-glass run leaves the request to sign post hoc. A break-glass run is
        recorded in the policy's state directory (C(break-glass/)) whether or not this is set.
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
      - C(host) and C(role_teams) come from the policy; given otherwise they must equal it, and a
        C(knowngood_awx) given with -e is refused.
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
        description: AWX URL; the policy's C(awx.host), which a different value cannot replace.
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
post_hoc_request_file:
  description: The request a break-glass run leaves to sign post hoc.
  returned: always
  type: str
break_glass_records:
  description: Every file a break-glass run was recorded in (state directory, audit directory).
  returned: always
  type: list
  elements: str
policy_path:
  description: The governance policy file that judged the run.
  returned: always
  type: str
policy_digest:
  description: sha256 of the policy file's bytes.
  returned: always
  type: str
executed_by:
  description: The OS user executing the run (in AWX, the workflow's launcher).
  returned: always
  type: str
consumed:
  description: The single-use ledger entry this run wrote for its request.
  returned: always
  type: str
approvers:
  description: The effective approvers (signer to roles and email), for notices.
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.knowngood.runbooks.plugins.module_utils.approval import GATE_ARGUMENT_SPEC


def main():
    module = AnsibleModule(argument_spec=GATE_ARGUMENT_SPEC, supports_check_mode=True)
    module.fail_json(
        msg="knowngood.runbooks.approval_gate runs on the controller as an action plugin; "
        "call it as a task, not as a module"
    )


if __name__ == "__main__":
    main()
