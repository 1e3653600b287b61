#!/usr/bin/python
# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: notify
short_description: Tell the contacts about a rollback by webhook and e-mail (strategy section 5)
version_added: "0.2.0"
description:
  - "Runs on the controller (action plugin). Validates the contacts and the channels, then sends
    the event to every webhook (Slack-compatible JSON C({\"text\": ...})) and e-mails the
    contacts the event is routed to through SMTP."
  - Routing. C(request), C(start) and C(success) go to the primary and secondary on-call;
    C(failure) also to the infrastructure lead; C(approval_needed) to the infrastructure lead
    and the approvers holding a role the request needs; C(break_glass) to every contact;
    C(break_glass_overdue) (an open break-glass past its escalation limit, sent by
    C(knowngood breakglass escalate)) to every contact and the approvers holding a role its
    post-hoc approval still needs; C(review_action_due) (a post-incident action item overdue or
    near its due date, sent by C(knowngood review nag)) to every contact and the I(owners).
    Webhooks hear every event.
  - Each delivery is retried up to I(channels.attempts) times with jittered exponential backoff
    and short timeouts. A failed delivery never fails the task; it is returned in
    C(notifications) with its attempts and error, and the audit callback records it.
  - Webhook URLs carry their token in the path, so results show scheme and host only.
  - With I(event=validate) nothing is sent; bad contacts or channels fail the task with every
    problem listed. Contacts are required once a channel is configured.
  - In check mode nothing is sent; the targets are returned with outcome C(skipped).
options:
  event:
    description: What happened.
    type: str
    required: true
    choices:
      - validate
      - request
      - approval_needed
      - start
      - success
      - failure
      - break_glass
      - break_glass_overdue
      - review_action_due
  contacts:
    description:
      - C(primary_oncall), C(secondary_oncall) and C(infra_lead), each with C(name), C(email)
        and C(phone) (C(knowngood_contacts)).
    type: dict
    default: {}
  channels:
    description:
      - C(webhooks) (list of URLs), C(smtp) (C(host), C(port), C(sender), C(starttls), C(ssl),
        C(username)), C(attempts) (1-5, default 3), C(timeout_s) (default 3), C(backoff_s)
        (default 0.5) (C(knowngood_notify)).
    type: dict
    default: {}
  smtp_password:
    description: SMTP password for C(channels.smtp.username).
    type: str
    default: ""
  approvers:
    description:
      - Signer to C({roles, email}); C(approval_needed) mails those holding a required role.
    type: dict
    default: {}
  matrix:
    description: Decision matrix; with I(request), the request's severity picks the roles required.
    type: dict
    default: {}
  request:
    description: Request file whose id, severity, ticket and reason the message carries.
    type: path
  details:
    description: Public facts the message carries (mode, break_glass_reason, approved_by, ...).
    type: dict
    default: {}
  owners:
    description:
      - Action item owners e-mailed too, each an address, a contact role, a contact's name or an
        approver's principal; an owner with no address is only named in the notice.
    type: list
    elements: str
    default: []
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
- name: Tell the on-call engineers the rollback starts
  knowngood.runbooks.notify:
    event: start
    contacts: "{{ knowngood_contacts }}"
    channels: "{{ knowngood_notify }}"
    smtp_password: "{{ knowngood_notify_smtp_password }}"
  run_once: true
"""

RETURN = r"""
notifications:
  description:
    - One entry per target with C(event), C(channel) (webhook or email), C(target) (masked
      webhook URL or address), C(outcome) (delivered, failed or skipped), C(attempts),
      C(error), C(at) and C(duration_ms).
  returned: always
  type: list
  elements: dict
delivered:
  description: Number of targets reached.
  returned: always
  type: int
failed:
  description: Whether the task failed; only invalid contacts or channels fail it.
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.knowngood.runbooks.plugins.module_utils.notify import ARGUMENT_SPEC


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    module.fail_json(
        msg="knowngood.runbooks.notify runs on the controller as an action plugin; "
        "call it as a task, not as a module"
    )


if __name__ == "__main__":
    main()
