# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Post-rollback verification (strategy section 6): four families of read-only checks.

Every check returns the same shape: {"check", "family", "status", "numbers", "detail"} with
status pass, fail, inconclusive or skipped. "inconclusive" means the evidence is missing (no
samples in a window, nothing to compare with), never that a threshold was breached: a caller
decides whether missing evidence blocks (verify_fail_on_inconclusive), a breach always does.

- metrics(): PromQL against Prometheus for the judged window [since, until] and a baseline
  window ending at baseline_end; error ratio, p95 latency and throughput.
- logs(): error lines per minute in log files, judged window against the baseline window.
- data(): pg_amcheck, checksum failures since `since`, row counts and sentinel queries.
- ux(): HTTP smoke checks with expected status and content, latency judged against the same
  pages measured before the change (latency.judge; "no baseline" when there is none).

Latency against a window of another minute measures the machine as much as the service where
the two share it (the lab): metrics_speed_decides false reports such a breach as inconclusive.
"""

import datetime
import functools
import glob
import json
import math
import os
import re
import time
import urllib.error
import urllib.parse

from ansible.module_utils.urls import open_url
from ansible_collections.knowngood.runbooks.plugins.module_utils import latency, postgres

STATUSES = ("pass", "fail", "inconclusive", "skipped")
DEFAULT_LOG_PATTERNS = [
    r"\b(ERROR|FATAL|PANIC)\b",
    r"\[(error|crit|alert|emerg)\]",
    r"level=error",
    r"Traceback \(most recent call last\)",
    r'HTTP/\d(?:\.\d)?" 5\d\d ',
]
MAX_LOG_BYTES = 32 * 1024 * 1024  # the newest 32 MiB of each file: a log is read from its end


class VerifyError(Exception):
    """Bad input for a verification; main() turns it into fail_json."""


def result(check, family, status, numbers=None, detail=""):
    return {
        "check": check,
        "family": family,
        "status": status,
        "numbers": numbers or {},
        "detail": detail,
    }


def parse_time(value):
    """ISO-8601 (or epoch seconds) to an aware UTC datetime; naive values are UTC."""
    if isinstance(value, (int, float)):
        return datetime.datetime.fromtimestamp(value, datetime.UTC)
    text = str(value).strip()
    if re.match(r"^\d+(\.\d+)?$", text):
        return datetime.datetime.fromtimestamp(float(text), datetime.UTC)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.datetime.fromisoformat(text)
    except ValueError as exc:
        raise VerifyError("not an ISO-8601 time: %r" % value) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.astimezone(datetime.UTC)


def windows(since, until, baseline_end, baseline_minutes):
    """The judged window and the baseline window, as aware datetimes; refuses nonsense."""
    if until <= since:
        raise VerifyError(
            "since %s is not before until %s" % (since.isoformat(), until.isoformat())
        )
    if baseline_end > since:
        raise VerifyError("the baseline must end at or before since")
    if baseline_minutes <= 0:
        raise VerifyError("baseline_minutes must be positive")
    return (since, until), (
        baseline_end - datetime.timedelta(minutes=baseline_minutes),
        baseline_end,
    )


# ------------------------------------------------------------------ metrics


def prom_query(url, query, at, timeout=5.0):
    """Instant query at `at`; the first sample's value as float, None when there is none."""
    params = urllib.parse.urlencode({"query": query, "time": "%.3f" % at.timestamp()})
    try:
        with open_url(
            "%s/api/v1/query?%s" % (url.rstrip("/"), params), timeout=timeout, use_proxy=False
        ) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise VerifyError(
            "prometheus refused %s: HTTP %s %s" % (query, exc.code, exc.read()[:200])
        ) from exc
    except (OSError, ValueError) as exc:
        raise VerifyError("prometheus at %s unreachable: %s" % (url, exc)) from exc
    if body.get("status") != "success":
        raise VerifyError("prometheus: %s" % body.get("error"))
    data = body["data"]["result"]
    if not data:
        return None
    value = float(data[0]["value"][1])
    return None if math.isnan(value) or math.isinf(value) else value


def scrape_interval(url, timeout=5.0):
    """The global scrape_interval in seconds from Prometheus's loaded configuration."""
    try:
        with open_url(
            "%s/api/v1/status/config" % url.rstrip("/"), timeout=timeout, use_proxy=False
        ) as resp:
            text = json.loads(resp.read())["data"]["yaml"]
    except (OSError, ValueError, KeyError) as exc:
        raise VerifyError("prometheus at %s unreachable: %s" % (url, exc)) from exc
    match = re.search(r"scrape_interval:\s*(\d+)(ms|s|m)", text)
    if not match:
        return 60.0  # Prometheus's own default
    return float(match.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[match.group(2)]


def metric_queries(selector, seconds):
    rng = "[%ds]" % max(1, int(seconds))
    sel = "{%s}" % selector if selector else ""
    return {
        "requests": "sum(increase(app_requests_total%s%s))" % (sel, rng),
        "errors": "sum(increase(app_errors_total%s%s))" % (sel, rng),
        "p95_seconds": "histogram_quantile(0.95, sum by (le) "
        "(rate(app_request_duration_seconds_bucket%s%s)))" % (sel, rng),
    }


def sample_window(url, selector, start, end, scrape_seconds):
    """Requests, errors, error ratio, p95 and throughput over [start, end]; None where missing.

    A window shorter than two scrapes holds at most one sample per series and rate() has
    nothing to work with: such a window is reported as missing, not as zero.
    """
    seconds = (end - start).total_seconds()
    if seconds < 2 * scrape_seconds:
        return {
            "seconds": round(seconds, 1),
            "requests": None,
            "errors": None,
            "error_ratio": None,
            "p95_ms": None,
            "throughput_rps": None,
        }
    queries = metric_queries(selector, seconds)
    requests = prom_query(url, queries["requests"], end)
    errors = prom_query(url, queries["errors"], end)
    p95 = prom_query(url, queries["p95_seconds"], end)
    ratio = None
    if requests:
        ratio = (errors or 0.0) / requests
    return {
        "seconds": round(seconds, 1),
        "requests": None if requests is None else round(requests, 1),
        "errors": None if errors is None else round(errors, 1),
        "error_ratio": None if ratio is None else round(ratio, 4),
        "p95_ms": None if p95 is None else round(p95 * 1000.0, 1),
        "throughput_rps": None if requests is None else round(requests / seconds, 3),
    }


def metrics(params, judged, baseline):
    """Three checks (error rate, latency, throughput) against limits and the baseline."""
    url = params["prometheus_url"]
    now = sample_window(url, params["selector"], judged[0], judged[1], params["scrape_seconds"])
    base = sample_window(
        url, params["selector"], baseline[0], baseline[1], params["scrape_seconds"]
    )
    return [
        _error_rate(params, now, base),
        _latency(params, now, base),
        _throughput(params, now, base),
    ]


def _error_rate(params, now, base):
    # Error rate: the absolute budget, or the baseline's own rate times the tolerance when the
    # service already erred that much before the incident (it is not the rollback's doing).
    if now["error_ratio"] is None:
        return result(
            "metrics_error_rate",
            "metrics",
            "inconclusive",
            {"after": now, "baseline": base},
            "no requests recorded in the judged window",
        )
    else:
        limit = params["max_error_ratio"]
        if base["error_ratio"] is not None:
            limit = max(limit, base["error_ratio"] * params["tolerance"])
        status = "pass" if now["error_ratio"] <= limit else "fail"
        return result(
            "metrics_error_rate",
            "metrics",
            status,
            {
                "error_ratio": now["error_ratio"],
                "baseline_error_ratio": base["error_ratio"],
                "limit": round(limit, 4),
                "requests": now["requests"],
                "errors": now["errors"],
            },
            "error ratio %.4f, limit %.4f" % (now["error_ratio"], limit),
        )


def _latency(params, now, base):
    if now["p95_ms"] is None:
        return result(
            "metrics_latency",
            "metrics",
            "inconclusive",
            {"after": now, "baseline": base},
            "no latency samples in the judged window",
        )
    else:
        slow = latency.judge(
            now["p95_ms"],
            {"requests": base["requests"], "errors": base["errors"], "p95_ms": base["p95_ms"]},
            label="the baseline window",
            tolerance=params["latency_tolerance"],
            min_delta_ms=params["latency_min_delta_ms"],
            cap_ms=params["max_p95_ms"],
        )
        return result(
            "metrics_latency",
            "metrics",
            _speed_status(slow["held"], params),
            {
                "p95_ms": now["p95_ms"],
                "baseline_p95_ms": base["p95_ms"],
                "limit_ms": slow["limit_ms"],
                "judged": slow["judged"],
            },
            slow["detail"] + _speed_note(slow["held"], params),
        )


def _throughput(params, now, base):
    # Throughput only means something next to a baseline, and over a window long enough to
    # hold user traffic rather than the smoke checks' own requests.
    if now["seconds"] < params["min_window_seconds"]:
        return result(
            "metrics_throughput",
            "metrics",
            "inconclusive",
            {
                "throughput_rps": now["throughput_rps"],
                "baseline_throughput_rps": base["throughput_rps"],
                "window_seconds": now["seconds"],
                "min_window_seconds": params["min_window_seconds"],
            },
            "judged window of %.0f s is too short to judge throughput" % now["seconds"],
        )
    elif now["throughput_rps"] is None or not base["throughput_rps"]:
        return result(
            "metrics_throughput",
            "metrics",
            "inconclusive",
            {
                "throughput_rps": now["throughput_rps"],
                "baseline_throughput_rps": base["throughput_rps"],
            },
            "no baseline traffic to compare with"
            if now["throughput_rps"] is not None
            else "no requests recorded in the judged window",
        )
    else:
        share = now["throughput_rps"] / base["throughput_rps"]
        held = share >= params["min_throughput_share"]
        return result(
            "metrics_throughput",
            "metrics",
            _speed_status(held, params),
            {
                "throughput_rps": now["throughput_rps"],
                "baseline_throughput_rps": base["throughput_rps"],
                "share": round(share, 3),
                "min_share": params["min_throughput_share"],
            },
            "%.2f req/s, %.0f%% of the baseline" % (now["throughput_rps"], 100 * share)
            + _speed_note(held, params),
        )


def _speed_status(held, params):
    if held:
        return "pass"
    return "fail" if params["metrics_speed_decides"] else "inconclusive"


def _speed_note(held, params):
    if held or params["metrics_speed_decides"]:
        return ""
    return (
        "; not decisive: a window of another minute on a shared machine measures the machine "
        "(metrics_speed_decides is off)"
    )


# ------------------------------------------------------------------ logs

_STAMPS = (
    # PostgreSQL log_line_prefix %m, ISO with a T or a space, optional zone
    (
        re.compile(
            r"(\d{4}-\d\d-\d\d)[ T](\d\d:\d\d:\d\d(?:\.\d+)?)\s?(UTC|GMT|Z|[+-]\d\d:?\d\d)?"
        ),
        "iso",
    ),
    # nginx error log: 2026/11/28 21:05:28 (server local time)
    (re.compile(r"^(\d{4})/(\d\d)/(\d\d) (\d\d:\d\d:\d\d)"), "nginx_error"),
    # nginx access log: [28/Nov/2026:21:05:28 +0000]
    (re.compile(r"\[(\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4})\]"), "nginx_access"),
)


def line_time(line):
    """The timestamp a log line starts with (or carries), as aware UTC; None when it has none."""
    for regex, kind in _STAMPS:
        match = regex.search(line[:200])
        if not match:
            continue
        try:
            if kind == "iso":
                zone = match.group(3) or ""
                if zone in ("", "UTC", "GMT", "Z"):
                    zone = "+00:00"
                elif ":" not in zone:
                    zone = zone[:3] + ":" + zone[3:]
                return parse_time("%sT%s%s" % (match.group(1), match.group(2), zone))
            if kind == "nginx_error":
                local = datetime.datetime.strptime(
                    "%s-%s-%s %s" % match.groups(), "%Y-%m-%d %H:%M:%S"
                )
                return local.astimezone(datetime.UTC)
            return datetime.datetime.strptime(match.group(1), "%d/%b/%Y:%H:%M:%S %z").astimezone(
                datetime.UTC
            )
        except (ValueError, VerifyError):
            return None
    return None


def scan_file(path, regexes, judged, baseline, samples, max_samples):
    """Count error lines per window. A line without a timestamp (a traceback's body, a
    program that prints none) takes the time of the line before it; lines before the file's
    first timestamp cannot be placed and are counted as untimed."""
    counts = {"judged": 0, "baseline": 0, "untimed": 0, "lines": 0}
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        if size > MAX_LOG_BYTES:
            handle.seek(size - MAX_LOG_BYTES)
            handle.readline()  # drop the partial first line
        current = None
        for raw in handle:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            counts["lines"] += 1
            stamp = line_time(line)
            if stamp is not None:
                current = stamp
            if not any(regex.search(line) for regex in regexes):
                continue
            if current is None:
                counts["untimed"] += 1
            elif judged[0] <= current <= judged[1]:
                counts["judged"] += 1
                if len(samples) < max_samples:
                    samples.append("%s: %s" % (os.path.basename(path), line[:160]))
            elif baseline[0] <= current < baseline[1]:
                counts["baseline"] += 1
    return counts


def logs(params, judged, baseline):
    try:
        regexes = [re.compile(p) for p in params["log_patterns"] or DEFAULT_LOG_PATTERNS]
    except re.error as exc:
        raise VerifyError("bad log pattern: %s" % exc) from exc
    files = sorted(
        {f for pattern in params["log_files"] for f in glob.glob(pattern) if os.path.isfile(f)}
    )
    if not files:
        return [
            result(
                "logs_error_rate",
                "logs",
                "inconclusive",
                {"files": 0},
                "no log file matched %s" % params["log_files"],
            )
        ]
    per_file, samples = {}, []
    for path in files:
        try:
            counts = scan_file(path, regexes, judged, baseline, samples, params["max_samples"])
        except OSError as exc:
            counts = {"error": str(exc)}
        per_file[os.path.basename(path)] = counts
    judged_total = sum(c.get("judged", 0) for c in per_file.values())
    baseline_total = sum(c.get("baseline", 0) for c in per_file.values())
    minutes = max((judged[1] - judged[0]).total_seconds() / 60.0, 1.0 / 60)
    base_minutes = (baseline[1] - baseline[0]).total_seconds() / 60.0
    rate = judged_total / minutes
    base_rate = baseline_total / base_minutes
    limit = max(params["max_log_errors_per_minute"], base_rate * params["tolerance"])
    status = "pass" if rate <= limit else "fail"
    noisy = {name: c["judged"] for name, c in per_file.items() if c.get("judged")}
    return [
        result(
            "logs_error_rate",
            "logs",
            status,
            {
                "errors": judged_total,
                "per_minute": round(rate, 2),
                "baseline_errors": baseline_total,
                "baseline_per_minute": round(base_rate, 2),
                "limit_per_minute": round(limit, 2),
                "files": len(files),
                "by_file": noisy,
                "untimed": sum(c.get("untimed", 0) for c in per_file.values()),
            },
            "%d error lines (%.2f/min, limit %.2f/min)%s"
            % (
                judged_total,
                rate,
                limit,
                "; e.g. " + " | ".join(samples) if samples and status == "fail" else "",
            ),
        )
    ]


# ------------------------------------------------------------------ data


def psql(db, sql, timeout=60):
    return postgres.psql(_target(db), sql, db["dbname"], timeout=timeout, connect_timeout=5)


def _target(db):
    return postgres.Target.from_params(db)


def data(params, judged):
    db = params["database"]
    code, stdout, stderr = psql(db, "SELECT current_setting('data_checksums'), pg_is_in_recovery()")
    if code != 0:
        return [
            result(
                "data_reachable",
                "data",
                "fail",
                {},
                "database unreachable: %s" % stderr.strip()[:300],
            )
        ]
    out = [_data_amcheck(db, params)] if params["amcheck"] else []
    if stdout.strip().split("|")[0] == "on":
        out.append(_data_checksums(db, judged))
    else:
        out.append(result("data_checksums", "data", "skipped", {}, "data_checksums is off"))
    out += [_data_rows(db, spec) for spec in params["row_counts"]]
    out += [_data_sentinel(db, index, spec) for index, spec in enumerate(params["sentinels"])]
    return out


def _data_amcheck(db, params):
    excluded = list(params.get("amcheck_exclude") or [])
    started = time.time()
    found = postgres.amcheck(
        _target(db), db["dbname"], excluded, timeout=params["amcheck_timeout"], error=VerifyError
    )
    clean = found["exit_code"] == 0
    return result(
        "data_amcheck",
        "data",
        "pass" if clean else "fail",
        {
            "exit_code": found["exit_code"],
            "findings": found["finding_count"],
            "seconds": round(time.time() - started, 2),
            "excluded": excluded,
        },
        ("pg_amcheck clean" + (" (not checked: %s)" % ", ".join(excluded) if excluded else ""))
        if clean
        else "pg_amcheck: " + " | ".join(found["findings"][:5])[:600],
    )


def _data_checksums(db, judged):
    code, stdout, _stderr = psql(
        db,
        "SELECT coalesce(sum(checksum_failures), 0), "
        "coalesce(max(checksum_last_failure)::text, '') "
        "FROM pg_stat_database",
    )
    failures, last = (stdout.strip().split("|") + [""])[:2] if code == 0 else ("", "")
    recent = bool(last) and parse_time(last.replace(" ", "T", 1)) >= judged[0]
    return result(
        "data_checksums",
        "data",
        "fail" if code != 0 or recent else "pass",
        {"checksum_failures_total": int(failures or 0), "last_failure": last or None},
        "checksum failure at %s" % last
        if recent
        else "no checksum failure since %s" % judged[0].isoformat(),
    )


def _data_rows(db, spec):
    table = spec.get("table", "")
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$", table):
        raise VerifyError("row_counts: bad table name %r" % table)
    code, stdout, stderr = psql(db, "SELECT count(*) FROM %s" % table)
    count = int(stdout.strip()) if code == 0 else None
    minimum = int(spec.get("min", 1))
    ok = count is not None and count >= minimum
    return result(
        "data_rows_%s" % table,
        "data",
        "pass" if ok else "fail",
        {"rows": count, "min": minimum},
        "%s rows in %s (min %d)" % (count, table, minimum) if code == 0 else stderr.strip()[:300],
    )


def _data_sentinel(db, index, spec):
    name = spec.get("name") or "sentinel_%d" % (index + 1)
    code, stdout, stderr = psql(db, spec["sql"])
    value = stdout.strip()
    ok = code == 0 and value == "t"
    return result(
        "data_%s" % name,
        "data",
        "pass" if ok else "fail",
        {"value": value or None},
        "returned %s" % (value or "nothing") if code == 0 else stderr.strip()[:300],
    )


# ------------------------------------------------------------------ user experience


def page_name(page):
    return page.get("name") or page.get("path", "/").strip("/") or "root"


def probe_page(url, page, params, requests):
    """(numbers, breaches, latency verdict) of `requests` GETs of one smoke page, latency
    against its baseline."""
    want_status = int(page.get("status", 200))
    want_text = page.get("expect", "")
    answers = latency.probe([url], requests, params["concurrency"], params["timeout"])[0]
    wrong_status = sum(1 for a in answers if a.status != want_status)
    wrong_body = sum(
        1
        for a in answers
        if a.status == want_status and want_text not in a.body.decode("utf-8", "replace")
    )
    numbers = latency.measure([a.ms for a in answers], wrong_status)
    slow = latency.judge(
        numbers["p95_ms"],
        (params["ux_baseline"] or {}).get(page_name(page)),
        label=params["ux_baseline_label"],
        tolerance=params["latency_tolerance"],
        min_delta_ms=params["latency_min_delta_ms"],
        cap_ms=float(page.get("max_p95_ms", params["max_p95_ms"]) or 0),
    )
    breaches = []
    if wrong_status:
        codes = sorted({str(a.status) for a in answers if a.status != want_status})
        breaches.append(
            "%d/%d answered %s, not %d" % (wrong_status, len(answers), ",".join(codes), want_status)
        )
    if wrong_body:
        breaches.append("%d/%d lacked %r" % (wrong_body, len(answers), want_text))
    if not slow["held"]:
        breaches.append(slow["detail"])
    numbers.update(
        url=url,
        wrong_status=wrong_status,
        wrong_content=wrong_body,
        judged=slow["judged"],
        baseline_p95_ms=slow["baseline_p95_ms"],
        limit_ms=slow["limit_ms"],
        cap_ms=slow["cap_ms"],
    )
    return numbers, breaches, slow


def ux(params):
    out = []
    for page in params["pages"]:
        url = params["base_url"].rstrip("/") + page.get("path", "/")
        numbers, breaches, slow, first = latency.confirmed(
            functools.partial(probe_page, url, page, params),
            params["requests"],
            params["confirm"],
        )
        if first:
            numbers["first_probe"] = first["detail"]  # reported beside the deciding probe
            numbers["confirmations"] = slow.get("confirmations", [])
        out.append(
            result(
                "ux_%s" % page_name(page),
                "ux",
                "fail" if breaches else "pass",
                numbers,
                "; ".join(breaches) or "%d requests, %s" % (numbers["requests"], slow["detail"]),
            )
        )
    return out


def ux_measures(checks, pages):
    """{page name: its numbers} of this run's smoke checks: a later run's ux_baseline."""
    by_check = {check["check"]: check for check in checks if check["family"] == "ux"}
    out = {}
    for page in pages:
        check = by_check.get("ux_%s" % page_name(page))
        if check:
            numbers = check["numbers"]
            out[page_name(page)] = {
                key: numbers.get(key) for key in ("requests", "errors", "p50_ms", "p95_ms")
            }
    return out


# ------------------------------------------------------------------ verdict


def verdict(checks):
    """fail if any check failed; inconclusive if none failed but some lacked evidence."""
    statuses = {c["status"] for c in checks}
    if "fail" in statuses:
        return "fail"
    if "inconclusive" in statuses:
        return "inconclusive"
    return "pass"


def summary(checks):
    counts = {status: 0 for status in STATUSES}
    for check in checks:
        counts[check["status"]] += 1
    return counts
