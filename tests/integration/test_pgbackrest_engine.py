"""The pgbackrest engine against real pgbackrest and a real PostgreSQL 15 cluster.

Two posix repositories in two directories (pgbackrest 2.45 reaches S3 over https only, and the
lab's SeaweedFS speaks http, so S3 repositories are checked for the clear refusal, not run).
Needs pgbackrest and PostgreSQL 15; no lab.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import pgbackrest as br
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (
    BackupError,
    parse_lsn,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.config import (
    BackupConfig,
)
from pgcluster import PG_BIN, as_postgres, make_dirs_for_postgres

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("pgbackrest") is None, reason="pgbackrest is not installed"),
]
CIPHER = "kg-test-cipher-passphrase-0123456789"


def make_cfg(cluster, root: Path, stanza: str = "kgtest", **extra) -> BackupConfig:
    data = {
        "cluster": "kgbr",
        "engine": "pgbackrest",
        "pg": cluster.backend_config(),
        "compression": "lz4",
        "parallel": 2,
        "spool_dir": str(root / "spool"),
        "catalog_dir": str(root / "catalog"),
        "locations": [{"name": "unused", "type": "local", "path": str(root / "unused")}],
        "pgbackrest_stanza": stanza,
        "pgbackrest_config": str(root / "etc" / "pgbackrest.conf"),
        "pgbackrest_repos": [
            {"type": "posix", "path": str(root / "repo-a")},
            {"type": "posix", "path": str(root / "repo-b"), "cipher_pass": CIPHER},
        ],
        **extra,
    }
    return BackupConfig.from_dict(data)


@pytest.fixture
def archived(pg_factory):
    """(cluster, cfg): a running cluster archiving through pgbackrest, stanza created."""
    cluster = pg_factory("pgbr")
    root = make_dirs_for_postgres(cluster.root / "br")
    cfg = make_cfg(cluster, root)
    result = br.configure(cfg)
    cluster.configure(archive_mode="on", archive_command=result["archive_command"])
    cluster.start()
    br.stanza_create(cfg)
    return cluster, cfg, result


def test_configure_writes_a_private_config_and_is_idempotent(archived):
    cluster, cfg, result = archived
    path = Path(result["config_path"])
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == cluster.data_dir.stat().st_uid  # owned by postgres
    text = path.read_text()
    assert "repo1-type=posix" in text and "repo2-cipher-pass=" in text
    assert "compress-type=lz4" in text and "process-max=2" in text
    assert "archive-push %p" in result["archive_command"]
    assert "--stanza=kgtest" in result["restore_command"]
    assert CIPHER not in result["archive_command"] + result["restore_command"]
    assert br.configure(cfg)["changed"] is False


def test_full_incremental_restore_and_start(archived, pg_factory):
    cluster, cfg, _ = archived
    cluster.sql("CREATE TABLE t(id int primary key, note text)")
    cluster.sql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g")
    messages: list[str] = []
    full = br.take_backup(cfg, "full", progress=messages.append)
    assert full["type"] == "full" and full["engine"] == "pgbackrest"
    assert full["label"].endswith("F")
    assert set(full["locations"]) == {"repo1", "repo2"}
    assert all(loc["status"] == "ok" for loc in full["locations"].values())
    assert full["timeline"] == 1
    assert parse_lsn(full["stop_lsn"]) > parse_lsn(full["start_lsn"])
    assert full["size"] > 20_000_000 and 0 < full["stored_size"] < full["size"]
    assert any("backup --type=full" in m for m in messages)

    cluster.sql("INSERT INTO t SELECT g, 'after-full' FROM generate_series(5001, 6000) g")
    incr = br.take_backup(cfg, "incremental")
    assert incr["type"] == "incremental"
    assert incr["parent"] == full["label"]
    assert incr["chain"] == [full["label"], incr["label"]]
    assert parse_lsn(incr["start_lsn"]) > parse_lsn(full["stop_lsn"])
    assert incr["stored_size"] < full["stored_size"]
    repo2_full = full["repo_labels"]["repo2"]
    assert incr["locations"]["repo2"]["status"] == "ok"

    # Written after the incremental: only WAL replay brings it back.
    cluster.sql("INSERT INTO t VALUES (7000, 'after-incr')")
    cluster.switch_wal()

    listed = {e["label"]: e for e in br.list_backups(cfg)}
    assert {full["label"], incr["label"], repo2_full} <= set(listed)
    entry = listed[incr["label"]]
    for key in ("label", "type", "parent", "start_lsn", "stop_lsn", "start_time", "stop_time",
                "timeline", "size", "stored_size", "locations"):  # fmt: skip
        assert entry[key] == incr[key] if key != "locations" else entry[key]
    assert listed[repo2_full]["encrypted"] is True

    scratch = pg_factory("pgbr-restore")  # a spare port and a root of its own
    shutil.rmtree(scratch.data_dir)
    done = br.restore(
        cfg, incr["label"], str(scratch.data_dir), archive_mode="off", progress=messages.append
    )
    assert done["location"] == "repo1" and done["chain"] == incr["chain"]
    assert (scratch.data_dir / "PG_VERSION").exists()
    scratch.configure(port=scratch.port, unix_socket_directories=str(scratch.socket_dir))
    try:
        scratch.start(timeout=120)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"restored cluster did not start: {exc.stderr}\n{scratch.log()[-3000:]}")
    deadline = time.monotonic() + 60
    while scratch.scalar("SELECT pg_is_in_recovery()") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert scratch.scalar("SELECT pg_is_in_recovery()") is False
    assert scratch.scalar("SELECT count(*) FROM t WHERE note = 'after-full'") == 1000
    assert scratch.scalar("SELECT note FROM t WHERE id = 7000") == "after-incr"
    assert scratch.scalar("SHOW archive_mode") == "off"
    scratch.stop()

    # The encrypted second repository restores too, to a consistent point only.
    other = cluster.root / "restore-b"
    done = br.restore(
        cfg, repo2_full, str(other), location="repo2", target="immediate", archive_mode="off"
    )
    assert done["location"] == "repo2" and (other / "global" / "pg_control").exists()


def test_verify_and_expire(archived):
    cluster, cfg, _ = archived
    cluster.sql("CREATE TABLE v AS SELECT g FROM generate_series(1, 1000) g")
    first = br.take_backup(cfg, "full")
    result = br.verify(cfg)
    assert result["ok"], result
    assert set(result["repos"]) == {"repo1", "repo2"}
    second = br.take_backup(cfg, "full")
    third = br.take_backup(cfg, "full")  # retention_full defaults to 2: the first goes
    labels = {e["label"] for e in br.list_backups(cfg)}
    assert first["label"] not in labels  # pgbackrest expires after each backup (expire-auto)
    assert {second["label"], third["label"]} <= labels
    assert br.expire(cfg)["changed"] is False


def test_wrong_stanza_and_missing_pieces_give_clear_errors(archived, tmp_path):
    cluster, cfg, _ = archived
    wrong = make_cfg(cluster, Path(cfg.spool_dir).parent, stanza="nosuch")
    # The file on disk names stanza kgtest; asking for another stanza is refused clearly.
    with pytest.raises(BackupError, match=r"nosuch"):
        br.list_backups(wrong)
    # configure for the new stanza but without stanza-create: "run stanza_create first".
    other_root = make_dirs_for_postgres(cluster.root / "other")
    fresh = make_cfg(cluster, other_root, stanza="fresh")
    br.configure(fresh)
    with pytest.raises(BackupError, match="stanza_create"):
        br.list_backups(fresh)
    # The cluster archives through stanza kgtest, not "fresh".
    with pytest.raises(BackupError, match="not archive WAL through pgbackrest stanza 'fresh'"):
        br.take_backup(fresh, "full")
    # Never configured at all.
    unconfigured = make_cfg(cluster, tmp_path, stanza="kgtest")
    with pytest.raises(BackupError, match="run configure first"):
        br.take_backup(unconfigured, "full")
    with pytest.raises(BackupError, match="backup type"):
        br.take_backup(cfg, "weekly")
    with pytest.raises(BackupError, match="no pgbackrest backup"):
        br.restore(cfg, "20000101-000000F", str(cluster.root / "r"))


def test_s3_over_http_is_refused_and_secrets_stay_off_command_lines(pg_factory, monkeypatch):
    cluster = pg_factory("pgbr-s3")
    root = make_dirs_for_postgres(cluster.root / "br")
    repo = {
        "type": "s3", "endpoint": "http://127.0.0.1:25500", "bucket": "b", "region": "r",
        "key": "AKIAKGTEST", "key_secret": "kg-secret-key-value", "path": "/pg",
    }  # fmt: skip
    cfg = make_cfg(cluster, root, pgbackrest_repos=[repo])
    with pytest.raises(BackupError, match="https only"):
        br.configure(cfg)
    https = dict(repo, endpoint="https://127.0.0.1:1", verify_tls="n")
    cfg = make_cfg(cluster, root, pgbackrest_repos=[https])
    result = br.configure(cfg)
    text = Path(result["config_path"]).read_text()
    assert "repo1-s3-endpoint=127.0.0.1" in text and "repo1-storage-port=1" in text
    assert "repo1-s3-key-secret=kg-secret-key-value" in text
    seen: list[list[str]] = []
    real_run = br.subprocess.run

    def spy(argv, **kw):
        seen.append(list(argv))
        return real_run(argv, **kw)

    monkeypatch.setattr(br.subprocess, "run", spy)
    with pytest.raises(BackupError) as err:
        br.run(cfg, ["--io-timeout=1", "--db-timeout=1", "info"], timeout=120)
    assert "kg-secret-key-value" not in str(err.value)
    assert all("kg-secret-key-value" not in " ".join(argv) for argv in seen)


def test_pgbackrest_missing_is_named(archived, monkeypatch):
    _, cfg, _ = archived
    monkeypatch.setattr(br.shutil, "which", lambda *a, **k: None)
    with pytest.raises(BackupError, match="pgbackrest is not installed"):
        br.take_backup(cfg, "full")


def test_pg_bin_is_postgres_15():
    out = as_postgres([PG_BIN / "postgres", "--version"]).stdout
    assert " 15." in out, out
    assert os.path.exists("/usr/bin/pgbackrest")
