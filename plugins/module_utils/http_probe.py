# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What knowngood.runbooks.http_probe does: its argument spec, the probe and its verdict.

The module and its in-process action (plugins/action/http_probe.py) both call run().
"""

import functools

from ansible_collections.knowngood.runbooks.plugins.module_utils import latency


def failed(answer):
    return answer.status is None or answer.status >= 500


def judge(answers, params, baseline=None):
    """The verdict on one probe's answers, latency against `baseline` (a measure or None)."""
    excluded = {}
    if params["only_hosts"]:
        # Hosts outside the run (unreachable ones) are reported, not judged: their release
        # is exactly what the run could not change.
        kept = []
        for answer in answers:
            host = answer.headers.get("X-Host")
            if host and host not in params["only_hosts"]:
                rel = latency.release_of(answer) or "unknown"
                excluded.setdefault(host, {})
                excluded[host][rel] = excluded[host].get(rel, 0) + 1
            else:
                kept.append(answer)
        answers = kept
    errors = sum(1 for answer in answers if failed(answer))
    releases = {}
    for answer in answers:
        if answer.status is None:
            continue  # nothing answered: already an error, it names no release
        key = latency.release_of(answer) or "unknown"
        releases[key] = releases.get(key, 0) + 1
    ratio = float(errors) / len(answers) if answers else 1.0
    numbers = latency.measure([answer.ms for answer in answers], errors)
    slow = latency.judge(
        numbers["p95_ms"],
        baseline,
        label=params["baseline_label"],
        tolerance=params["latency_tolerance"],
        min_delta_ms=params["latency_min_delta_ms"],
        cap_ms=params["max_p95_ms"],
    )
    breaches = []
    if ratio > params["max_error_ratio"]:
        breaches.append("error ratio %.3f > %.3f" % (ratio, params["max_error_ratio"]))
    expected = params["expect_release"]
    if expected and set(releases) != set([expected]):
        breaches.append("responses from %s, expected only %s" % (releases, expected))
    if not slow["held"]:
        breaches.append(slow["detail"])
    return dict(
        numbers,
        passed=not breaches,
        error_ratio=round(ratio, 4),
        releases=releases,
        breaches=breaches,
        excluded_hosts=excluded,
        latency=slow,
        baseline=baseline,
        latency_only=latency.latency_only(breaches, slow),
    )


def run_probe(params, total):
    """(verdict, breaches, latency verdict) of one probe of `total` requests per URL."""
    urls = [params["url"]] + ([params["baseline_url"]] if params["baseline_url"] else [])
    answers = latency.probe(urls, total, params["concurrency"], params["timeout"])
    baseline = params["baseline"]
    if params["baseline_url"]:
        theirs = answers[1]
        baseline = latency.measure(
            [answer.ms for answer in theirs], sum(1 for answer in theirs if failed(answer))
        )
    verdict = judge(answers[0], params, baseline)
    verdict.pop("latency_only")
    return verdict, verdict["breaches"], verdict["latency"]


ARGUMENT_SPEC = dict(
    url=dict(type="str", required=True),
    requests=dict(type="int", default=40),
    concurrency=dict(type="int", default=4),
    timeout=dict(type="float", default=5),
    max_error_ratio=dict(type="float", default=0.01),
    max_p95_ms=dict(type="float", default=0),
    baseline=dict(type="dict"),
    baseline_url=dict(type="str"),
    baseline_label=dict(type="str", default="the baseline"),
    latency_tolerance=dict(type="float", default=latency.TOLERANCE),
    latency_min_delta_ms=dict(type="float", default=latency.MIN_DELTA_MS),
    confirm=dict(type="bool", default=True),
    expect_release=dict(type="str"),
    only_hosts=dict(type="list", elements="str"),
    fail_on_breach=dict(type="bool", default=True),
)


def run(params):
    """(failed, result) of one probe; the module and its in-process action both call this."""
    if params["requests"] < 1:
        return True, {"msg": "requests must be at least 1", "changed": False}
    if params["latency_tolerance"] < 0 or params["latency_min_delta_ms"] < 0:
        return True, {
            "msg": "latency_tolerance and latency_min_delta_ms must not be negative",
            "changed": False,
        }
    verdict, _breaches, _latency, first = latency.confirmed(
        functools.partial(run_probe, params), params["requests"], params["confirm"]
    )
    verdict.update(url=params["url"], confirmed=first, changed=False)
    if not verdict["passed"] and params["fail_on_breach"]:
        verdict["msg"] = "%s failed its gate: %s" % (params["url"], "; ".join(verdict["breaches"]))
        return True, verdict
    return False, verdict
