"""Backup metrics and the alert rules shipped for them, evaluated by Prometheus' promtool.

The series are the ones `metrics.record` writes (parsed back from the .prom file), so a renamed
metric or label breaks these tests, not only a dashboard."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import metrics
from promrules import PROMTOOL, RULES, firing, samples

pytestmark = pytest.mark.skipif(not Path(PROMTOOL).exists(), reason="promtool (make system-deps)")


def cfg(tmp_path, **overrides):
    values = dict(
        cluster="main",
        spool_dir=str(tmp_path / "spool"),
        freshness_full_hours=26.0,
        freshness_incremental_hours=2.0,
        freshness_wal_minutes=10.0,
    )
    values.update(overrides)
    return SimpleNamespace(**values)


def test_rules_file_is_valid_prometheus_rules():
    run = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "5 rules found" in run.stdout


def test_a_failed_backup_fires_at_once_and_names_the_location_that_failed(tmp_path):
    c = cfg(tmp_path)
    metrics.record(c, "backup_full", True, locations={"local-a": True, "s3-b": True}, now=0)
    path = metrics.record(
        c, "backup_full", False, locations={"local-a": True, "s3-b": False}, now=60
    )
    got = samples(path)
    labels = frozenset({("cluster", "main"), ("kind", "backup_full")})
    assert got[("knowngood_backup_job_ok", labels)] == 0
    # The failure does not move the last success: staleness runs from the real one.
    assert got[("knowngood_backup_job_last_success_timestamp_seconds", labels)] == 0
    assert got[("knowngood_backup_job_max_age_seconds", labels)] == 26 * 3600
    down = frozenset({("cluster", "main"), ("location", "s3-b")})
    assert got[("knowngood_backup_location_up", down)] == 0
    firing(tmp_path, path, 1, {("KnowngoodBackupJobFailed", "kind", "backup_full")})
    firing(
        tmp_path,
        path,
        10,
        {
            ("KnowngoodBackupJobFailed", "kind", "backup_full"),
            ("KnowngoodBackupLocationDown", "location", "s3-b"),
        },
    )


def test_healthy_jobs_fire_nothing_until_they_go_stale(tmp_path):
    c = cfg(tmp_path, freshness_wal_minutes=10.0)
    metrics.record(c, "backup_full", True, locations={"local-a": True}, now=0)
    path = metrics.record(c, "wal_push", True, locations={"local-a": True}, pending={}, now=0)
    firing(tmp_path, path, 9, set())
    # Nothing archived for more than freshness.wal_minutes: the archive is behind.
    firing(tmp_path, path, 11, {("KnowngoodBackupStale", "kind", "wal_push")})


def test_pending_copies_fire_after_fifteen_minutes_and_clear_when_copied(tmp_path):
    c = cfg(tmp_path, freshness_wal_minutes=60.0)  # the series stand still: no staleness here
    path = metrics.record(
        c, "wal_push", True, locations={"spare": False}, pending={"spare": ["a", "b"]}, now=0
    )
    pending = frozenset({("cluster", "main"), ("location", "spare")})
    assert samples(path)[("knowngood_wal_pending_copies", pending)] == 2
    firing(tmp_path, path, 4, set())
    firing(
        tmp_path,
        path,
        16,
        {
            ("KnowngoodWalCopiesPending", "location", "spare"),
            ("KnowngoodBackupLocationDown", "location", "spare"),
        },
    )
    path = metrics.record(
        c, "wal_push", True, locations={"spare": True}, pending={"spare": []}, now=60
    )
    assert samples(path)[("knowngood_wal_pending_copies", pending)] == 0
    firing(tmp_path, path, 16, set())


def test_a_job_that_never_succeeded_fires_after_an_hour(tmp_path):
    path = metrics.record(cfg(tmp_path), "verify", False, now=0)
    firing(tmp_path, path, 30, {("KnowngoodBackupJobFailed", "kind", "verify")})
    firing(
        tmp_path,
        path,
        61,
        {
            ("KnowngoodBackupJobFailed", "kind", "verify"),
            ("KnowngoodBackupNeverSucceeded", "kind", "verify"),
        },
    )


def test_label_values_are_escaped_and_the_state_survives_a_torn_file(tmp_path):
    c = cfg(tmp_path, cluster='we"ird\\name')
    path = metrics.record(c, "backup_incremental", True, now=5)
    assert 'cluster="we\\"ird\\\\name"' in Path(path).read_text()
    state = Path(path).parent / f".knowngood_backup_{c.cluster}.json"
    state.write_text("{torn")
    path = metrics.record(c, "backup_incremental", False, now=6)
    assert "knowngood_backup_job_ok" in Path(path).read_text()
