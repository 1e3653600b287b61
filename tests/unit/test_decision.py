"""Rollback decision logic (strategy section 2): triggers, severities, the matrix."""

from __future__ import annotations

import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils import decision

BASE = {"targets_down": 0, "error_ratio": 0.0, "latency_p95_s": 0.008, "throughput_rps": 20.0}


def verdict(current, baseline=BASE, declared=None, thresholds=None):
    triggers = decision.evaluate(current, baseline, thresholds, declared)
    return decision.decide(triggers, None), {t["trigger"]: t for t in triggers}


def test_healthy_numbers_fire_nothing():
    out, _ = verdict(dict(BASE, latency_p95_s=0.012, throughput_rps=18.0))
    assert out["verdict"] == "no_rollback" and out["severity"] == "none"
    assert out["approvals_required"] == []


def test_latency_up_30_percent_and_20ms_is_high_with_cto_and_infra_lead():
    out, trig = verdict(dict(BASE, latency_p95_s=0.130))
    assert trig["latency_degradation"]["severity"] == "high"
    assert trig["latency_degradation"]["change_pct"] > 30
    assert out == dict(
        out,
        verdict="rollback",
        severity="high",
        action="mandatory_immediate",
        approvals_required=["cto", "infra_lead"],
    )


def test_small_absolute_latency_change_is_noise_whatever_its_percentage():
    _, trig = verdict(dict(BASE, latency_p95_s=0.016))  # +100% but 8 ms
    assert trig["latency_degradation"]["severity"] == "none"


def test_error_ratio_grades_low_medium_high():
    for ratio, expected in ((0.002, "low"), (0.02, "medium"), (0.4, "high")):
        out, trig = verdict(dict(BASE, error_ratio=ratio))
        assert trig["error_rate"]["severity"] == expected and out["severity"] == expected
    out, _ = verdict(dict(BASE, error_ratio=0.02))
    assert out["action"] == "recommended" and out["approvals_required"] == ["cto"]


def test_throughput_drop_is_degradation_and_a_target_down_is_critical():
    _, trig = verdict(dict(BASE, throughput_rps=12.0))
    assert trig["throughput_degradation"]["severity"] == "high"
    out, trig = verdict(dict(BASE, targets_down=1))
    assert trig["critical_errors"]["fired"] and out["severity"] == "high"


def test_missing_data_is_inconclusive_not_fine():
    out, trig = verdict({"targets_down": None, "error_ratio": None}, baseline={})
    assert out["verdict"] == "inconclusive" and out["severity"] == "none"
    assert set(out["inconclusive"]) == {
        "critical_errors",
        "error_rate",
        "latency_degradation",
        "throughput_degradation",
    }
    assert not any(t["fired"] for t in trig.values())


def test_declared_triggers_use_their_severity_and_beat_inconclusive_data():
    out, trig = verdict({}, baseline={}, declared=[{"trigger": "security", "note": "CVE"}])
    assert out["verdict"] == "rollback" and out["severity"] == "high"
    assert trig["security"]["detail"] == "CVE"
    out, _ = verdict(BASE, declared=[{"trigger": "ux_disruption"}])
    assert out["severity"] == "medium"


def test_bad_declared_trigger_or_matrix_is_refused():
    with pytest.raises(decision.DecisionError, match="not one of"):
        decision.evaluate(BASE, BASE, None, [{"trigger": "vibes"}])
    with pytest.raises(decision.DecisionError, match="row 'medium'"):
        decision.decide([], {"low": {"action": "x", "approvals": []}})


def test_matrix_is_data_overridable_per_environment():
    matrix = dict(decision.DEFAULT_MATRIX, high={"action": "page", "approvals": ["infra_lead"]})
    triggers = decision.evaluate(dict(BASE, error_ratio=0.5), BASE, None)
    assert decision.decide(triggers, matrix)["approvals_required"] == ["infra_lead"]


def test_unreachable_prometheus_is_inconclusive():
    out = decision.run_decision("http://127.0.0.1:9", 10, 60, timeout=1)
    assert out["verdict"] == "inconclusive"
    assert "error_ratio" in out["query_errors"]


def probe(requests=40, errors=0, p95_ms=6.0):
    return {"requests": requests, "errors": errors, "p95_ms": p95_ms, "passed": True}


def test_batch_probes_pool_errors_take_the_worst_p95_and_count_dead_hosts():
    window = decision.from_probes(
        [probe(errors=2, p95_ms=5.0), probe(p95_ms=90.0), probe(errors=40, p95_ms=0.0)]
    )
    assert window["error_ratio"] == pytest.approx(42 / 120)
    assert window["latency_p95_s"] == pytest.approx(0.090)  # the dead host's 0 ms is ignored
    assert window["targets_down"] == 1 and window["hosts"] == 3
    assert decision.from_probes([]) is None and decision.from_probes([{"skipped": True}]) is None


def test_probe_gate_uses_the_same_thresholds_and_matrix():
    before = [probe(p95_ms=6.0), probe(p95_ms=7.0)]
    healthy = decision.probe_decision([probe(p95_ms=8.0), probe(p95_ms=9.0)], before)
    assert healthy["verdict"] == "no_rollback" and healthy["inconclusive"] == []
    # throughput is not the probe's to judge: not evaluated, not "inconclusive"
    assert {t["trigger"] for t in healthy["triggers"]} == {
        "critical_errors",
        "error_rate",
        "latency_degradation",
    }
    slow = decision.probe_decision([probe(p95_ms=8.0), probe(p95_ms=60.0)], before)
    assert slow["verdict"] == "rollback" and slow["severity"] == "high"
    assert slow["fired"] == ["latency_degradation"]
    assert slow["approvals_required"] == ["cto", "infra_lead"]
    failing = decision.probe_decision([probe(errors=2, requests=80), probe()], before)
    assert failing["severity"] == "medium" and failing["fired"] == ["error_rate"]
    matrix = dict(decision.DEFAULT_MATRIX, medium={"action": "page", "approvals": ["x"]})
    assert (
        decision.probe_decision([probe(errors=1, requests=80)], before, matrix=matrix)["action"]
        == "page"
    )
    # no baseline (first deploy on a host): latency is inconclusive, errors still judged
    first = decision.probe_decision([probe()], [])
    assert first["verdict"] == "inconclusive" and first["inconclusive"] == ["latency_degradation"]
    with pytest.raises(decision.DecisionError, match="no probe results"):
        decision.probe_decision([], before)
