#!/usr/bin/python
# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: lb_member
short_description: Drain members of the live load balancer pool, or put them back
version_added: "0.1.0"
description:
  - Marks the C(server) lines of I(members) in the live pool file
    (see M(knowngood.runbooks.lb_pool)) C(down) (I(state=drained)) or removes that mark
    (I(state=active)). The file is written atomically, then I(test_command) runs and only
    then I(reload_command); if either fails the previous file is put back.
  - Refuses to drain the last active member of the pool unless I(allow_empty) is set - a pool
    with every member down answers every request with an error.
  - The marks live in the live pool file only; making another pool live with
    M(knowngood.runbooks.lb_pool) starts from that pool's own definition.
options:
  members:
    description: Members as C(host:port), as they appear in the C(server) lines.
    type: list
    elements: str
    required: true
  state:
    description: C(drained) takes the members out of rotation, C(active) puts them back.
    type: str
    choices: [drained, active]
    default: drained
  live_file:
    description: The included file that defines the live upstream.
    type: path
    required: true
  test_command:
    description: Command (argv list) that validates the whole configuration.
    type: list
    elements: str
    required: true
  reload_command:
    description: Command (argv list) that reloads the load balancer gracefully.
    type: list
    elements: str
    required: true
  allow_empty:
    description: Allow draining the last active member.
    type: bool
    default: false
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
- name: Take a failed host out of rotation
  knowngood.runbooks.lb_member:
    members: ["10.0.0.12:8080"]
    state: drained
    live_file: /etc/nginx/knowngood/live_pool.conf
    test_command: [nginx, -t]
    reload_command: [nginx, -s, reload]
"""

RETURN = r"""
pool:
  description: The live pool named in the file.
  returned: always
  type: str
drained:
  description: Members marked down after the call (as they would be in check mode).
  returned: always
  type: list
  elements: str
active:
  description: Members in rotation after the call.
  returned: always
  type: list
  elements: str
changed_members:
  description: Members whose mark changed.
  returned: always
  type: list
  elements: str
actions:
  description: Commands run, in order.
  returned: always
  type: list
  elements: str
duration_ms:
  description: Wall time in milliseconds.
  returned: always
  type: int
"""

import os
import re
import shutil
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule

SERVER_RE = re.compile(r"^(\s*server\s+)(\S+)((?:\s+[^;]*?)?)\s*;(.*)$")
POOL_RE = re.compile(r"^#\s*knowngood-pool:\s*(\w+)\s*$", re.M)


def rewrite(content, members, state):
    """(new content, drained, active, changed members, unknown members)."""
    lines, drained, active, changed = [], [], [], []
    seen = set()
    for line in content.splitlines():
        match = SERVER_RE.match(line)
        if not match:
            lines.append(line)
            continue
        head, address, options, tail = match.groups()
        words = options.split()
        is_down = "down" in words
        if address in members:
            seen.add(address)
            want_down = state == "drained"
            if want_down != is_down:
                changed.append(address)
                words = [w for w in words if w != "down"] + (["down"] if want_down else [])
                is_down = want_down
            line = "%s%s%s;%s" % (head, address, "".join(" " + w for w in words), tail)
        (drained if is_down else active).append(address)
        lines.append(line)
    unknown = [m for m in members if m not in seen]
    return "\n".join(lines) + "\n", drained, active, changed, unknown


def write_atomic(module, path, content):
    fd, tmp = tempfile.mkstemp(prefix=".kg-", dir=os.path.dirname(path))
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
    shutil.copymode(path, tmp)
    module.atomic_move(tmp, path)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            members=dict(type="list", elements="str", required=True),
            state=dict(type="str", choices=["drained", "active"], default="drained"),
            live_file=dict(type="path", required=True),
            test_command=dict(type="list", elements="str", required=True),
            reload_command=dict(type="list", elements="str", required=True),
            allow_empty=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    started = time.time()
    params = module.params
    try:
        with open(params["live_file"]) as handle:
            old = handle.read()
    except OSError as exc:
        module.fail_json(msg="cannot read %s: %s" % (params["live_file"], exc))
    match = POOL_RE.search(old)
    new, drained, active, changed, unknown = rewrite(old, set(params["members"]), params["state"])
    result = dict(
        changed=bool(changed),
        pool=match.group(1) if match else None,
        drained=drained,
        active=active,
        changed_members=changed,
        actions=[],
    )
    if unknown:
        module.fail_json(
            msg="%s not in the live pool %s (members: %s)"
            % (", ".join(unknown), result["pool"], ", ".join(drained + active)),
            **result,
        )
    if not active and not params["allow_empty"]:
        module.fail_json(
            msg="refusing to drain every member of pool %s: nothing would serve; "
            "set allow_empty to mean it" % result["pool"],
            **result,
        )
    if changed:
        result["diff"] = {
            "before": old,
            "after": new,
            "before_header": params["live_file"],
            "after_header": params["live_file"],
        }
    if changed and not module.check_mode:
        write_atomic(module, params["live_file"], new)
        for key in ("test_command", "reload_command"):
            rc, out, err = module.run_command(params[key])
            result["actions"].append("%s: %s (rc=%d)" % (key, " ".join(params[key]), rc))
            if rc != 0:
                write_atomic(module, params["live_file"], old)
                if key == "reload_command":
                    module.run_command(params["reload_command"])
                result["changed"] = False
                module.fail_json(
                    msg="%s failed, %s put back: %s"
                    % (key, params["live_file"], (err or out).strip()),
                    duration_ms=int((time.time() - started) * 1000),
                    **result,
                )
    module.exit_json(duration_ms=int((time.time() - started) * 1000), **result)


if __name__ == "__main__":
    main()
