"""Verdicts about the service, not the machine: with both cores busy, a healthy lab passes and
a broken one still fails (issue 14). Latency is judged against a baseline measured the same
way in the same run; with none, only errors and content are judged, never an absolute number."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def verify_results(lab, since: float) -> list[dict]:
    files = sorted((lab.root / "audit").glob("*.verify.json"), key=lambda p: p.stat().st_mtime)
    return [json.loads(p.read_text()) for p in files if p.stat().st_mtime >= since]


def checks(result: dict) -> dict[str, dict]:
    return {check["check"]: check for check in result["checks"]}


def test_verify_passes_a_healthy_lab_three_times_in_a_row_under_load(lab, cpu_hogs):
    lab.seed("v1")
    started = time.time()
    seen = []
    for attempt in range(3):
        run = lab.playbook("verify", verify_checks=["metrics", "data", "ux"])
        assert run.rc == 0, (attempt, run.output[-3000:])
        result = verify_results(lab, started)[-1]
        found = checks(result)
        for page in ("ux_home", "ux_db"):
            assert found[page]["status"] == "pass", found[page]
            # Standalone, the pages have no "before": latency is not judged, and says so.
            assert found[page]["numbers"]["judged"] == "no baseline", found[page]
            assert "no baseline" in found[page]["detail"]
        # Prometheus against another minute's window reports here, it does not decide.
        assert found["metrics_latency"]["status"] in ("pass", "inconclusive"), found
        assert found["metrics_error_rate"]["status"] in ("pass", "inconclusive"), found
        seen.append("/".join(f"{found[p]['numbers']['p95_ms']:.0f}" for p in ("ux_home", "ux_db")))
    print(f"\nMEASURED verify under load, ux p95 home/db ms: {', '.join(seen)}")


def test_verify_still_fails_the_bad_release_under_load(lab, cpu_hogs):
    lab.seed("v1", "v2")
    run = lab.playbook("verify", verify_checks=["ux"])
    assert run.rc != 0
    assert "answered 500" in run.output, run.output[-3000:]


def test_recover_system_on_a_healthy_lab_under_load_is_judged_against_its_own_baseline(
    lab, cpu_hogs
):
    lab.seed("v1")
    run = lab.playbook("recover-system", rollback_reason="fairness drill")
    assert run.rc == 0, run.output[-4000:]
    report = sorted((lab.root / "audit").glob("*.recover-system.json"), key=_mtime)[-1]
    report = json.loads(report.read_text())
    assert report["classification"]["class"] == "none"
    found = checks(report["verify"])
    for page in ("ux_home", "ux_db"):
        assert found[page]["status"] == "pass", found[page]
        assert found[page]["numbers"]["judged"] == "baseline", found[page]
        assert "the page before the recovery changed anything" in found[page]["detail"]
    print(
        "\nMEASURED recover-system under load: "
        + "; ".join(f"{p}: {found[p]['detail']}" for p in ("ux_home", "ux_db"))
    )


def _mtime(path: Path) -> float:
    return path.stat().st_mtime
