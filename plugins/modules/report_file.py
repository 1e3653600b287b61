#!/usr/bin/python
# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: report_file
short_description: Write a runbook's report into the run's artifact directory
version_added: "0.1.0"
description:
  - Writes one document, as indented key-sorted JSON unless it is already a string, to
    I(dir)/I(name) with mode 0600, creating I(dir) with mode 0700. The file is replaced
    atomically (a reader sees the old report or the new one, never half of one) and synced.
  - Changed only when the content differs. In check mode nothing is written.
  - On the controller (C(delegate_to=localhost)), where the runbooks write their reports, it
    runs in the controller's worker without starting an interpreter.
options:
  dir:
    description: Directory of the run's artifacts.
    type: path
    required: true
  name:
    description: File name (letters, digits, C(.), C(_), C(-); no directories).
    type: str
    required: true
  content:
    description: The report; a dict or list is written as JSON.
    type: raw
    required: true
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - knowngood.runbooks.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
author:
  - knowngood contributors (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Write the result to the run's artifact directory
  knowngood.runbooks.report_file:
    dir: "{{ verify_report_dir }}"
    name: "{{ verify_result.run_id }}.verify.json"
    content: "{{ verify_result }}"
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
path:
  description: The file written (or that would be).
  returned: always
  type: str
"""

from ansible_collections.knowngood.runbooks.plugins.module_utils import module_main
from ansible_collections.knowngood.runbooks.plugins.module_utils.report_file import (
    ARGUMENT_SPEC,
    run,
)


def main():
    module_main.main(run, ARGUMENT_SPEC)


if __name__ == "__main__":
    main()
