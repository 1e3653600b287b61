#!/usr/bin/python
# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: lb_pool
short_description: Choose which upstream pool a load balancer sends traffic to
version_added: "0.1.0"
description:
  - The load balancer includes one file, I(live_file), that defines the live upstream. Each
    pool's definition lives in I(pools_dir)/<pool>.conf. Making a pool live copies its
    definition over I(live_file) atomically, runs I(test_command) (C(nginx -t)) and only then
    I(reload_command) (a graceful reload). If the test fails, the previous file is put back and
    traffic stays where it was.
options:
  pool:
    description:
      - Pool that should receive traffic. Omit to only report the live pool.
      - C(maintenance) is the load balancer's own 503 page (I(pools_dir)/maintenance.conf);
        a database rollback makes it live while writes are stopped, then puts the previous
        pool back.
    type: str
    choices: [blue, green, maintenance]
  live_file:
    description: The included file that defines the live upstream.
    type: path
    required: true
  pools_dir:
    description: Directory with one <pool>.conf per pool.
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
- name: Flip traffic back to the blue pool
  knowngood.runbooks.lb_pool:
    pool: blue
    live_file: /etc/nginx/knowngood/live_pool.conf
    pools_dir: /etc/nginx/knowngood/pools
    test_command: [nginx, -t]
    reload_command: [nginx, -s, reload]
"""

RETURN = r"""
pool:
  description: Pool live after the call (unchanged in check mode).
  returned: always
  type: str
previous_pool:
  description: Pool that was live before the call.
  returned: always
  type: str
actions:
  description: Commands run, in order.
  returned: always
  type: list
  elements: str
switched_at:
  description: Epoch seconds of the reload, null without a switch.
  returned: always
  type: float
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

MARKER_RE = re.compile(r"^#\s*knowngood-pool:\s*(\w+)\s*$", re.M)


def read_marker_from(content):
    match = MARKER_RE.search(content)
    return match.group(1) if match else None


def read_marker(path):
    try:
        with open(path) as handle:
            content = handle.read()
    except OSError:
        return None, None
    return read_marker_from(content), content


def write_atomic(module, path, content):
    fd, tmp = tempfile.mkstemp(prefix=".kg-", dir=os.path.dirname(path))
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
    if os.path.exists(path):
        shutil.copymode(path, tmp)
    module.atomic_move(tmp, path)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            pool=dict(type="str", choices=["blue", "green", "maintenance"]),
            live_file=dict(type="path", required=True),
            pools_dir=dict(type="path", required=True),
            test_command=dict(type="list", elements="str", required=True),
            reload_command=dict(type="list", elements="str", required=True),
        ),
        supports_check_mode=True,
    )
    started = time.time()
    params = module.params
    previous, old_content = read_marker(params["live_file"])
    result = dict(
        changed=False, pool=previous, previous_pool=previous, actions=[], switched_at=None
    )
    wanted = params["pool"]
    if wanted and wanted != previous:
        source = os.path.join(params["pools_dir"], wanted + ".conf")
        try:
            with open(source) as handle:
                new_content = handle.read()
        except OSError as exc:
            module.fail_json(
                msg="pool %s has no definition at %s: %s" % (wanted, source, exc), **result
            )
        if read_marker_from(new_content) != wanted:
            new_content = "# knowngood-pool: %s\n%s" % (wanted, new_content)
        result["changed"] = True
        result["diff"] = {
            "before": old_content or "",
            "after": new_content,
            "before_header": params["live_file"],
            "after_header": source,
        }
        if not module.check_mode:
            write_atomic(module, params["live_file"], new_content)
            rc, out, err = module.run_command(params["test_command"])
            result["actions"].append("tested: %s (rc=%d)" % (" ".join(params["test_command"]), rc))
            if rc != 0:
                if old_content is not None:
                    write_atomic(module, params["live_file"], old_content)
                result["actions"].append("restored %s to pool %s" % (params["live_file"], previous))
                result["changed"] = False
                module.fail_json(
                    msg="configuration with pool %s fails its test, traffic stays on %s: %s"
                    % (wanted, previous, (err or out).strip()),
                    duration_ms=int((time.time() - started) * 1000),
                    **result,
                )
            rc, out, err = module.run_command(params["reload_command"])
            result["actions"].append(
                "reloaded: %s (rc=%d)" % (" ".join(params["reload_command"]), rc)
            )
            if rc != 0:
                if old_content is not None:
                    write_atomic(module, params["live_file"], old_content)
                module.fail_json(
                    msg="reload failed, %s restored: %s"
                    % (params["live_file"], (err or out).strip()),
                    duration_ms=int((time.time() - started) * 1000),
                    **result,
                )
            result["switched_at"] = time.time()
            result["pool"] = wanted
    module.exit_json(duration_ms=int((time.time() - started) * 1000), **result)


if __name__ == "__main__":
    main()
