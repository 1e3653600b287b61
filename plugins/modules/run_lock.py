#!/usr/bin/python
# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: run_lock
short_description: Take or give back the host run lock every destructive runbook shares
version_added: "0.1.0"
description:
  - One lock file per host, taken by every runbook that changes the host destructively
    (rollback-database, recover-system, rollback-config, deploy-code, rollback-code) right after
    its preflight and approval gate, and given back at the end, also when the run fails.
  - The file is a JSON owner record (run id, runbook, controller pid and host, user, host,
    since), written whole and hard-linked into place, so two racing runs cannot both take it.
  - A lock held by another run refuses, naming the holder; nothing is changed.
  - A holder whose controller process is gone on the same controller is stale and is taken over
    with a warning. The action plugin checks the pid on the controller, also for remote hosts.
  - A holder that cannot be checked is never broken automatically; past O(max_age) the refusal
    says how to break it deliberately (O(break_lock) naming the holder's run id).
  - Where the file lives is the inventory's business, not the runbook's; the
    C(knowngood.runbooks.run_lock_path) filter derives it from a host's variables.
options:
  path:
    description: The lock file (the host's, from C(knowngood.runbooks.run_lock_path)).
    type: path
    required: true
  state:
    description: C(locked) takes the lock for O(run_id); C(unlocked) gives it back.
    type: str
    choices: [locked, unlocked]
    default: locked
  run_id:
    description: Id of the run taking or giving back the lock.
    type: str
    required: true
  runbook:
    description:
      - Runbook taking the lock, named in a refusal. The action plugin fills in the playbook.
    type: str
  user:
    description: Who runs it. The action plugin fills in C(KNOWNGOOD_USER) or the login name.
    type: str
  controller_pid:
    description:
      - Pid of the ansible-playbook process that owns the lock. The action plugin fills in
        C(KNOWNGOOD_CONTROLLER_PID) (set by the audit callback) or its parent process.
    type: int
  controller_host:
    description: Host name of the controller. The action plugin fills it in.
    type: str
  host:
    description: The inventory host the lock guards, named in a refusal.
    type: str
  max_age:
    description:
      - Seconds after which a lock whose owner cannot be checked is reported as probably stale,
        with the command that breaks it. It is not broken automatically.
    type: int
    default: 3600
  break_lock:
    description:
      - Run id of the holder to break deliberately. Breaks only a lock that run holds.
    type: str
    default: ""
  stale_holder:
    description:
      - Run id of a holder whose controller pid the action plugin found gone. Set by the action
        plugin only; takes over only a lock that run holds.
    type: str
    default: ""
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - knowngood.runbooks.attributes
attributes:
  check_mode:
    support: full
    details: Decides exactly as a real run would (a held lock refuses) and writes nothing.
  diff_mode:
    support: full
author:
  - knowngood contributors (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Take this host's run lock
  knowngood.runbooks.run_lock:
    path: "{{ hostvars[inventory_hostname] | knowngood.runbooks.run_lock_path }}"
    run_id: "{{ knowngood_run_id }}"
    break_lock: "{{ knowngood_break_lock | default('') }}"

- name: Give it back
  knowngood.runbooks.run_lock:
    path: "{{ hostvars[inventory_hostname] | knowngood.runbooks.run_lock_path }}"
    run_id: "{{ knowngood_run_id }}"
    state: unlocked
"""

RETURN = r"""
path:
  description: The lock file.
  returned: always
  type: str
lock:
  description: The owner record after the call (this run's once taken), null when unlocked.
  returned: always
  type: dict
holder:
  description: On refusal, the record of the run that holds the lock.
  returned: always
  type: dict
broken:
  description: The record of the stale or deliberately broken holder this call replaced.
  returned: always
  type: dict
taken:
  description:
    - This call took the lock (would take it, in check mode); false when this run held it
      already or it was refused.
  returned: always
  type: bool
msg:
  description: What was done, or why it was refused, naming the holder.
  returned: always
  type: str
"""

from ansible_collections.knowngood.runbooks.plugins.module_utils import module_main
from ansible_collections.knowngood.runbooks.plugins.module_utils.run_lock import (
    ARGUMENT_SPEC,
    run,
)


def main():
    module_main.main(run, ARGUMENT_SPEC)


if __name__ == "__main__":
    main()
