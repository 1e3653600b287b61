"""The backup runbooks end to end on the lab: setup-backups, backup, verify-backup.

Real PostgreSQL (the lab's primary), real SeaweedFS in two regions plus an object-locked cold
bucket, two local disks and an export directory: every backup and WAL segment must reach all
six, and a restore into a scratch cluster must prove it.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def backup_settings(lab) -> dict:
    inventory = json.loads(Path(lab.inventory).with_suffix(".json").read_text())
    return inventory["all"]["children"]["db"]["hosts"]["db1"]


def open_config(lab):
    from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.config import (
        parse_config,
    )

    hv = backup_settings(lab)
    data = dict(hv["knowngood_backup"])
    data["encryption_key"] = hv["knowngood_backup_encryption_key"]
    data["signing_key"] = hv["knowngood_backup_signing_key"]
    return parse_config(data)


def catalog(lab) -> list[dict]:
    from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.catalog import Catalog

    return Catalog(open_config(lab)).entries()


@contextlib.contextmanager
def pg_conn(lab, dbname: str = "postgres"):
    import psycopg

    with psycopg.connect(open_config(lab).pg.conninfo(dbname), autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def archiving(lab_session):
    run = lab_session.playbook("setup-backups")
    assert run.rc == 0, run.output
    return run


def test_setup_archives_wal_to_every_location_and_converges(lab_session, archiving):
    from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import (
        archive,
    )
    from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.store import (
        open_locations,
    )

    cfg = open_config(lab_session)
    # The segment the run switched and saw archived; pg_stat_archiver's last_archived_wal can
    # be a .backup or .history file, which list_segments leaves out.
    proof = re.search(r"proof segment ([0-9A-F]{24})", archiving.output)
    assert proof, archiving.output
    segment = proof.group(1)
    with pg_conn(lab_session) as conn:
        command = conn.execute("SHOW archive_command").fetchone()[0]
    assert "kg-wal" in command and "push" in command
    holders = [loc.name for loc in open_locations(cfg) if segment in archive.list_segments(loc)]
    assert holders == [loc.name for loc in cfg.locations], (segment, holders)
    cron = Path(backup_settings(lab_session)["knowngood_backup_cron_file"]).read_text()
    assert "kg-wal backup full" in cron and "kg-wal backup incremental" in cron
    # Right after a backup no WAL may be written before the next proof: its switch must still
    # archive a new segment, not name the one before the backup's .backup file.
    with pg_conn(lab_session) as conn:
        conn.execute("SELECT pg_backup_start('proof after a backup', true)")
        conn.execute("SELECT pg_backup_stop(true)")  # returns once the .backup is archived
        after_backup = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0]
    again = lab_session.playbook("setup-backups")
    assert again.rc == 0, again.output
    assert re.search(r"proof segment ([0-9A-F]{24})", again.output).group(1) > after_backup[:24]
    # Only the proof segment switch may report; settings, tool and cron entries converge.
    assert "changed=0" in again.output.split("PLAY RECAP")[-1], again.output


def test_full_then_incremental_reach_every_location(lab_session, archiving):
    with pg_conn(lab_session, "app") as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS backup_probe (id serial, note text)")
        conn.execute(
            "INSERT INTO backup_probe (note) SELECT md5(g::text) FROM generate_series(1, 5000) g"
        )
    full = lab_session.playbook("backup", backup_type="full")
    assert full.rc == 0, full.output
    # The long step showed its progress while it ran (the lab's hosts: read beside the module).
    done = re.findall(r"^db1: backup (.*) \(100 %\), [0-9.]+ s elapsed, done$", full.output, re.M)
    assert done, full.output[-3000:]
    with pg_conn(lab_session, "app") as conn:
        conn.execute("UPDATE backup_probe SET note = 'changed' WHERE id % 10 = 0")
    incr = lab_session.playbook("backup", backup_type="incremental")
    assert incr.rc == 0, incr.output
    entries = catalog(lab_session)
    newest_full = [e for e in entries if e["type"] == "full"][-1]
    newest_incr = entries[-1]
    assert newest_incr["type"] == "incremental"
    assert (
        newest_incr["parent"] == newest_full["label"]
        or newest_full["label"] in newest_incr["chain"]
    )
    names = [loc.name for loc in open_config(lab_session).locations]
    for entry in (newest_full, newest_incr):
        assert {n: c["status"] for n, c in entry["locations"].items()} == {n: "ok" for n in names}
    # The incremental holds the changed files only: far smaller than the full.
    assert newest_incr["stored_size"] < newest_full["stored_size"]


def test_verify_backup_restores_and_records_the_result(lab_session, archiving):
    if not catalog(lab_session):
        assert lab_session.playbook("backup", backup_type="full").rc == 0
    run = lab_session.playbook("verify-backup")
    assert run.rc == 0, run.output
    for tier in ("integrity", "freshness", "restore"):
        assert f"{tier}: PASS" in run.output, run.output
    newest = catalog(lab_session)[-1]
    tiers = {v["tier"]: v["ok"] for v in newest.get("verification", [])}
    assert tiers.get("restore") is True, newest.get("verification")


def test_unknown_backup_type_is_refused_before_anything_changes(lab_session, archiving):
    before = [e["label"] for e in catalog(lab_session)]
    run = lab_session.playbook("backup", backup_type="weekly")
    assert run.rc != 0
    assert "weekly" in run.output and "full" in run.output and "incremental" in run.output
    assert [e["label"] for e in catalog(lab_session)] == before


def test_wrong_s3_credentials_stop_the_runbook_with_the_location_named(lab_session, archiving):
    hv = backup_settings(lab_session)
    config = json.loads(json.dumps(hv["knowngood_backup"]))
    for loc in config["locations"]:
        if loc["name"] == "s3-region-a":
            loc["secret_key"] = "not-the-secret"
    before = [e["label"] for e in catalog(lab_session)]
    run = lab_session.playbook("backup", knowngood_backup=config)
    assert run.rc != 0
    assert "s3-region-a" in run.output and "credentials" in run.output.lower(), run.output
    assert "not-the-secret" not in run.output
    assert [e["label"] for e in catalog(lab_session)] == before


def test_check_mode_takes_nothing(lab_session, archiving):
    before = [e["label"] for e in catalog(lab_session)]
    run = lab_session.playbook("backup", check=True, backup_type="full")
    assert run.rc == 0, run.output
    assert [e["label"] for e in catalog(lab_session)] == before


def test_scheduled_backup_command_takes_a_backup_and_a_failed_one_sends_one_notice(
    lab_session, archiving, tmp_path
):
    from promrules import samples

    from knowngood.lab.notify_sinks import WebhookReceiver, closed_port

    before = {e["label"] for e in catalog(lab_session)}
    tool = Path(backup_settings(lab_session)["knowngood_backup_tool_dir"]) / "kg-wal"
    proc = subprocess.run(
        [str(tool), "backup", "incremental"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    after = {e["label"] for e in catalog(lab_session)}
    assert len(after - before) == 1

    # The same scheduled job with a required disk that cannot be written (its path runs
    # through a file), a catalog and spool of its own: it fails, the metric says so, and the
    # on-call hears once. A receiver that is down changes nothing about the result.
    cfg = open_config(lab_session).to_dict()
    unwritable = str(tmp_path / "not-a-dir" / "disk-b")
    (tmp_path / "not-a-dir").write_text("a file, not a directory")
    cfg["locations"] = [
        {**loc, "path": unwritable} if loc["name"] == "local-b" else loc
        for loc in cfg["locations"]
        if loc["type"] == "local"
    ]
    cfg.update(spool_dir=str(tmp_path / "spool"), catalog_dir=str(tmp_path / "catalog"))
    contacts = {
        role: {"name": name, "email": f"{name}@lab.invalid"}
        for role, name in (("primary_oncall", "o"), ("secondary_oncall", "t"), ("infra_lead", "i"))
    }

    def failed_backup(webhook: str) -> subprocess.CompletedProcess:
        cfg["notify"] = {
            "channels": {"webhooks": [webhook], "attempts": 1, "timeout_s": 2},
            "contacts": contacts,
        }
        path = tmp_path / "config.json"
        path.write_text(json.dumps(cfg))
        return subprocess.run(
            [str(tool), "--config", str(path), "backup", "full"],
            capture_output=True,
            text=True,
            timeout=300,
        )

    with WebhookReceiver() as hook:
        failed = failed_backup(hook.url())
        texts = hook.texts()
    dead = failed_backup(f"http://127.0.0.1:{closed_port()}/T/SECRET")
    for run in (failed, dead):
        assert run.returncode == 1, run.stdout + run.stderr
    (text,) = texts
    assert text.startswith("[knowngood] scheduled full backup FAILED: "), text
    assert "local-b" in text, text
    assert "notice webhook http://127.0.0.1" in dead.stderr and "failed" in dead.stderr
    prom = Path(cfg["spool_dir"]) / "metrics" / f"knowngood_backup_{cfg['cluster']}.prom"
    labels = frozenset({("cluster", cfg["cluster"]), ("kind", "backup_full")})
    assert samples(prom)[("knowngood_backup_job_ok", labels)] == 0


def test_region_down_during_backup_is_retried_reported_and_others_complete(lab_session, archiving):
    from knowngood.lab import s3
    from knowngood.lab.config import LabConfig

    cfg = LabConfig.load(lab_session.root)
    before = {e["label"] for e in catalog(lab_session)}
    s3.s3_region_down(cfg, 1)  # region-b: s3-region-b and the cold bucket
    try:
        run = lab_session.playbook("backup", backup_type="full")
    finally:
        s3.s3_region_up(cfg, lambda _m: None, 1)
    assert run.rc != 0, run.output
    assert "is valid but missing from" in run.output, run.output
    assert "s3-region-b" in run.output and "cold" in run.output
    new = [e for e in catalog(lab_session) if e["label"] not in before]
    assert len(new) == 1, new
    status = {name: copy["status"] for name, copy in new[0]["locations"].items()}
    assert status["local-a"] == status["local-b"] == status["s3-region-a"] == "ok", status
    assert status["s3-region-b"] != "ok" and status["cold"] != "ok", status
    # WAL archiving went on through the outage (remote copies are not required for a push).
    with pg_conn(lab_session) as conn:
        failed, archived = conn.execute(
            "SELECT last_failed_time, last_archived_time FROM pg_stat_archiver"
        ).fetchone()
    assert failed is None or archived > failed
