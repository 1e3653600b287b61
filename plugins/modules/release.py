#!/usr/bin/python
# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: release
short_description: Register, switch, stage and mark application releases, recorded in a ledger
version_added: "0.1.0"
description:
  - Manages one deploy root laid out as C(releases/<id>), C(slots/{blue,green}) and C(current).
  - Every change appends an event to the append-only ledger C(.knowngood/ledger.jsonl); the
    ledger, never directory mtimes, says which release is known good.
  - Switching is an atomic rename of a temporary symlink followed by a graceful reload of the
    affected app instance, then a wait until it serves the new release.
  - Refuses, before changing anything, release ids with path separators or shell
    metacharacters, releases missing from the ledger, and a C(current) that is a real directory
    or points outside C(releases/).
options:
  root:
    description: Absolute path of the deploy root.
    type: path
    required: true
  release_id:
    description:
      - The release to act on.
    type: str
    required: true
  state:
    description:
      - C(present) unpacks I(src) into C(releases/<release_id>) if needed and registers it.
      - C(current) makes the release live. With I(strategy=symlink) the live link is swapped
        and the live instance reloaded; with I(strategy=blue_green) C(current) is pointed at
        the pool given in I(pool), whose slot must already serve the release.
      - C(staged) points the slot of I(pool) at the release and reloads that instance only.
      - C(known_good), C(bad), C(rolled_back) record a verdict on the release in the ledger.
    type: str
    choices: [present, current, staged, known_good, bad, rolled_back]
    default: current
  strategy:
    description: How C(current) is switched.
    type: str
    choices: [symlink, blue_green]
    default: symlink
  pool:
    description:
      - Pool whose slot to stage (I(state=staged)) or to make live (I(strategy=blue_green)).
    type: str
    choices: [blue, green]
  src:
    description: Release artifact (a .tar.gz) or directory to install for I(state=present).
    type: path
  source:
    description: Where the release came from (artifact URL or git ref), recorded in the ledger.
    type: str
  require_status:
    description:
      - For I(state=current) and I(state=staged), refuse unless the release's ledger status is
        one of these. Rollbacks pass C(known-good) and C(deployed) so a bad release is never
        switched to by accident.
    type: list
    elements: str
  previous_status:
    description:
      - For I(state=current), the verdict recorded on the release that was live before the
        switch, in the same call (C(rolled-back) during a rollback).
    type: str
    choices: [known-good, bad, rolled-back]
  expect_current:
    description: Refuse to switch unless this release is live now (guards against races).
    type: str
  reload_pidfile:
    description:
      - Pidfile of the app instance to signal after a switch; C({pool}) is replaced by the pool.
    type: path
  reload_signal:
    description: Signal that makes the instance reload gracefully.
    type: str
    default: HUP
  reload_command:
    description: Command (argv list) that reloads the app; C({pool}) is replaced by the pool.
    type: list
    elements: str
  wait_url:
    description:
      - URL of the instance to poll until it serves the release; C({pool}) is replaced.
      - The response must be HTTP 200 and name the release (JSON key C(release) or the body).
    type: str
  wait_timeout:
    description: Seconds to wait for I(wait_url).
    type: float
    default: 10
  keep_releases:
    description:
      - After a successful C(present) or C(current), remove the oldest unpacked releases beyond
        this many. The live release, the slots' releases and the last known-good are never
        removed. C(0) keeps everything.
    type: int
    default: 0
  run_id:
    description: Id of the run, recorded in the ledger.
    type: str
  user:
    description: Who asked for this, recorded in the ledger.
    type: str
  reason:
    description: Why, recorded in the ledger.
    type: str
  ticket:
    description: Change or incident ticket, recorded in the ledger.
    type: str
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
- name: Roll back to the last known-good release
  knowngood.runbooks.release:
    root: /srv/app
    release_id: "{{ code_identify_target }}"
    state: current
    require_status: [known-good, deployed]
    previous_status: rolled-back
    reload_pidfile: /run/app/{pool}.pid
    wait_url: http://127.0.0.1:8080/version
    run_id: "{{ knowngood_run_id }}"
    reason: error rate above 30%
    ticket: INC-1234

- name: Install and register a release from an artifact
  knowngood.runbooks.release:
    root: /srv/app
    release_id: v42
    state: present
    src: /tmp/app-v42.tar.gz
    source: git:4f2a9c1
"""

RETURN = r"""
release_id:
  description: The release acted on (the handle for audit records).
  returned: always
  type: str
previous_release_id:
  description: Release that was live before the call.
  returned: always
  type: str
live_release_id:
  description: Release live after the call (unchanged in check mode).
  returned: always
  type: str
live_pool:
  description: Pool C(current) points to after the call, if pools are used.
  returned: always
  type: str
events:
  description: Ledger events appended (or that would be, in check mode).
  returned: always
  type: list
  elements: dict
actions:
  description: What was done, in order, for the audit trail.
  returned: always
  type: list
  elements: str
switched_at:
  description: Epoch seconds when the link was swapped, null if no switch happened.
  returned: always
  type: float
duration_ms:
  description: Wall time of the call in milliseconds.
  returned: always
  type: int
removed_releases:
  description: Releases pruned by I(keep_releases).
  returned: always
  type: list
  elements: str
"""


from ansible_collections.knowngood.runbooks.plugins.module_utils import module_main
from ansible_collections.knowngood.runbooks.plugins.module_utils.release_ops import (
    ARGUMENT_SPEC,
    MUTUALLY_EXCLUSIVE,
    REQUIRED_IF,
    run,
)


def main():
    module_main.main(
        run, ARGUMENT_SPEC, required_if=REQUIRED_IF, mutually_exclusive=MUTUALLY_EXCLUSIVE
    )


if __name__ == "__main__":
    main()
