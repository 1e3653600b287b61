"""Rollback decision against the lab's real Prometheus (scrape interval 2 s)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import knowngood

pytestmark = pytest.mark.lab

PHASE_S = 7  # three or four scrapes per window


def paced(url: str, rps: float, seconds: float) -> None:
    """Requests at a fixed rate (4 threads), so throughput measures the service, not the client."""
    stop = time.monotonic() + seconds

    def worker() -> None:
        interval, nxt = 4.0 / rps, time.monotonic()
        while nxt < stop:
            with contextlib.suppress(urllib.error.HTTPError, OSError):
                urllib.request.urlopen(url, timeout=5).read()
            nxt += interval
            time.sleep(max(0.0, nxt - time.monotonic()))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def decide(at: float, window: int, baseline_offset: float) -> dict:
    done = knowngood(
        "run",
        "decide",
        "--quiet",
        "-e",
        json.dumps({"at": at, "window": window, "baseline_offset": int(baseline_offset)}),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    path = done.stdout.rsplit("audit record:", 1)[1].strip().splitlines()[0]
    record = json.loads(Path(path).read_text())
    event = next(e for e in record["events"] if e["action"].endswith("rollback_decision"))
    return event["result"]


def test_bad_release_is_high_severity_good_release_fires_nothing_no_data_is_inconclusive(lab):
    url = lab.status["lb_url"] + "/"
    phases = []
    for releases in (("v1",), ("v1", "v1.1"), ("v1", "v1.1", "v2")):
        lab.seed(*releases)
        start = time.time()
        paced(url, 20, PHASE_S)
        phases.append((start, time.time()))
    time.sleep(2.5)  # one more scrape after the last request

    def between(base: tuple, cur: tuple) -> dict:
        window = int(min(cur[1] - cur[0], base[1] - base[0])) - 1
        return decide(cur[1], window, cur[1] - base[1])

    good = between(phases[0], phases[1])
    assert good["verdict"] == "no_rollback", good["msg"]
    assert good["inconclusive"] == [] and good["approvals_required"] == []

    bad = between(phases[1], phases[2])
    trig = {t["trigger"]: t for t in bad["triggers"]}
    assert bad["verdict"] == "rollback" and bad["severity"] == "high", bad["msg"]
    assert bad["action"] == "mandatory_immediate"
    assert bad["approvals_required"] == ["cto", "infra_lead"]
    assert trig["latency_degradation"]["fired"] and trig["latency_degradation"]["change_pct"] > 30
    assert trig["error_rate"]["severity"] == "high" and trig["error_rate"]["error_ratio"] > 0.2

    # A window before the lab existed has no samples at all.
    empty = decide(phases[0][0] - 7200, 6, 600)
    assert empty["verdict"] == "inconclusive", empty["msg"]
    assert "error_rate" in empty["inconclusive"] and empty["fired"] == []
