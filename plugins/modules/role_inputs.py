#!/usr/bin/python
# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: role_inputs
short_description: Check the argument specs of a playbook's roles for every host in one task
version_added: "0.2.0"
description:
  - Runs on the controller (action plugin). For every host of the batch and every role entry
    point named in I(roles), validates the variables the role will see against the role's
    C(meta/argument_specs.yml), with the validator Ansible's own role argument-spec check uses.
  - Meant to run once (C(run_once)) at the top of a play that imports those roles with
    C(rolespec_validate=false), so a run checks its inputs once instead of once per role, per
    entry point and per host; fails naming the host, the role and the variable.
  - Role defaults and play variables are read from the task's variables; inventory variables,
    facts and extra variables from each host; each value is templated in its host's context.
options:
  roles:
    description:
      - Role name (of this collection) to the list of entry points to check (C(main) when
        empty).
    type: dict
    required: true
  hosts:
    description: Hosts to check; default every host of the batch (C(ansible_play_batch)).
    type: list
    elements: str
  set_by_play:
    description:
      - Variables an earlier step of the play sets as a fact (such as the plan
        C(code_identify_plan)), checked where they are made; a role's C(required) is lifted
        for them here, and a value given anyway is still checked against its type.
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
- name: Check every role's inputs on every host, once
  knowngood.runbooks.role_inputs:
    roles:
      code_identify: [main]
      code_stop: [main, unlock]
  run_once: true
"""

RETURN = r"""
hosts:
  description: Number of hosts checked.
  returned: always
  type: int
checked:
  description: Role entry points checked, as C(role (entry point)).
  returned: always
  type: list
  elements: str
argument_errors:
  description: "Every problem found, as C(host: role (entry point): message)."
  returned: failure
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(
        argument_spec={
            "roles": {"type": "dict", "required": True},
            "hosts": {"type": "list", "elements": "str"},
            "set_by_play": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    module.fail_json(
        msg="knowngood.runbooks.role_inputs runs on the controller as an action plugin; "
        "call it as a task, not as a module"
    )


if __name__ == "__main__":
    main()
