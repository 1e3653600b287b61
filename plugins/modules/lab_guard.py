#!/usr/bin/python
# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: lab_guard
short_description: Refuse a fault-injecting drill anywhere but the knowngood lab
version_added: "0.2.0"
description:
  - Drills that inject their failure through the lab (C(knowngood lab break)) must run their
    runbooks against that same lab, never a staging or production inventory. This module passes
    only when I(root) holds a lab made by C(knowngood lab up) (its C(lab.json) and
    C(inventory/hosts.json)) and every host in I(hosts) is one of that lab's hosts, reached with
    the same connection and address. Otherwise it fails, saying why.
  - Nothing in the check is a switch. Pointing I(root) elsewhere (for example with C(-e)) only
    changes where the lab is looked for; the inventory the drill acts on must still be that lab's.
  - Runs on the controller; reads files, changes nothing.
options:
  root:
    description: Where the lab lives (the lab inventory's C(knowngood_lab_root)); empty refuses.
    type: str
    default: ""
  hosts:
    description:
      - Every inventory host the drill's runbooks act on (groups C(app), C(lb), C(db),
        C(db_standby)), as C([name, ansible_connection, ansible_host]) (empty strings where
        unset).
    type: list
    elements: list
    required: true
  purpose:
    description: What the drill does through the lab, for the refusal message.
    type: str
    default: this drill injects its failure with `knowngood lab break`
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - knowngood.runbooks.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
    details: Changes nothing, so there is nothing to diff.
author:
  - knowngood contributors (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Refuse outside the lab
  vars:
    __lab_hosts: "{{ query('ansible.builtin.inventory_hostnames', 'app:lb:db:db_standby') }}"
  knowngood.runbooks.lab_guard:
    root: "{{ knowngood_lab_root | default('') }}"
    hosts: >-
      {{ __lab_hosts | zip(
           __lab_hosts | map('extract', hostvars)
           | map(attribute='ansible_connection', default=''),
           __lab_hosts | map('extract', hostvars) | map(attribute='ansible_host', default=''))
         | list }}
    purpose: "config_rollback pushes a bad nginx configuration with `knowngood lab break`"
"""

RETURN = r"""
root:
  description: The lab's directory (resolved), to hand to C(knowngood lab break).
  returned: success
  type: str
hosts:
  description: Number of inventory hosts checked against the lab's.
  returned: success
  type: int
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.knowngood.runbooks.plugins.module_utils import drill


def main():
    module = AnsibleModule(
        argument_spec=dict(
            root=dict(type="str", default=""),
            hosts=dict(type="list", elements="list", required=True),
            purpose=dict(
                type="str", default="this drill injects its failure with `knowngood lab break`"
            ),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        root = drill.lab_check(params["root"], params["hosts"], params["purpose"])
    except drill.DrillError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, root=root, hosts=len(params["hosts"]))


if __name__ == "__main__":
    main()
