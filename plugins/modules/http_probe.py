#!/usr/bin/python
# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: http_probe
short_description: Send a burst of HTTP requests and judge errors, release and latency
version_added: "0.1.0"
description:
  - The health gate of a deploy and the stability check of a rollback. Sends I(requests)
    requests with I(concurrency) workers, then fails if the share of failed requests exceeds
    I(max_error_ratio), a response names a release other than I(expect_release), or the 95th
    percentile latency is worse than its baseline.
  - Latency is judged against a baseline measured the same way on the same machine, never
    against an absolute number; a shared machine's load is not the service's regression.
    The baseline is I(baseline) (an earlier result of this module, e.g. the service before
    the change) or I(baseline_url) (the release being replaced, probed in alternating rounds
    with I(url), so both see the same moments of the machine). It fails a p95 more than
    I(latency_tolerance) above the baseline's and also more than the larger of
    I(latency_min_delta_ms) and the baseline's own p95-p50 spread above it.
  - Without a usable baseline (none given, or one that failed more than half its requests,
    an outage) latency is not judged and the result says C(no baseline); errors and the
    release still are. I(max_p95_ms) is the operator's SLO, a cap that fails on its own.
  - Read-only; runs the same in check mode.
options:
  url:
    description: URL to probe.
    type: str
    required: true
  requests:
    description: Number of requests.
    type: int
    default: 40
  concurrency:
    description: Parallel workers.
    type: int
    default: 4
  timeout:
    description: Seconds per request.
    type: float
    default: 5
  max_error_ratio:
    description: Highest acceptable share of failed requests (status >= 500 or no answer).
    type: float
    default: 0.01
  max_p95_ms:
    description:
      - The SLO cap on the 95th percentile latency in milliseconds; C(0) turns it off.
      - Fails on its own, whatever the baseline says.
    type: float
    default: 0
  baseline:
    description:
      - An earlier result of this module (or any mapping with C(requests), C(errors),
        C(p50_ms), C(p95_ms)) measured the same way, typically before the change.
    type: dict
  baseline_url:
    description:
      - URL of the release being replaced, probed in alternating rounds with I(url) in this
        same run; its result is the baseline and wins over I(baseline).
    type: str
  baseline_label:
    description: What the baseline is, as the verdict names it.
    type: str
    default: the baseline
  latency_tolerance:
    description: Share by which the p95 may exceed the baseline's (strategy 2.1's 30%).
    type: float
    default: 0.3
  latency_min_delta_ms:
    description: A rise smaller than this (ms) never fails, whatever the share.
    type: float
    default: 20
  confirm:
    description:
      - When latency alone fails, probe up to three more times, 0.3 s apart (the baseline URL
        too), and fail only when most of them breach. One slow moment on a busy host is not a
        regression.
    type: bool
    default: true
  expect_release:
    description: Every response must name this release (JSON key C(release) or X-Release).
    type: str
  only_hosts:
    description:
      - Judge only responses whose C(X-Host) header names one of these hosts; responses from
        other hosts are counted in C(excluded_hosts) instead. Lets a run whose unreachable host
        still serves the old release verify the hosts it did change.
    type: list
    elements: str
  fail_on_breach:
    description: Fail when a threshold is breached. When false, report the verdict only.
    type: bool
    default: true
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
- name: Gate a rolled-back blue/green pool against the release it replaced
  knowngood.runbooks.http_probe:
    url: http://127.0.0.1:25101/
    baseline_url: http://127.0.0.1:25100/
    baseline_label: the replaced release v2
    expect_release: v1
    max_error_ratio: 0.01

- name: Probe before the change, to judge the same probe after it
  knowngood.runbooks.http_probe:
    url: http://127.0.0.1:25080/
    fail_on_breach: false
  register: before

- name: Probe after the change against it, with the SLO as a cap
  knowngood.runbooks.http_probe:
    url: http://127.0.0.1:25080/
    baseline: "{{ before }}"
    baseline_label: the service before the change
    max_p95_ms: 800
"""

RETURN = r"""
passed:
  description: Whether every threshold held.
  returned: always
  type: bool
requests:
  description: Requests sent.
  returned: always
  type: int
errors:
  description: Failed requests.
  returned: always
  type: int
error_ratio:
  description: errors / requests.
  returned: always
  type: float
p50_ms:
  description: Median latency.
  returned: always
  type: float
p95_ms:
  description: 95th percentile latency.
  returned: always
  type: float
latency:
  description:
    - The latency verdict; C(judged) is C(baseline) or C(no baseline), C(detail) names the
      measured value, the baseline and the tolerance.
  returned: always
  type: dict
  sample:
    held: true
    judged: baseline
    p95_ms: 12.1
    baseline_p95_ms: 10.4
    limit_ms: 35.4
    detail: "p95 12.1 ms vs the replaced release 10.4 ms (+16%; tolerance 30% or 20 ms,
      limit 35.4 ms)"
baseline:
  description: The baseline judged against (requests, errors, p50_ms, p95_ms), or null.
  returned: always
  type: dict
confirmed:
  description: The first probe's latency verdict when latency alone failed and was probed again.
  returned: always
  type: dict
releases:
  description: Count of responses per release named.
  returned: always
  type: dict
excluded_hosts:
  description: Per host outside I(only_hosts), the releases its responses named.
  returned: always
  type: dict
breaches:
  description: Human-readable list of the thresholds that did not hold.
  returned: always
  type: list
  elements: str
"""

from ansible_collections.knowngood.runbooks.plugins.module_utils import module_main
from ansible_collections.knowngood.runbooks.plugins.module_utils.http_probe import (
    ARGUMENT_SPEC,
    run,
)


def main():
    module_main.main(run, ARGUMENT_SPEC, pass_params=True)


if __name__ == "__main__":
    main()
