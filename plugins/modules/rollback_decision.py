#!/usr/bin/python
# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: rollback_decision
short_description: Decide whether to roll back, how urgently and with whose approval
version_added: "0.2.0"
description:
  - Evaluates the strategy's section 2.1 triggers. Measured ones come from Prometheus, the
    current window against a baseline window an offset earlier; critical system errors
    (scrape targets down), error rate, latency degradation and throughput degradation
    (above 30% by default). Declared ones come from the operator; security vulnerability,
    data integrity issue, user experience disruption.
  - Each trigger is reported with its numbers and severity; the worst one picks the row of
    the section 2.2 matrix, giving the action (optional, recommended, mandatory immediate)
    and the approver roles required.
  - A trigger without data is inconclusive. When nothing fired and something is
    inconclusive the verdict is C(inconclusive), meaning notify, don't act.
  - Read-only; runs the same in check mode.
options:
  prometheus_url:
    description: Prometheus base URL. Empty means no measured data (all inconclusive).
    type: str
    default: ""
  window:
    description: Length of the evaluation windows in seconds (at least two scrape intervals).
    type: int
    default: 300
  baseline_offset:
    description: How far before I(at) the baseline window ends, in seconds.
    type: int
    default: 3600
  at:
    description: End of the current window (epoch seconds). Default now.
    type: float
  selector:
    description: PromQL label matchers added to every query.
    type: str
    default: job="app"
  queries:
    description:
      - PromQL per measured metric (C(error_ratio), C(latency_p95_s), C(throughput_rps),
        C(targets_down)) overriding the defaults. C({window}) and C({selector}) are
        substituted; literal braces are doubled.
    type: dict
    default: {}
  thresholds:
    description: Overrides of the trigger thresholds (see module_utils decision.DEFAULT_THRESHOLDS).
    type: dict
    default: {}
  declared:
    description: Operator-declared triggers.
    type: list
    elements: dict
    default: []
    suboptions:
      trigger:
        description: Which section 2.1 trigger.
        type: str
        required: true
        choices: [security, data_integrity, ux_disruption]
      severity:
        description: Severity; default high for security and data integrity, medium otherwise.
        type: str
        choices: [low, medium, high]
      note:
        description: What the operator saw.
        type: str
  matrix:
    description:
      - The section 2.2 matrix, C(low), C(medium), C(high) each with C(action) and
        C(approvals) (list of roles). Default the strategy's.
    type: dict
    default: {}
  fail_on_rollback:
    description: Fail the task when the verdict is C(rollback) (a health gate).
    type: bool
    default: false
  fail_at_severity:
    description:
      - With I(fail_on_rollback), the lowest severity that fails the task; a C(rollback)
        verdict below it is reported and does not fail.
    type: str
    choices: [low, medium, high]
    default: low
  probes:
    description:
      - Measure from these M(knowngood.runbooks.http_probe) results (one per host of a deploy
        batch) instead of Prometheus. Evaluated are hosts down, error ratio and p95 latency
        (the worst host's); a closed-loop probe's own rate says nothing of throughput.
      - Mutually exclusive with I(prometheus_url).
    type: list
    elements: dict
    default: []
  baseline_probes:
    description: With I(probes), the same probes taken before the change (the baseline window).
    type: list
    elements: dict
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
- name: Compare the last 5 minutes with the same 5 minutes an hour ago
  knowngood.runbooks.rollback_decision:
    prometheus_url: http://prometheus:9090
    window: 300
    baseline_offset: 3600
    matrix: "{{ knowngood_decision_matrix }}"
  register: decision

- name: A deploy batch's health gate, its probes against the same probes before the switch
  knowngood.runbooks.rollback_decision:
    probes: "{{ ansible_play_batch | map('extract', hostvars, 'probe_after') | list }}"
    baseline_probes: "{{ ansible_play_batch | map('extract', hostvars, 'probe_before') | list }}"
    fail_on_rollback: true
    fail_at_severity: medium

- name: Security issue declared by the on-call engineer
  knowngood.runbooks.rollback_decision:
    prometheus_url: http://prometheus:9090
    declared:
      - trigger: security
        note: CVE in the new TLS library
"""

RETURN = r"""
verdict:
  description: C(rollback), C(no_rollback) or C(inconclusive) (notify, don't act).
  returned: always
  type: str
severity:
  description: Worst severity among the fired triggers (C(none) when none fired).
  returned: always
  type: str
action:
  description: The matrix's action for that severity.
  returned: always
  type: str
approvals_required:
  description: Approver roles the matrix requires for that severity.
  returned: always
  type: list
  elements: str
triggers:
  description: Every trigger with its numbers, C(fired), C(inconclusive), C(severity), C(detail).
  returned: always
  type: list
  elements: dict
fired:
  description: Names of the triggers that fired.
  returned: always
  type: list
  elements: str
inconclusive:
  description: Names of the triggers without data.
  returned: always
  type: list
  elements: str
current:
  description: Measured values in the current window.
  returned: always
  type: dict
baseline:
  description: Measured values in the baseline window.
  returned: always
  type: dict
query_errors:
  description: Why a metric had no value (unreachable Prometheus, bad query).
  returned: always
  type: dict
stops:
  description: The verdict is C(rollback) at or above I(fail_at_severity) (a gate would stop).
  returned: always
  type: bool
source:
  description: Where the measured values came from, C(prometheus) or C(probes).
  returned: always
  type: str
duration_ms:
  description: Time the evaluation took.
  returned: always
  type: int
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.knowngood.runbooks.plugins.module_utils import decision


def main():
    module = AnsibleModule(
        argument_spec=dict(
            prometheus_url=dict(type="str", default=""),
            window=dict(type="int", default=300),
            baseline_offset=dict(type="int", default=3600),
            at=dict(type="float"),
            selector=dict(type="str", default='job="app"'),
            queries=dict(type="dict", default={}),
            thresholds=dict(type="dict", default={}),
            declared=dict(
                type="list",
                elements="dict",
                default=[],
                options=dict(
                    trigger=dict(
                        type="str",
                        required=True,
                        choices=["security", "data_integrity", "ux_disruption"],
                    ),
                    severity=dict(type="str", choices=["low", "medium", "high"]),
                    note=dict(type="str"),
                ),
            ),
            matrix=dict(type="dict", default={}),
            fail_on_rollback=dict(type="bool", default=False),
            fail_at_severity=dict(type="str", default="low", choices=["low", "medium", "high"]),
            probes=dict(type="list", elements="dict", default=[]),
            baseline_probes=dict(type="list", elements="dict", default=[]),
        ),
        supports_check_mode=True,
    )
    params = module.params
    started = time.time()
    if params["probes"] and params["prometheus_url"]:
        module.fail_json(msg="probes and prometheus_url are mutually exclusive", changed=False)
    try:
        if params["probes"]:
            result = decision.probe_decision(
                params["probes"],
                params["baseline_probes"],
                thresholds=params["thresholds"],
                declared=params["declared"],
                matrix=params["matrix"] or None,
            )
        else:
            result = decision.run_decision(
                params["prometheus_url"],
                params["window"],
                params["baseline_offset"],
                at=params["at"],
                queries=params["queries"],
                selector=params["selector"],
                thresholds=params["thresholds"],
                declared=params["declared"],
                matrix=params["matrix"] or None,
            )
    except decision.DecisionError as exc:
        module.fail_json(msg=str(exc), changed=False)
    result["duration_ms"] = int((time.time() - started) * 1000)
    summary = "%s: severity %s, action %s, approvals %s; fired %s; inconclusive %s" % (
        result["verdict"],
        result["severity"],
        result["action"],
        ", ".join(result["approvals_required"]) or "none",
        "; ".join("%s (%s)" % (t["trigger"], t["detail"]) for t in result["triggers"] if t["fired"])
        or "none",
        ", ".join(result["inconclusive"]) or "none",
    )
    result["stops"] = result["verdict"] == "rollback" and decision.SEVERITIES.index(
        result["severity"]
    ) >= decision.SEVERITIES.index(params["fail_at_severity"])
    if params["fail_on_rollback"] and result["stops"]:
        module.fail_json(msg="rollback triggered: " + summary, changed=False, **result)
    module.exit_json(changed=False, msg=summary, **result)


if __name__ == "__main__":
    main()
