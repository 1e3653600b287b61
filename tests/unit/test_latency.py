"""The one latency judge, and the probe that measures a target and its baseline together."""

from __future__ import annotations

import http.server
import threading
import time

import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils import latency
from ansible_collections.knowngood.runbooks.plugins.module_utils import service_verify as sv

BASE = {"requests": 40, "errors": 0, "p50_ms": 100.0, "p95_ms": 120.0}


def test_a_rise_within_thirty_percent_passes_and_names_everything():
    verdict = latency.judge(150.0, BASE, label="the replaced release")
    assert verdict["held"] and verdict["judged"] == "baseline"
    assert verdict["limit_ms"] == 156.0
    assert verdict["detail"] == (
        "p95 150.0 ms vs the replaced release 120.0 ms (+25%; tolerance 30% or 20 ms, "
        "limit 156.0 ms)"
    )


def test_a_rise_beyond_thirty_percent_fails():
    verdict = latency.judge(160.0, BASE, label="the service before the change")
    assert not verdict["held"]
    assert verdict["detail"].startswith("p95 160.0 ms exceeds the service before the change")


def test_a_small_absolute_rise_is_noise_whatever_the_share():
    fast = {"requests": 40, "errors": 0, "p50_ms": 4.0, "p95_ms": 5.0}
    assert latency.judge(24.0, fast)["held"]  # +380 % but only 19 ms
    assert not latency.judge(26.0, fast)["held"]


def test_a_noisy_baseline_widens_the_allowance_to_its_own_spread():
    noisy = {"requests": 40, "errors": 0, "p50_ms": 50.0, "p95_ms": 300.0}
    verdict = latency.judge(540.0, noisy)
    assert verdict["held"] and verdict["limit_ms"] == 550.0
    assert not latency.judge(560.0, noisy)["held"]


@pytest.mark.parametrize(
    ("baseline", "why"),
    [
        (None, "none was measured"),
        ({"requests": 0, "errors": 0, "p95_ms": None}, "none was measured"),
        ({"requests": 20, "errors": 15, "p50_ms": 1.0, "p95_ms": 2.0}, "failed 15 of 20"),
    ],
)
def test_no_usable_baseline_means_latency_is_not_judged(baseline, why):
    verdict = latency.judge(5000.0, baseline, label="the pages after the gate")
    assert verdict["held"] and verdict["judged"] == "no baseline"
    assert why in verdict["detail"] and "the pages after the gate" in verdict["detail"]


def test_the_cap_fails_with_or_without_a_baseline():
    assert not latency.judge(900.0, None, cap_ms=800)["held"]
    verdict = latency.judge(130.0, BASE, cap_ms=125)
    assert not verdict["held"] and "cap 125.0 ms" in verdict["detail"]
    assert latency.judge(900.0, None, cap_ms=0)["held"]


class _Slow(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the stdlib's name
        if self.path == "/slow":
            time.sleep(0.05)
        body = b'{"release": "%s"}' % self.path.strip("/").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_probing_two_urls_alternates_them_and_keeps_their_answers_apart():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        fast, slow = latency.probe([base + "/fast", base + "/slow"], 12, concurrency=3)
    finally:
        server.shutdown()
    assert len(fast) == len(slow) == 12
    assert {latency.release_of(a) for a in fast} == {"fast"}
    assert {latency.release_of(a) for a in slow} == {"slow"}
    assert min(a.ms for a in slow) >= 50.0 > latency.percentile([a.ms for a in fast], 0.5)


def _page_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


UX = {
    "requests": 8,
    "concurrency": 2,
    "timeout": 5.0,
    "max_p95_ms": 0,
    "latency_tolerance": 0.3,
    "latency_min_delta_ms": 25.0,
    "ux_baseline_label": "the page before the change",
    "confirm": True,
}


def test_smoke_pages_are_judged_against_their_baseline_and_confirmed_once():
    server, base = _page_server()
    pages = [{"name": "slow", "path": "/slow", "expect": "slow"}]
    try:
        before = sv.ux(dict(UX, base_url=base, pages=pages, ux_baseline={}))
        unjudged = before[0]
        measures = sv.ux_measures(before, pages)
        fast_before = {"slow": {"requests": 8, "errors": 0, "p50_ms": 1.0, "p95_ms": 2.0}}
        slower = sv.ux(dict(UX, base_url=base, pages=pages, ux_baseline=fast_before))[0]
        same = sv.ux(dict(UX, base_url=base, pages=pages, ux_baseline=measures))[0]
    finally:
        server.shutdown()
    assert unjudged["status"] == "pass" and unjudged["numbers"]["judged"] == "no baseline"
    assert measures["slow"]["requests"] == 8 and measures["slow"]["p95_ms"] >= 50.0
    # 50 ms against 2 ms: failed, confirmed by the first two of three later probes
    assert slower["status"] == "fail" and slower["numbers"]["requests"] == 8
    assert len(slower["numbers"]["confirmations"]) == 2
    assert "exceeds the page before the change 2.0 ms" in slower["detail"]
    assert slower["numbers"]["first_probe"].startswith("p95 ")
    assert same["status"] == "pass" and same["numbers"]["judged"] == "baseline", same


def test_metrics_speed_against_another_window_reports_rather_than_decides_when_told(monkeypatch):
    windows = iter(
        [
            {
                "requests": 100,
                "errors": 0,
                "error_ratio": 0.0,
                "p95_ms": 400.0,
                "seconds": 60,
                "throughput_rps": 0.5,
            },
            {
                "requests": 100,
                "errors": 0,
                "error_ratio": 0.0,
                "p95_ms": 20.0,
                "seconds": 600,
                "throughput_rps": 5.0,
            },
        ]
        * 2
    )
    monkeypatch.setattr(sv, "sample_window", lambda *args: next(windows))
    params = {
        "prometheus_url": "http://127.0.0.1:9",
        "selector": "",
        "scrape_seconds": 2,
        "max_error_ratio": 0.01,
        "tolerance": 1.5,
        "max_p95_ms": 0,
        "latency_tolerance": 0.3,
        "latency_min_delta_ms": 25.0,
        "min_throughput_share": 0.5,
        "min_window_seconds": 30,
    }
    decided = {
        c["check"]: c for c in sv.metrics(dict(params, metrics_speed_decides=True), (0, 1), (0, 1))
    }
    reported = {
        c["check"]: c for c in sv.metrics(dict(params, metrics_speed_decides=False), (0, 1), (0, 1))
    }
    assert decided["metrics_latency"]["status"] == "fail"
    assert decided["metrics_throughput"]["status"] == "fail"
    assert "exceeds the baseline window 20.0 ms" in decided["metrics_latency"]["detail"]
    assert reported["metrics_latency"]["status"] == "inconclusive"
    assert reported["metrics_throughput"]["status"] == "inconclusive"
    assert "metrics_speed_decides is off" in reported["metrics_latency"]["detail"]
    assert reported["metrics_error_rate"]["status"] == "pass"


def test_a_latency_only_breach_holds_only_when_most_later_probes_see_it(monkeypatch):
    base = {"requests": 20, "errors": 0, "p50_ms": 9.0, "p95_ms": 10.0}
    slow = latency.judge(90.0, base)
    fast = latency.judge(11.0, base)
    assert not slow["held"] and fast["held"]
    asked = []
    pauses = []
    monkeypatch.setattr(latency.time, "sleep", pauses.append)

    def probe_once(verdicts, other):
        def once(requests):
            asked.append(requests)
            verdict = dict(verdicts[len(asked) - 1])
            breaches = other.get(len(asked), []) + ([] if verdict["held"] else [verdict["detail"]])
            return {"probe": len(asked)}, breaches, verdict

        return once

    def run(verdicts, other=None, **kwargs):
        asked.clear()
        pauses.clear()
        return latency.confirmed(probe_once(verdicts, other or {}), 20, **kwargs)

    # a stall in the first probe and one later: two of three later probes held, so it passes
    outcome, breaches, verdict, first = run([slow, fast, slow, fast])
    assert asked == [20, 20, 20, 20] and outcome == {"probe": 4}
    assert breaches == [] and verdict["held"] and first["p95_ms"] == 90.0
    assert pauses == [latency.CONFIRM_PAUSE_S] * 3
    assert [c.split(":")[0] for c in verdict["confirmations"]] == ["held", "breached", "held"]
    # a real regression is seen by every probe: it holds after two, the third is not needed
    outcome, breaches, verdict, first = run([slow, slow, slow, fast])
    assert asked == [20, 20, 20] and breaches == [verdict["detail"]] and not verdict["held"]
    assert len(verdict["confirmations"]) == 2 and first["p95_ms"] == 90.0
    # the first two later probes agree it held: done
    _o, breaches, verdict, _f = run([slow, fast, fast])
    assert asked == [20, 20, 20] and breaches == []
    # a later probe that errors decides at once, whatever latency said
    _o, breaches, verdict, _f = run([slow, fast, slow], {2: ["3/20 answered 500"]})
    assert asked == [20, 20] and breaches == ["3/20 answered 500"]
    # confirm off, or a first breach that is not latency alone: one probe
    *_rest, first = run([slow], confirm=False)
    assert asked == [20] and first is None and pauses == []
    _outcome, breaches, _verdict, first = run([slow], {1: ["3/20 answered 500"]})
    assert asked == [20] and first is None and len(breaches) == 2
