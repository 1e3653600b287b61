# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The metrics around a run, captured into its audit record so its incident report needs no
Prometheus later.

The audit callback calls capture() when the run ends, before the record is written and
sealed: the same range queries the report draws (error ratio, p95 latency), from a margin
before the run's start to the moment of capture. What is kept is numbers, the window and the
Prometheus server by scheme, host and port only (never a user, password, path or query).
"""

import json
import math
import time
from urllib.error import HTTPError
from urllib.parse import urlencode, urlsplit

from ansible.module_utils.urls import open_url

SERIES = {
    "error_ratio": 'sum(rate(app_requests_total{code=~"5..",job="app"}[10s]))'
    ' / sum(rate(app_requests_total{job="app"}[10s]))',
    "p95_ms": "1000 * histogram_quantile(0.95, sum by (le) "
    '(rate(app_request_duration_seconds_bucket{job="app"}[10s])))',
}
MARGIN_BEFORE_S = 120.0
MAX_POINTS = 240


def source(url):
    """The server a capture came from, without anything secret a URL can carry."""
    parts = urlsplit(url or "")
    host = parts.hostname or ""
    return "%s://%s%s" % (parts.scheme, host, ":%s" % parts.port if parts.port else "")


def query_range(url, query, start, end, step, timeout=3.0):
    """[(epoch, value)] of the first series of a range query; raises OSError or ValueError."""
    params = urlencode({"query": query, "start": start, "end": end, "step": step})
    with open_url(
        "%s/api/v1/query_range?%s" % (url.rstrip("/"), params), timeout=timeout, use_proxy=False
    ) as resp:
        body = json.loads(resp.read())
    if body.get("status") != "success":
        raise ValueError("prometheus: %s" % body.get("error"))
    result = body.get("data", {}).get("result", [])
    if not result:
        return []
    points = []
    for t, v in result[0]["values"]:
        value = float(v)
        if not (math.isnan(value) or math.isinf(value)):
            points.append((float(t), value))
    return points


def capture(url, started, finished, now=None, margin_before=MARGIN_BEFORE_S, timeout=3.0):
    """{source, window: {before, start, end, after}, step_s, series, errors} for a run that
    ran from `started` to `finished` (epoch seconds); after is the moment of capture."""
    now = time.time() if now is None else now
    # Prometheus keeps times to the millisecond and answers at start + k * step: a window on
    # whole milliseconds (widened outwards, so it still covers the margin and the wait after
    # the run) holds every point it returns, its first one included.
    before = math.floor((started - margin_before) * 1000) / 1000.0
    after = math.ceil(max(now, finished) * 1000) / 1000.0
    step = max(2.0, round((after - before) / MAX_POINTS, 1))
    out = {
        "source": source(url),
        "captured_at": now,
        "window": {"before": before, "start": started, "end": finished, "after": after},
        "step_s": step,
        "series": {},
        "errors": {},
    }
    unreachable = ""
    for name, query in SERIES.items():
        if unreachable:  # one wait for a server that is not there, not one per series
            out["errors"][name] = unreachable
            continue
        try:
            points = query_range(url, query, before, after, step, timeout)
        except Exception as exc:  # an unreachable Prometheus costs the chart, never the record
            out["errors"][name] = "%s: %s" % (type(exc).__name__, str(exc)[:160])
            if isinstance(exc, OSError) and not isinstance(exc, HTTPError):
                unreachable = out["errors"][name]
            continue
        out["series"][name] = [[round(t, 3), round(v, 6)] for t, v in points]
    return out
