#!/usr/bin/python
# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: recovery_probe
short_description: Probe app hosts, load balancer and databases and classify a system failure
version_added: "0.1.0"
description:
  - Takes I(rounds) snapshots, I(interval) seconds apart, of every app host's live-pool
    instance, the load balancer's health endpoint and every database node (accepts
    connections, in recovery, checksum failures, and pg_amcheck on the writable primary).
  - Classifies each round as C(none), C(partial), C(outage) or C(corruption) with its evidence.
    The result is C(confident) only when every round agrees and the evidence fits one class
    (corruption together with failed hosts, or two nodes accepting writes, do not).
  - Read-only; runs the same in check mode.
options:
  apps:
    description: App hosts as C({host, urls}) where C(urls) maps pool names to base URLs.
    type: list
    elements: dict
    required: true
  live_pool:
    description: Pool the load balancer sends traffic to; each host's instance of it is probed.
    type: str
    required: true
  lb_url:
    description: Load balancer base URL.
    type: str
    required: true
  lb_health_path:
    description: Path of the load balancer's own health endpoint.
    type: str
    default: /lb-health
  databases:
    description:
      - Database nodes as C({name, host, port, user, bin_dir}) and optionally C(password).
    type: list
    elements: dict
    required: true
  app_dbname:
    description: The application's database, checked by pg_amcheck.
    type: str
    default: app
  amcheck:
    description: Run pg_amcheck on the writable primary.
    type: bool
    default: true
  amcheck_exclude:
    description:
      - Relations pg_amcheck leaves out, as pg_amcheck patterns; a table's indexes and TOAST
        go with it.
    type: list
    elements: str
    default: []
  failure_class:
    description:
      - C(auto) classifies from the probes; another value overrides the classification (the
        evidence is still returned).
    type: str
    choices: [auto, partial, outage, corruption]
    default: auto
  rounds:
    description: Snapshots to take; auto classification needs them to agree.
    type: int
    default: 2
  interval:
    description: Seconds between rounds.
    type: float
    default: 1
  timeout:
    description: Seconds per HTTP probe.
    type: float
    default: 2
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
- name: Classify the failure
  knowngood.runbooks.recovery_probe:
    apps:
      - {host: app1, urls: {blue: "http://10.0.0.11:8080", green: "http://10.0.0.11:8081"}}
    live_pool: blue
    lb_url: http://lb.internal
    databases:
      - {name: db1, host: 10.0.0.21, port: 5432, bin_dir: /usr/lib/postgresql/15/bin}
      - {name: db2, host: 10.0.0.22, port: 5432, bin_dir: /usr/lib/postgresql/15/bin}
"""

RETURN = r"""
classification:
  description:
    - C(observed) and decided C(class), C(confident), C(requested), C(evidence), C(reasons),
      C(overridden) and C(facts) (down_apps, up_apps, writable, standbys, down_databases,
      corrupt, lb_up).
  returned: always
  type: dict
snapshots:
  description: Every round's raw probe results.
  returned: always
  type: list
  elements: dict
duration_ms:
  description: Wall time in milliseconds.
  returned: always
  type: int
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.knowngood.runbooks.plugins.module_utils import recovery


def main():
    module = AnsibleModule(
        argument_spec=dict(
            apps=dict(type="list", elements="dict", required=True),
            live_pool=dict(type="str", required=True),
            lb_url=dict(type="str", required=True),
            lb_health_path=dict(type="str", default="/lb-health"),
            databases=dict(type="list", elements="dict", required=True),
            app_dbname=dict(type="str", default="app"),
            amcheck=dict(type="bool", default=True),
            amcheck_exclude=dict(type="list", elements="str", default=[]),
            failure_class=dict(
                type="str", choices=["auto", "partial", "outage", "corruption"], default="auto"
            ),
            rounds=dict(type="int", default=2),
            interval=dict(type="float", default=1),
            timeout=dict(type="float", default=2),
        ),
        supports_check_mode=True,
    )
    params = module.params
    started = time.time()
    if params["rounds"] < 1:
        module.fail_json(msg="rounds must be at least 1")
    for app in params["apps"]:
        if not app.get("host") or not isinstance(app.get("urls"), dict) or not app["urls"]:
            module.fail_json(msg="every app needs host and urls: %s" % app)
    for node in params["databases"]:
        for key in ("name", "host", "port", "bin_dir"):
            if not node.get(key):
                module.fail_json(msg="database node needs %s: %s" % (key, node.get("name")))
        if node.get("password"):
            module.no_log_values.add(node["password"])
    snapshots = []
    for index in range(params["rounds"]):
        if index:
            time.sleep(params["interval"])
        snapshots.append(recovery.probe(params))
    module.exit_json(
        changed=False,
        classification=recovery.judge(snapshots, params["failure_class"]),
        snapshots=snapshots,
        duration_ms=int((time.time() - started) * 1000),
    )


if __name__ == "__main__":
    main()
