#!/usr/bin/python
# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: http_probe
short_description: Send a burst of HTTP requests and judge error rate, latency and release
version_added: "0.1.0"
description:
  - The health gate of a deploy and the stability check of a rollback. Sends I(requests)
    requests with I(concurrency) workers, then fails if the share of failed requests exceeds
    I(max_error_ratio), the 95th percentile latency exceeds I(max_p95_ms), or a response names
    a release other than I(expect_release).
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
    description: Highest acceptable 95th percentile latency in milliseconds.
    type: float
    default: 100
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
- name: Gate the canary on error rate and latency
  knowngood.runbooks.http_probe:
    url: http://127.0.0.1:25100/
    requests: 40
    max_error_ratio: 0.05
    max_p95_ms: 80
    expect_release: v42
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

import json
import threading
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.six.moves.urllib.error import HTTPError
from ansible.module_utils.urls import Request, make_context


def one_request(url, timeout, context):
    """(status, release, milliseconds, host) of one GET; status None when nothing answered."""
    started = time.time()
    headers = {}
    try:
        # A fresh Request per call keeps the probes independent (no shared cookie jar), like a
        # plain urlopen; the TLS context comes ready-made because building one takes longer
        # than a request and would count as latency.
        response = Request(use_netrc=False, context=context).open("GET", url, timeout=timeout)
        code = response.getcode()
        body = response.read()
        headers = response.headers
    except HTTPError as exc:
        code = exc.code
        body = exc.read()
        headers = exc.headers or {}
    except Exception:
        return None, None, (time.time() - started) * 1000.0, None
    release = headers.get("X-Release")
    if release is None:
        try:
            release = json.loads(body).get("release")
        except (ValueError, AttributeError):
            release = None
    return code, release, (time.time() - started) * 1000.0, headers.get("X-Host")


def percentile(values, share):
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))
    return round(ordered[index], 2)


def probe(url, total, concurrency, timeout):
    results = []
    lock = threading.Lock()
    remaining = [total]
    context = make_context()

    def worker():
        while True:
            with lock:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
            started = time.time()
            try:
                outcome = one_request(url, timeout, context)
            except Exception:  # a probe that breaks counts as a failed request, never as none
                outcome = (None, None, (time.time() - started) * 1000.0, None)
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=worker) for _index in range(max(1, concurrency))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def judge(results, params):
    excluded = {}
    if params["only_hosts"]:
        # Hosts outside the run (unreachable ones) are reported, not judged: their release
        # is exactly what the run could not change.
        for _code, rel, _ms, host in results:
            if host and host not in params["only_hosts"]:
                excluded.setdefault(host, {})
                excluded[host][rel or "unknown"] = excluded[host].get(rel or "unknown", 0) + 1
        results = [r for r in results if not r[3] or r[3] in params["only_hosts"]]
    latencies = [r[2] for r in results]
    errors = sum(1 for code, _rel, _ms, _host in results if code is None or code >= 500)
    releases = {}
    for code, rel, _ms, _host in results:
        if code is None:
            continue  # nothing answered: already an error, it names no release
        key = rel or "unknown"
        releases[key] = releases.get(key, 0) + 1
    ratio = float(errors) / len(results) if results else 1.0
    p95 = percentile(latencies, 0.95)
    breaches = []
    if ratio > params["max_error_ratio"]:
        breaches.append("error ratio %.3f > %.3f" % (ratio, params["max_error_ratio"]))
    if p95 > params["max_p95_ms"]:
        breaches.append("p95 latency %.1f ms > %.1f ms" % (p95, params["max_p95_ms"]))
    expected = params["expect_release"]
    if expected and set(releases) != set([expected]):
        breaches.append("responses from %s, expected only %s" % (releases, expected))
    return {
        "passed": not breaches,
        "requests": len(results),
        "errors": errors,
        "error_ratio": round(ratio, 4),
        "p50_ms": percentile(latencies, 0.5),
        "p95_ms": p95,
        "releases": releases,
        "breaches": breaches,
        "excluded_hosts": excluded,
    }


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", required=True),
            requests=dict(type="int", default=40),
            concurrency=dict(type="int", default=4),
            timeout=dict(type="float", default=5),
            max_error_ratio=dict(type="float", default=0.01),
            max_p95_ms=dict(type="float", default=100),
            expect_release=dict(type="str"),
            only_hosts=dict(type="list", elements="str"),
            fail_on_breach=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if params["requests"] < 1:
        module.fail_json(msg="requests must be at least 1")
    verdict = judge(
        probe(params["url"], params["requests"], params["concurrency"], params["timeout"]), params
    )
    verdict["url"] = params["url"]
    if not verdict["passed"] and params["fail_on_breach"]:
        module.fail_json(
            msg="%s failed its gate: %s" % (params["url"], "; ".join(verdict["breaches"])),
            changed=False,
            **verdict,
        )
    module.exit_json(changed=False, **verdict)


if __name__ == "__main__":
    main()
