#!/usr/bin/python
# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: service_verify
short_description: Verify a service after a rollback or a recovery (metrics, logs, data, UX)
version_added: "0.1.0"
description:
  - Runs the checks of strategy section 6 that are named in I(checks) and returns one result
    per check - C(pass), C(fail), C(inconclusive) (evidence missing) or C(skipped) - with its
    numbers.
  - C(metrics) queries Prometheus for error ratio, p95 latency and throughput in the judged
    window [I(since), I(until)] and in the baseline window of I(baseline_minutes) ending at
    I(baseline_end). A window shorter than two scrape intervals, or without samples, is
    C(inconclusive), never C(pass).
  - C(logs) counts lines matching I(log_patterns) in I(log_files), per minute, in both windows.
  - C(data) runs pg_amcheck, looks for checksum failures since I(since), counts rows and
    evaluates sentinel queries.
  - C(ux) sends smoke requests to I(pages) under I(base_url) and judges status, content and
    p95 latency; the latency against I(ux_baseline), the same pages measured the same way
    before the change (C(ux_measures) of an earlier call). Without a usable baseline (none,
    or a complete outage) latency is not judged and the check says C(no baseline).
  - Latency is never judged against an absolute number; I(max_p95_ms) is the operator's SLO,
    a cap that fails on its own.
  - Read-only; runs the same in check mode.
options:
  checks:
    description: Families of checks to run.
    type: list
    elements: str
    choices: [metrics, logs, data, ux]
    default: [metrics, logs, data, ux]
  since:
    description: Start of the judged window (ISO-8601 or epoch seconds).
    type: str
    required: true
  until:
    description: End of the judged window; default now.
    type: str
  baseline_end:
    description: End of the baseline window; default I(since).
    type: str
  baseline_minutes:
    description: Length of the baseline window in minutes.
    type: float
    default: 15
  tolerance:
    description:
      - How much worse than its baseline a measure may be when the baseline itself was above
        the absolute limit (error ratio, p95 latency, log errors per minute).
    type: float
    default: 1.5
  prometheus_url:
    description: Prometheus base URL (metrics).
    type: str
  selector:
    description: PromQL label matchers for the application's series, without braces.
    type: str
    default: ""
  scrape_seconds:
    description:
      - Prometheus scrape interval; a window shorter than two of them has no rate. C(0) reads
        the global scrape_interval from Prometheus's configuration.
    type: float
    default: 0
  max_error_ratio:
    description: Error ratio that always passes (metrics).
    type: float
    default: 0.01
  max_p95_ms:
    description:
      - The SLO cap on p95 latency in milliseconds (metrics, and each page unless it has its
        own C(max_p95_ms)); C(0) turns it off. It fails on its own, whatever the baseline says.
    type: float
    default: 0
  latency_tolerance:
    description:
      - Share by which a p95 may exceed its baseline's (strategy 2.1's 30%), provided it also
        exceeds it by more than I(latency_min_delta_ms) and the baseline's own p95-p50 spread.
    type: float
    default: 0.3
  latency_min_delta_ms:
    description: A latency rise smaller than this (ms) never fails.
    type: float
    default: 20
  metrics_speed_decides:
    description:
      - Whether a latency or throughput breach measured against the baseline window fails
        (C(true)) or is reported C(inconclusive) with its numbers (C(false)). Turn it off
        where the service shares its machine with the controller (the lab), since another
        minute's window then measures the machine's load as much as the service.
    type: bool
    default: true
  min_throughput_share:
    description: Smallest share of the baseline throughput that passes (metrics).
    type: float
    default: 0.5
  min_window_seconds:
    description: Shortest judged window whose throughput is compared with the baseline (metrics).
    type: float
    default: 30
  log_files:
    description: Glob patterns of log files (logs).
    type: list
    elements: str
    default: []
  log_patterns:
    description: Regular expressions of an error line (logs); empty uses the built-in set.
    type: list
    elements: str
    default: []
  max_log_errors_per_minute:
    description: Error lines per minute that always pass (logs).
    type: float
    default: 0
  max_samples:
    description: Error lines quoted in the result (logs), each cut to 160 characters.
    type: int
    default: 3
  database:
    description:
      - Connection for the data checks - C(host), C(port), C(user), C(dbname), C(bin_dir) and
        optionally C(password).
    type: dict
  amcheck:
    description: Run pg_amcheck on the database (data).
    type: bool
    default: true
  amcheck_exclude:
    description:
      - Relations pg_amcheck leaves out, as pg_amcheck patterns (C(schema.table), C(*) and
        C(?) wildcards); a table's indexes and TOAST go with it. The result names them.
    type: list
    elements: str
    default: []
  amcheck_timeout:
    description: Seconds pg_amcheck may take.
    type: int
    default: 600
  row_counts:
    description: Tables and their smallest acceptable row count, as C({table, min}) (data).
    type: list
    elements: dict
    default: []
  sentinels:
    description: C({name, sql}) queries that must return true (data).
    type: list
    elements: dict
    default: []
  base_url:
    description: Base URL of the user-facing entry point, the load balancer (ux).
    type: str
  pages:
    description: C({path, expect, status, max_p95_ms, name}) smoke checks (ux).
    type: list
    elements: dict
    default: []
  ux_baseline:
    description:
      - Per page name, the same page measured before the change (C(requests), C(errors),
        C(p50_ms), C(p95_ms)), as the C(ux_measures) an earlier call returned.
    type: dict
    default: {}
  ux_baseline_label:
    description: What I(ux_baseline) is, as the verdict names it.
    type: str
    default: the page before the change
  confirm:
    description:
      - When a page fails on latency alone, probe it up to three more times and fail only
        when most of them breach (ux).
    type: bool
    default: true
  requests:
    description: Requests per page (ux).
    type: int
    default: 20
  concurrency:
    description: Parallel clients per page (ux).
    type: int
    default: 4
  timeout:
    description: Seconds per request (ux).
    type: float
    default: 5
  settle:
    description:
      - Before querying Prometheus, wait one scrape interval so requests just made (the smoke
        checks) are in its samples; the judged window then ends after the wait.
    type: bool
    default: false
  label:
    description: Name added to every check as C(host), for results gathered from several hosts.
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
- name: Judge the five minutes since the rollback against the hour before the incident
  knowngood.runbooks.service_verify:
    checks: [metrics, ux]
    since: "2026-11-28T14:05:00+00:00"
    baseline_end: "2026-11-28T13:50:00+00:00"
    baseline_minutes: 60
    prometheus_url: http://prometheus:9090
    base_url: http://lb.internal
    pages:
      - {path: /, expect: orders, max_p95_ms: 300}

- name: Measure the pages before a change
  knowngood.runbooks.service_verify:
    checks: [ux]
    since: "2026-11-28T14:05:00+00:00"
    base_url: http://lb.internal
    pages: [{name: home, path: /, expect: orders}]
  register: before

- name: Judge the same pages after it against that baseline
  knowngood.runbooks.service_verify:
    checks: [ux]
    since: "2026-11-28T14:05:00+00:00"
    base_url: http://lb.internal
    pages: [{name: home, path: /, expect: orders}]
    ux_baseline: "{{ before.ux_measures }}"
"""

RETURN = r"""
verdict:
  description:
    - C(fail) if any check failed, C(inconclusive) if none failed but one lacked evidence,
      else C(pass).
  returned: always
  type: str
checks:
  description: One entry per check - check, family, status, numbers, detail.
  returned: always
  type: list
  elements: dict
summary:
  description: Number of checks per status.
  returned: always
  type: dict
ux_measures:
  description: Per smoke page, its requests, errors, p50_ms and p95_ms (a later ux_baseline).
  returned: always
  type: dict
window:
  description: The judged and the baseline window, ISO-8601.
  returned: always
  type: dict
duration_ms:
  description: Wall time in milliseconds.
  returned: always
  type: int
"""

import datetime
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.knowngood.runbooks.plugins.module_utils import latency
from ansible_collections.knowngood.runbooks.plugins.module_utils import service_verify as sv


def require(module, params, names, family):
    missing = [name for name in names if not params[name]]
    if missing:
        module.fail_json(msg="checks %s need %s" % (family, ", ".join(missing)))


ARGUMENT_SPEC = dict(
    checks=dict(
        type="list",
        elements="str",
        choices=["metrics", "logs", "data", "ux"],
        default=["metrics", "logs", "data", "ux"],
    ),
    since=dict(type="str", required=True),
    until=dict(type="str"),
    baseline_end=dict(type="str"),
    baseline_minutes=dict(type="float", default=15),
    tolerance=dict(type="float", default=1.5),
    prometheus_url=dict(type="str"),
    selector=dict(type="str", default=""),
    scrape_seconds=dict(type="float", default=0),
    max_error_ratio=dict(type="float", default=0.01),
    max_p95_ms=dict(type="float", default=0),
    latency_tolerance=dict(type="float", default=latency.TOLERANCE),
    latency_min_delta_ms=dict(type="float", default=latency.MIN_DELTA_MS),
    metrics_speed_decides=dict(type="bool", default=True),
    min_throughput_share=dict(type="float", default=0.5),
    min_window_seconds=dict(type="float", default=30),
    log_files=dict(type="list", elements="str", default=[]),
    log_patterns=dict(type="list", elements="str", default=[]),
    max_log_errors_per_minute=dict(type="float", default=0),
    max_samples=dict(type="int", default=3),
    database=dict(type="dict"),
    amcheck=dict(type="bool", default=True),
    amcheck_exclude=dict(type="list", elements="str", default=[]),
    amcheck_timeout=dict(type="int", default=600),
    row_counts=dict(type="list", elements="dict", default=[]),
    sentinels=dict(type="list", elements="dict", default=[]),
    base_url=dict(type="str"),
    pages=dict(type="list", elements="dict", default=[]),
    ux_baseline=dict(type="dict", default={}),
    ux_baseline_label=dict(type="str", default="the page before the change"),
    confirm=dict(type="bool", default=True),
    requests=dict(type="int", default=20),
    concurrency=dict(type="int", default=4),
    timeout=dict(type="float", default=5),
    settle=dict(type="bool", default=False),
    label=dict(type="str"),
)


def check_inputs(module, params):
    """Fail the module unless the chosen checks have what they need."""
    checks = params["checks"]
    if "metrics" in checks:
        require(module, params, ["prometheus_url"], "metrics")
    if "data" in checks:
        require(module, params, ["database"], "data")
        if params["database"]:
            for key in ("host", "port", "user", "dbname", "bin_dir"):
                if not params["database"].get(key):
                    module.fail_json(msg="database needs %s" % key)
            if params["database"].get("password"):
                module.no_log_values.add(params["database"]["password"])
    if "ux" in checks:
        require(module, params, ["base_url", "pages"], "ux")
    if params["requests"] < 1 or params["concurrency"] < 1:
        module.fail_json(msg="requests and concurrency must be at least 1")


def run_checks(params):
    """(results, judged window, baseline window) of the chosen checks; raises sv.VerifyError."""
    checks = params["checks"]
    now = datetime.datetime.now(datetime.UTC)
    since = sv.parse_time(params["since"])
    until = sv.parse_time(params["until"]) if params["until"] else now
    baseline_end = sv.parse_time(params["baseline_end"]) if params["baseline_end"] else since
    judged, baseline = sv.windows(since, until, baseline_end, params["baseline_minutes"])
    results = []
    # Smoke requests first: they are also the traffic the metrics then see.
    if "ux" in checks:
        results += sv.ux(params)
    if "data" in checks:
        results += sv.data(params, judged)
    if "logs" in checks:
        results += sv.logs(params, judged, baseline)
    if "metrics" in checks:
        if not params["scrape_seconds"]:
            params["scrape_seconds"] = sv.scrape_interval(params["prometheus_url"])
        if params["settle"] and not params["until"]:
            time.sleep(params["scrape_seconds"] + 0.5)
            until = datetime.datetime.now(datetime.UTC)
            judged, baseline = sv.windows(since, until, baseline_end, params["baseline_minutes"])
        results += sv.metrics(params, judged, baseline)
    return results, judged, baseline


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = module.params
    started = time.time()
    check_inputs(module, params)
    try:
        results, judged, baseline = run_checks(params)
    except sv.VerifyError as exc:
        module.fail_json(msg=str(exc))
    if params["label"]:
        for check in results:
            check["host"] = params["label"]
    module.exit_json(
        changed=False,
        verdict=sv.verdict(results),
        checks=results,
        summary=sv.summary(results),
        ux_measures=sv.ux_measures(results, params["pages"]),
        window={
            "since": judged[0].isoformat(),
            "until": judged[1].isoformat(),
            "baseline_start": baseline[0].isoformat(),
            "baseline_end": baseline[1].isoformat(),
        },
        duration_ms=int((time.time() - started) * 1000),
    )


if __name__ == "__main__":
    main()
