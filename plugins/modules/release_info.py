#!/usr/bin/python
# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: release_info
short_description: Read a deploy root's live release, slots, ledger and lock
version_added: "0.1.0"
description:
  - Read-only view of one deploy root managed by M(knowngood.runbooks.release).
  - Fails when the layout cannot be trusted (C(current) a real directory or pointing outside
    C(releases/)), so a runbook stops before it plans on a guess.
options:
  root:
    description: Absolute path of the deploy root.
    type: path
    required: true
  release_id:
    description: Also report whether this release is registered, installed and its status.
    type: str
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
- name: Identify the live release and the last known-good one
  knowngood.runbooks.release_info:
    root: /srv/app
  register: __code_identify_info
"""

RETURN = r"""
current:
  description: Release id C(current) resolves to, null when nothing is live.
  returned: always
  type: str
live_pool:
  description: Pool C(current) points to (blue or green), null for plain layouts.
  returned: always
  type: str
idle_pool:
  description: The other pool, null for plain layouts.
  returned: always
  type: str
slots:
  description: Release served by each pool's slot.
  returned: always
  type: dict
installed:
  description: Release ids unpacked under releases/.
  returned: always
  type: list
  elements: str
schemas:
  description: Schema revisions each installed release works with (release.json C(schema)).
  returned: always
  type: dict
releases:
  description: Ledger summary per release, oldest first (status, source, checksum, history).
  returned: always
  type: list
  elements: dict
last_known_good:
  description: Newest release confirmed good that is not live and not later marked bad.
  returned: always
  type: str
lock:
  description: The lock held on the root, null when free.
  returned: always
  type: dict
release:
  description: Ledger entry of I(release_id) plus C(installed), when I(release_id) is given.
  returned: when release_id is given
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.knowngood.runbooks.plugins.module_utils.release_ops import (
    INFO_ARGUMENT_SPEC,
    info,
)


def main():
    module = AnsibleModule(argument_spec=INFO_ARGUMENT_SPEC, supports_check_mode=True)
    failed, result = info(module.params)
    if failed:  # only a message: the state keys are not returned on failure
        module.fail_json(msg=result["msg"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
