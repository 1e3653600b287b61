# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Rollback decision (strategy section 2): the section 2.1 triggers, measured or declared, mapped
to a severity, an action and the approvals the section 2.2 matrix requires.

Measured triggers come from Prometheus (instant PromQL queries at a chosen time, the current
window against a baseline window). A trigger whose data is missing is inconclusive, never
"fine": an inconclusive decision notifies and does not act.
"""

import json
import math
import time

from ansible.module_utils.six.moves.urllib.parse import urlencode
from ansible.module_utils.urls import open_url
from ansible_collections.knowngood.runbooks.plugins.module_utils import latency

SEVERITIES = ("none", "low", "medium", "high")
DECLARED_TRIGGERS = ("security", "data_integrity", "ux_disruption")

# Strategy section 2.2, the default; inventories carry it as knowngood_decision_matrix.
DEFAULT_MATRIX = {
    "low": {"action": "optional", "approvals": ["team_lead"]},
    "medium": {"action": "recommended", "approvals": ["cto"]},
    "high": {"action": "mandatory_immediate", "approvals": ["cto", "infra_lead"]},
}

# Queries over the app's metrics (app_requests_total, app_request_duration_seconds); {window}
# is the evaluation window in seconds, {selector} the extra label matchers.
DEFAULT_QUERIES = {
    "error_ratio": (
        'sum(rate(app_requests_total{{code=~"5..",{selector}}}[{window}s]))'
        " / sum(rate(app_requests_total{{{selector}}}[{window}s]))"
    ),
    "latency_p95_s": (
        "histogram_quantile(0.95, sum by (le) "
        "(rate(app_request_duration_seconds_bucket{{{selector}}}[{window}s])))"
    ),
    "throughput_rps": "sum(rate(app_requests_total{{{selector}}}[{window}s]))",
    # no `up` series at all is missing data, not "nothing down"
    "targets_down": "count(up{{{selector}}} == 0) or (count(up{{{selector}}}) * 0)",
}
DEFAULT_SELECTOR = 'job="app"'

DEFAULT_THRESHOLDS = {
    # error ratio at or above which the error trigger takes each severity
    "error_ratio": {"low": 0.001, "medium": 0.01, "high": 0.05},
    # section 2.1: performance degradation above 30% is an immediate trigger; smaller changes
    # are within what a healthy service drifts by
    "degradation_pct": {"high": latency.TOLERANCE * 100.0},
    # a latency rise smaller than this is noise, whatever its percentage (3 ms -> 5 ms); the
    # verification's probes use the same floor (latency.judge)
    "min_latency_delta_ms": latency.MIN_DELTA_MS,
    # below this baseline rate a throughput comparison says nothing
    "min_baseline_rps": 0.5,
    # any scrape target down is a critical system error
    "targets_down": {"high": 1},
}

DECLARED_DEFAULT_SEVERITY = {
    "security": "high",
    "data_integrity": "high",
    "ux_disruption": "medium",
}


class DecisionError(Exception):
    """Bad input to the decision (unknown severity, malformed matrix)."""


def prom_query(url, query, at, timeout=5.0):
    """One instant query -> float, or None when there is no data (empty vector, NaN)."""
    params = urlencode({"query": query, "time": "%.3f" % at})
    resp = open_url("%s/api/v1/query?%s" % (url.rstrip("/"), params), timeout=timeout)
    body = json.loads(resp.read().decode("utf-8"))
    if body.get("status") != "success":
        raise DecisionError("prometheus: %s" % body.get("error", "query failed"))
    result = body["data"]["result"]
    if not result:
        return None
    value = float(result[0]["value"][1])
    if math.isnan(value) or math.isinf(value):
        return None
    return value


def measure(url, queries, selector, window, at, timeout=5.0):
    """{metric: value or None} for the window ending at `at`; errors are reported per metric."""
    values, errors = {}, {}
    for name, template in sorted(queries.items()):
        query = template.format(window=int(window), selector=selector)
        try:
            values[name] = prom_query(url, query, at, timeout)
        except Exception as exc:  # unreachable, bad query: missing data, said why
            values[name] = None
            errors[name] = str(exc)
    return values, errors


def _grade(value, levels):
    """Highest severity whose threshold value reaches."""
    found = "none"
    for severity in ("low", "medium", "high"):
        if severity in levels and value >= levels[severity]:
            found = severity
    return found


def _trigger(name, severity, detail, **numbers):
    out = {"trigger": name, "fired": severity not in ("none", None), "severity": severity or "none"}
    out["inconclusive"] = severity is None
    out["detail"] = detail
    out.update(numbers)
    return out


def _pct(new, old):
    return round((new - old) / old * 100.0, 1)


MEASURED = ("targets_down", "error_ratio", "latency_p95_s", "throughput_rps")
# What a closed-loop probe measures: its own request rate is not the service's throughput.
PROBE_MEASURED = ("targets_down", "error_ratio", "latency_p95_s")


def from_probes(results):
    """Window values from http_probe results (one per host in a batch), or None without any.

    Errors are pooled over every request; the latency is the worst host's p95 (one slow host
    is the degradation a batch gate is for); a host whose every request failed is down."""
    results = [r for r in results or [] if r and r.get("requests")]
    if not results:
        return None
    requests = sum(int(r["requests"]) for r in results)
    errors = sum(int(r.get("errors", 0)) for r in results)
    answered = [r for r in results if int(r.get("errors", 0)) < int(r["requests"])]
    return {
        "targets_down": len(results) - len(answered),
        "error_ratio": float(errors) / requests,
        "latency_p95_s": (max(float(r["p95_ms"]) for r in answered) / 1000.0 if answered else None),
        "hosts": len(results),
        "requests": requests,
    }


def _critical_errors(current, baseline, th):
    down = current.get("targets_down")
    if down is None:
        return _trigger("critical_errors", None, "no data on scrape targets")
    sev = _grade(down, th["targets_down"])
    return _trigger(
        "critical_errors", sev, "%d scrape target(s) down" % down, targets_down=int(down)
    )


def _error_rate(current, baseline, th):
    ratio = current.get("error_ratio")
    if ratio is None:
        return _trigger("error_rate", None, "no requests in the window")
    sev = _grade(ratio, th["error_ratio"])
    return _trigger(
        "error_rate",
        sev,
        "error ratio %.4f (baseline %s)" % (ratio, _fmt(baseline.get("error_ratio"))),
        error_ratio=round(ratio, 4),
        baseline_error_ratio=_round(baseline.get("error_ratio"), 4),
        thresholds=th["error_ratio"],
    )


def _latency_degradation(current, baseline, th):
    lat, lat0 = current.get("latency_p95_s"), baseline.get("latency_p95_s")
    if lat is None or not lat0:
        return _trigger(
            "latency_degradation", None, "no latency data in the current or baseline window"
        )
    pct = _pct(lat, lat0)
    delta_ms = (lat - lat0) * 1000.0
    sev = _grade(pct, th["degradation_pct"]) if delta_ms >= th["min_latency_delta_ms"] else "none"
    return _trigger(
        "latency_degradation",
        sev,
        "p95 %.1f ms vs baseline %.1f ms (%+.1f%%)" % (lat * 1000, lat0 * 1000, pct),
        p95_ms=round(lat * 1000, 1),
        baseline_p95_ms=round(lat0 * 1000, 1),
        change_pct=pct,
        thresholds=th["degradation_pct"],
    )


def _throughput_degradation(current, baseline, th):
    rps, rps0 = current.get("throughput_rps"), baseline.get("throughput_rps")
    if rps is None or rps0 is None or rps0 < th["min_baseline_rps"]:
        return _trigger("throughput_degradation", None, "too little traffic in the baseline window")
    drop = -_pct(rps, rps0)
    sev = _grade(drop, th["degradation_pct"])
    return _trigger(
        "throughput_degradation",
        sev,
        "%.1f req/s vs baseline %.1f req/s (%+.1f%%)" % (rps, rps0, -drop),
        rps=round(rps, 2),
        baseline_rps=round(rps0, 2),
        change_pct=-drop,
        thresholds=th["degradation_pct"],
    )


# Each measured metric and the trigger it drives, in the order triggers are reported.
_MEASURED_TRIGGERS = (
    ("targets_down", _critical_errors),
    ("error_ratio", _error_rate),
    ("latency_p95_s", _latency_degradation),
    ("throughput_rps", _throughput_degradation),
)


def _declared(item):
    name = item.get("trigger")
    if name not in DECLARED_TRIGGERS:
        raise DecisionError(
            "declared trigger %r is not one of %s" % (name, ", ".join(DECLARED_TRIGGERS))
        )
    sev = item.get("severity") or DECLARED_DEFAULT_SEVERITY[name]
    if sev not in SEVERITIES[1:]:
        raise DecisionError("declared %s: severity %r is not low, medium or high" % (name, sev))
    return _trigger(name, sev, item.get("note") or "declared by the operator", declared=True)


def evaluate(current, baseline, thresholds, declared=None, measured=MEASURED):
    """Triggers from measured values (current and baseline windows) and declared issues.

    `measured` names the metrics the source can measure; the others are not evaluated."""
    th = dict(DEFAULT_THRESHOLDS)
    th.update(thresholds or {})
    triggers = [
        judge(current, baseline, th) for metric, judge in _MEASURED_TRIGGERS if metric in measured
    ]
    triggers.extend(_declared(item) for item in declared or [])
    return triggers


def decide(triggers, matrix):
    """Overall verdict from the triggers and the matrix (section 2.2)."""
    matrix = validate_matrix(matrix)
    fired = [t for t in triggers if t["fired"]]
    inconclusive = [t["trigger"] for t in triggers if t["inconclusive"]]
    severity = "none"
    for trig in fired:
        if SEVERITIES.index(trig["severity"]) > SEVERITIES.index(severity):
            severity = trig["severity"]
    if fired:
        verdict = "rollback"
    elif inconclusive:
        verdict = "inconclusive"  # notify, don't act
    else:
        verdict = "no_rollback"
    row = matrix.get(severity, {"action": "none", "approvals": []})
    return {
        "verdict": verdict,
        "severity": severity,
        "action": row["action"],
        "approvals_required": list(row["approvals"]),
        "fired": [t["trigger"] for t in fired],
        "inconclusive": inconclusive,
    }


def validate_matrix(matrix):
    matrix = matrix or DEFAULT_MATRIX
    for severity in ("low", "medium", "high"):
        row = matrix.get(severity)
        if not isinstance(row, dict) or "action" not in row or "approvals" not in row:
            raise DecisionError(
                "decision matrix: row %r needs 'action' and 'approvals' (got %r)" % (severity, row)
            )
        if not isinstance(row["approvals"], list):
            raise DecisionError("decision matrix: %s approvals must be a list of roles" % severity)
    unknown = sorted(set(matrix) - set(SEVERITIES[1:]))
    if unknown:
        raise DecisionError("decision matrix: unknown severities %s" % unknown)
    return matrix


def run_decision(
    url,
    window,
    baseline_offset,
    at=None,
    queries=None,
    selector=None,
    thresholds=None,
    declared=None,
    matrix=None,
    timeout=5.0,
):
    """Measure both windows, evaluate, decide: the whole of section 2 in one call."""
    if window < 4:
        raise DecisionError("window must be at least 4 seconds (two scrapes)")
    if baseline_offset < window:
        raise DecisionError("baseline_offset must be at least the window, or the windows overlap")
    at = float(at) if at else time.time()
    qs = dict(DEFAULT_QUERIES)
    qs.update(queries or {})
    sel = selector if selector is not None else DEFAULT_SELECTOR
    current, errors = measure(url, qs, sel, window, at, timeout) if url else ({}, {"all": "no url"})
    baseline, base_errors = (
        measure(url, qs, sel, window, at - baseline_offset, timeout) if url else ({}, {})
    )
    triggers = evaluate(current, baseline, thresholds, declared)
    out = decide(triggers, matrix)
    out.update(
        {
            "source": "prometheus",
            "triggers": triggers,
            "current": current,
            "baseline": baseline,
            "window_s": int(window),
            "evaluated_at": at,
            "baseline_at": at - baseline_offset,
            "query_errors": dict(
                errors, **dict(("baseline_" + k, v) for k, v in base_errors.items())
            ),
        }
    )
    return out


def probe_decision(probes, baseline_probes, thresholds=None, declared=None, matrix=None):
    """The same section 2 evaluation over a deploy batch's probes: the probes of the batch
    after its switch against the same probes before it (the release it replaces)."""
    current = from_probes(probes)
    if current is None:
        raise DecisionError("probes: no probe results for the current window")
    baseline = from_probes(baseline_probes) or {}
    triggers = evaluate(current, baseline, thresholds, declared, measured=PROBE_MEASURED)
    out = decide(triggers, matrix)
    out.update(
        {
            "triggers": triggers,
            "current": current,
            "baseline": baseline,
            "source": "probes",
            "query_errors": {},
        }
    )
    return out


def _round(value, digits):
    return None if value is None else round(value, digits)


def _fmt(value):
    return "n/a" if value is None else "%.4f" % value
