"""Migration planning and the probe's verdict: pure functions, no services."""

from __future__ import annotations

import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils import http_probe, latency
from ansible_collections.knowngood.runbooks.plugins.module_utils import migrations as mig


@pytest.fixture
def dirs(tmp_path):
    old, new = tmp_path / "v1", tmp_path / "v3"
    old.mkdir()
    new.mkdir()
    (old / "0001_orders.up.sql").write_text("create table t(i int);")
    (old / "0001_orders.down.sql").write_text("drop table t;")
    for name in ("0001_orders.up.sql", "0001_orders.down.sql"):
        (new / name).write_text((old / name).read_text())
    (new / "0002_note.up.sql").write_text("alter table t add n text;")
    (new / "0002_note.down.sql").write_text("alter table t drop n;")
    (new / "0003_currency.up.sql").write_text("alter table t drop n;")
    (new / "README").write_text("not a migration")
    return [str(new), str(old)]


def test_schema_the_target_supports_needs_nothing(dirs):
    assert mig.plan_sql(["0001", "0002"], ["0001", "0002"], mig.scan_sql_dirs(dirs)) == []


def test_newer_schema_is_walked_down_newest_first(dirs):
    steps = mig.plan_sql(["0001", "0002"], ["0001"], mig.scan_sql_dirs(dirs))
    assert [(s["revision"], s["direction"], s["reversible"]) for s in steps] == [
        ("0002", "down", True)
    ]


def test_missing_down_script_is_refused_naming_the_database_runbook(dirs):
    steps = mig.plan_sql(["0001", "0002", "0003"], ["0001"], mig.scan_sql_dirs(dirs))
    assert [s["revision"] for s in steps] == ["0003", "0002"]
    with pytest.raises(mig.MigrationError) as err:
        mig.refuse_irreversible(steps, "0003", ["0001"])
    assert "0003" in str(err.value) and "playbooks/rollback-database.yml" in str(err.value)
    assert "Nothing was switched" in str(err.value)


def test_deploys_migrate_up_to_the_newest_declared_revision(dirs):
    available = mig.scan_sql_dirs(dirs)
    assert mig.plan_sql(["0001"], ["0001", "0002"], available) == []
    steps = mig.plan_sql(["0001"], ["0001", "0002"], available, latest=True)
    assert [(s["revision"], s["direction"]) for s in steps] == [("0002", "up")]
    steps = mig.plan_sql([], ["0001"], available)
    assert [(s["revision"], s["direction"]) for s in steps] == [("0001", "up")]


def result(code, release="v1", ms=5.0, host="app1"):
    headers = {"X-Host": host} if host else {}
    if release:
        headers["X-Release"] = release
    return latency.Answer(code, ms, b"", headers)


PARAMS = {
    "max_error_ratio": 0.05,
    "max_p95_ms": 0,
    "expect_release": "v1",
    "only_hosts": None,
    "baseline_label": "v2 probed in the same rounds",
    "latency_tolerance": 0.3,
    "latency_min_delta_ms": 25,
}
BASELINE = {"requests": 40, "errors": 0, "p50_ms": 5.0, "p95_ms": 6.0}


def test_probe_passes_a_healthy_burst():
    verdict = http_probe.judge([result(200)] * 40, PARAMS, BASELINE)
    assert verdict["passed"] and verdict["errors"] == 0 and verdict["releases"] == {"v1": 40}
    assert verdict["latency"]["judged"] == "baseline"


def test_probe_fails_on_errors_latency_and_wrong_release():
    burst = [result(500)] * 10 + [result(200, ms=120)] * 20 + [result(200, release="v2")] * 10
    verdict = http_probe.judge(burst, PARAMS, BASELINE)
    assert not verdict["passed"]
    assert len(verdict["breaches"]) == 3
    assert verdict["error_ratio"] == 0.25
    assert "exceeds v2 probed in the same rounds 6.0 ms" in verdict["breaches"][2]
    assert not verdict["latency_only"]


def test_a_slow_burst_alone_is_a_latency_only_breach_that_names_its_baseline():
    verdict = http_probe.judge([result(200, ms=120)] * 40, PARAMS, BASELINE)
    assert not verdict["passed"] and verdict["latency_only"]
    assert verdict["breaches"] == [verdict["latency"]["detail"]]
    assert "limit 31.0 ms" in verdict["latency"]["detail"]


def test_without_a_baseline_latency_is_not_judged_but_errors_are():
    slow = http_probe.judge([result(200, ms=5000)] * 40, PARAMS, None)
    assert slow["passed"] and slow["latency"]["judged"] == "no baseline"
    failing = http_probe.judge([result(503, ms=5000)] * 40, PARAMS, None)
    assert not failing["passed"] and failing["breaches"][0].startswith("error ratio 1.000")


def test_the_slo_cap_fails_on_its_own():
    verdict = http_probe.judge([result(200, ms=900)] * 40, dict(PARAMS, max_p95_ms=800), None)
    assert not verdict["passed"] and "cap 800.0 ms" in verdict["breaches"][0]


def test_unanswered_requests_count_as_errors():
    verdict = http_probe.judge(
        [result(None, release=None)] * 3 + [result(200)] * 97, PARAMS, BASELINE
    )
    assert verdict["errors"] == 3 and verdict["passed"]


def test_hosts_outside_the_run_are_reported_not_judged():
    params = dict(PARAMS, only_hosts=["app1", "app2"])
    burst = [result(200)] * 20 + [result(500, release="v2", host="app3")] * 10
    verdict = http_probe.judge(burst, params, BASELINE)
    assert verdict["passed"]
    assert verdict["excluded_hosts"] == {"app3": {"v2": 10}}
