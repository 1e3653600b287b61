"""The native backup engine against real PostgreSQL 15: full + incremental + WAL round trips,
corruption detection, crash safety, disk full, clear errors, and the restore-test tier."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import (
    archive,
    engine,
    native,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import (
    install as wal_tool,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import (
    verify as backup_verify,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.catalog import Catalog
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (
    BackupError,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.config import (
    BackupConfig,
)
from pgcluster import PG_BIN, as_postgres, make_dirs_for_postgres, postgres_ids

pytestmark = pytest.mark.slow
BASE = Path(f"/tmp/kgnb-{os.environ.get('KNOWNGOOD_TEST_BASE_PORT', '27000')}")
REPO = Path(__file__).resolve().parents[2]


class Env:
    def __init__(self, root, pg, cfg, tool):
        self.root, self.pg, self.cfg, self.tool = root, pg, cfg, tool

    def loc_dir(self, name):
        return Path(self.cfg.location(name).path) / self.cfg.cluster

    def backup_dir(self, name, label):
        return self.loc_dir(name) / "backups" / label


def make_env(pg_factory, name, *, locations=None, archive=True, start=True, **extra):
    root = BASE / name
    shutil.rmtree(root, ignore_errors=True)
    make_dirs_for_postgres(root)
    pg = pg_factory(name, archive_mode="on" if archive else "off")
    if locations is None:
        locations = [
            {"name": "local-a", "type": "local", "path": str(root / "a")},
            {"name": "local-b", "type": "local", "path": str(root / "b"), "encrypt": True},
        ]
    raw = {
        "cluster": "kgt",
        "pg": pg.backend_config(),
        "spool_dir": str(root / "spool"),
        "catalog_dir": str(root / "catalog"),
        "encryption_key": "test-encryption-key-0123456789",
        "compression": "lz4",
        "parallel": 4,
        "retries": {"attempts": 2, "base_delay": 0.05, "max_delay": 0.1},
        "locations": locations,
        **extra,
    }
    cfg = BackupConfig.from_dict(raw)
    tool = wal_tool.install_tool(cfg, str(root / "tool"))
    if archive:
        pg.configure(archive_command=tool["archive_command"])
    if start:
        pg.start()
        if archive:
            # the WAL tool (as postgres) creates repo.json in every location first
            pg.sql("CREATE TABLE IF NOT EXISTS warmup(i int)")
            pg.switch_wal()
    return Env(root, pg, cfg, tool)


def load(pg, rows=200_000):
    pg.sql(
        "CREATE TABLE a AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, %s) g",
        (rows,),
    )
    pg.sql("CREATE INDEX a_v ON a (v)")
    pg.sql(
        "CREATE TABLE b AS SELECT g AS id, repeat('b', 200) AS v FROM generate_series(1, 20000) g"
    )


def fingerprint(pg_or_port, tables):
    out = {}
    for table in tables:
        query = (
            "SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY id), '')) "
            f"FROM {table} t"
        )
        if isinstance(pg_or_port, int):
            import psycopg

            with psycopg.connect(
                host="127.0.0.1", port=pg_or_port, user="postgres", dbname="postgres"
            ) as conn:
                out[table] = tuple(conn.execute(query).fetchone())
        else:
            out[table] = tuple(pg_or_port.sql(query)[0])
    return out


class Restored:
    def __init__(self, data, port):
        self.data, self.port = Path(data), port

    def start(self, env):
        run_dir = make_dirs_for_postgres(self.data.parent / "run")
        engine.write_recovery(
            str(self.data),
            env.cfg,
            env.tool["restore_command"],
            settings={
                "port": self.port,
                "unix_socket_directories": str(run_dir),
                "archive_mode": "off",
                "cluster_name": "restored",
            },
        )
        as_postgres(
            [PG_BIN / "pg_ctl", "start", "-D", self.data, "-w", "-t", "300", "-l",
             run_dir / "restored.log"]
        )  # fmt: skip
        import psycopg

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres") as conn:
                if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    return self
            time.sleep(0.3)
        raise AssertionError("restored cluster still in recovery")

    def stop(self):
        if (self.data / "postmaster.pid").exists():
            as_postgres(
                [PG_BIN / "pg_ctl", "stop", "-D", self.data, "-m", "immediate"], check=False
            )


@pytest.fixture
def restored_clusters():
    made = []
    yield made
    for r in made:
        r.stop()


def test_full_incremental_wal_round_trip(pg_factory, restored_clusters, capsys):
    env = make_env(pg_factory, "roundtrip")
    load(env.pg)
    time.sleep(2.5)  # data files older than the full's start (mtime rule + 2 s margin)
    t0 = time.monotonic()
    full = native.take_backup(env.cfg, "full")
    full_s = time.monotonic() - t0
    assert full["type"] == "full" and not full["incomplete_locations"]
    assert set(full["locations"]) == {"local-a", "local-b"}
    for loc in ("local-a", "local-b"):
        assert (env.backup_dir(loc, full["label"]) / "backup.json").exists()
        assert (env.backup_dir(loc, full["label"]) / "backup_manifest").exists()
    # encrypted copy really is encrypted: no .lz4 plain objects in local-b
    for sub in ("files", "bundles"):
        stored = [p for p in (env.backup_dir("local-b", full["label"]) / sub).rglob("*")]
        assert stored and all(p.name.endswith(".enc") for p in stored if p.is_file())
    # small files are slices of a few bundle objects; large files one object each
    full_manifest = json.loads(
        (env.backup_dir("local-a", full["label"]) / "manifest.json").read_text()
    )
    bundled = [f for f in full_manifest["files"] if f.get("bundle")]
    alone = [f for f in full_manifest["files"] if not f.get("bundle")]
    assert len(bundled) > 500 and alone
    assert all(f["size"] < native.BUNDLE_THRESHOLD for f in bundled)
    assert all(f["size"] >= native.BUNDLE_THRESHOLD and f["key"] for f in alone)
    objects = [p for p in env.backup_dir("local-a", full["label"]).rglob("*") if p.is_file()]
    assert len(objects) < full["file_count"] / 5, (len(objects), full["file_count"])
    assert {b["key"] for b in full_manifest["bundles"]} == {f["bundle"] for f in bundled}

    time.sleep(1.5)
    b_file = env.pg.scalar("SELECT pg_relation_filepath('b')")
    env.pg.sql("INSERT INTO a SELECT g, 'new' FROM generate_series(300001, 301000) g")
    env.pg.sql("DROP TABLE b")
    env.pg.sql("CREATE TABLE c AS SELECT g AS id, g * 2 AS v FROM generate_series(1, 5000) g")
    env.pg.sql("CHECKPOINT")
    incr = native.take_backup(env.cfg, "incremental")
    assert incr["type"] == "incremental" and incr["parent"] == full["label"]
    assert incr["chain"] == [full["label"], incr["label"]]
    # Only the changed files (table a's, c's, catalogs) are copied: whole files, so a 25 MB
    # table with 1000 new rows is copied again, but most of the cluster is not.
    assert incr["delta_files"] < full["file_count"] / 10, (incr["delta_files"], full["file_count"])
    assert incr["delta_size"] < full["size"] * 0.75, (incr["delta_size"], full["size"])
    manifest = json.loads((env.backup_dir("local-a", incr["label"]) / "manifest.json").read_text())
    refs = {f["ref"] for f in manifest["files"]}
    assert refs == {full["label"], incr["label"]}
    # unchanged small files still point into the full's bundles; changed ones are in the
    # incremental's own bundles
    homes = {f["bundle"].split("/")[1] for f in manifest["files"] if f.get("bundle")}
    assert homes == {full["label"], incr["label"]}
    assert all(
        f["bundle"].startswith(f"backups/{f['ref']}/bundles/")
        for f in manifest["files"]
        if f.get("bundle")
    )
    assert b_file not in {f["path"] for f in manifest["files"]}

    # WAL after the incremental: replayed from the archive on restore
    env.pg.sql("INSERT INTO c SELECT g, 0 FROM generate_series(5001, 6000) g")
    env.pg.sql("UPDATE a SET v = 'changed' WHERE id <= 100")
    env.pg.switch_wal()
    expected = fingerprint(env.pg, ["a", "c"])

    target = env.root / "restore-incr" / "data"
    t0 = time.monotonic()
    got = native.restore(env.cfg, incr["label"], str(target), location="local-b")
    restore_s = time.monotonic() - t0
    assert got["location"] == "local-b" and got["files"] == manifest["files"].__len__()
    assert not (target / b_file).exists()
    assert oct(target.stat().st_mode & 0o777) == "0o700"
    assert target.stat().st_uid == postgres_ids()[0]
    r = Restored(target, env.pg.port + 50)
    restored_clusters.append(r)
    r.start(env)
    assert fingerprint(r.port, ["a", "c"]) == expected
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=r.port, user="postgres") as conn:
        assert conn.execute("SELECT to_regclass('b')").fetchone()[0] is None
    r.stop()

    # the full alone (plain copy) passes pg_verifybackup and also replays to the end
    target_f = env.root / "restore-full" / "data"
    got_f = native.restore(env.cfg, full["label"], str(target_f))
    assert got_f["location"] == "local-a"
    assert "pg_verifybackup" in got_f["verified_by"]
    rf = Restored(target_f, env.pg.port + 51)
    restored_clusters.append(rf)
    rf.start(env)
    assert fingerprint(rf.port, ["a", "c"]) == expected
    with capsys.disabled():
        mb = full["size"] / 1e6
        print(
            f"\n[native] full: {mb:.1f} MB data, {full['stored_size'] / 1e6:.1f} MB stored/copy, "
            f"{full_s:.2f}s ({mb / full_s:.1f} MB/s, 2 locations, 1 encrypted); incremental: "
            f"{incr['delta_files']} files, {incr['delta_size'] / 1e6:.2f} MB; restore incr "
            f"(encrypted): {got['bytes'] / 1e6:.1f} MB in {restore_s:.2f}s "
            f"({got['bytes'] / 1e6 / restore_s:.1f} MB/s)"
        )


def test_corruption_classes_and_wal_gap_are_named(pg_factory, monkeypatch):
    monkeypatch.setattr(native, "BUNDLE_SIZE", 64 * 1024)  # several bundles to damage
    env = make_env(pg_factory, "corrupt")
    load(env.pg, rows=20_000)
    full = native.take_backup(env.cfg, "full")
    for i in range(3):
        env.pg.sql(f"INSERT INTO a VALUES ({-i}, 'after')")
        env.pg.switch_wal()
    targets, _ = native.open_targets(env.cfg)
    catalog = Catalog(env.cfg)
    clean = backup_verify.integrity(env.cfg, catalog, targets)
    assert clean["ok"], clean["problems"]
    assert clean["backups"][full["label"]]["local-a"]["bundles"] >= 4

    label = full["label"]
    adir = env.backup_dir("local-a", label)
    repo = adir.parent.parent
    shutil.copytree(adir, env.root / "pristine")
    manifest = json.loads((adir / "manifest.json").read_text())
    # large files: one object each
    big = sorted((f for f in manifest["files"] if not f.get("bundle")), key=lambda f: f["path"])
    missing, changed, truncated = big[0], big[1], big[2]
    (repo / missing["key"]).unlink()
    path = repo / changed["key"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    path = repo / truncated["key"]
    path.write_bytes(path.read_bytes()[: truncated["stored_size"] // 2])
    # small files: slices of bundles; one bundle gone, one with a flipped byte, one cut short
    bundles = {}
    for f in manifest["files"]:
        if f.get("bundle"):
            bundles.setdefault(f["bundle"], []).append(f)
    keys = sorted(bundles)
    gone_bundle, flipped_bundle, cut_bundle = keys[0], keys[1], keys[2]
    (repo / gone_bundle).unlink()
    small_missing = sorted(f["path"] for f in bundles[gone_bundle])[0]
    small_changed = max(bundles[flipped_bundle], key=lambda f: f["stored_size"])
    path = repo / flipped_bundle
    data = bytearray(path.read_bytes())
    data[small_changed["offset"] + small_changed["stored_size"] // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    small_cut = max(bundles[cut_bundle], key=lambda f: f["offset"])
    path = repo / cut_bundle
    path.write_bytes(path.read_bytes()[: small_cut["offset"] + small_cut["stored_size"] // 2])
    # extra objects: a stray file and a stray bundle
    (adir / "files" / "base" / "extra_file.lz4").write_bytes(b"surprise")
    (adir / "bundles" / "999.lz4").write_bytes(b"surprise bundle")
    bdir = env.backup_dir("local-b", label)
    text = (bdir / "manifest.json").read_text().replace('"size": ', '"size": 1', 1)
    (bdir / "manifest.json").write_text(text)
    # a WAL segment after the backup's start, gone from local-a
    segs = archive.list_segments(targets[0].location)
    gone = [s for s in segs if s > full["wal_start"]][0]
    for p in (env.loc_dir("local-a") / "wal").rglob(f"{gone}.*"):
        p.unlink()

    found = backup_verify.integrity(env.cfg, catalog, targets)
    assert not found["ok"]
    text = "\n".join(found["problems"])
    where = f"location local-a: backup {label}"
    assert f"{where}: missing file {missing['path']}" in text, text
    assert f"{where}: missing file {small_missing} (bundle {gone_bundle} is missing)" in text
    assert f"{where}: extra file backups/{label}/files/base/extra_file.lz4" in text
    assert f"{where}: extra file backups/{label}/bundles/999.lz4" in text
    assert f"{where}: changed bytes in file {changed['path']}" in text
    assert (
        f"{where}: changed bytes in file {small_changed['path']} in bundle {flipped_bundle}" in text
    ), text
    assert f"{where}: truncated file {truncated['path']}" in text
    assert f"{where}: truncated file {small_cut['path']} in bundle {cut_bundle}" in text, text
    assert f"{where}: truncated bundle {cut_bundle}" in text
    assert f"location local-b: backup {label}: bad manifest" in text
    assert f"location local-a: WAL gap: segment {gone} is missing" in text
    assert "local-b: WAL gap" not in text
    history = Catalog(env.cfg).get(label)["verification"]
    assert history[-1]["tier"] == "integrity" and history[-1]["ok"] is False

    # a restore from the damaged copy fails naming the file; local-b's bad manifest too
    with pytest.raises(BackupError, match="local-b.*bad manifest"):
        native.restore(env.cfg, label, str(env.root / "r1" / "data"), location="local-b")
    with pytest.raises(BackupError, match="local-a: restoring"):
        native.restore(env.cfg, label, str(env.root / "r2" / "data"), location="local-a")
    # a restore from a copy whose only damage is one flipped byte in a bundle names that file
    shutil.rmtree(adir)
    shutil.copytree(env.root / "pristine", adir)
    path = repo / flipped_bundle
    data = bytearray(path.read_bytes())
    data[small_changed["offset"] + small_changed["stored_size"] // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BackupError, match=f"local-a: restoring {small_changed['path']} "):
        native.restore(env.cfg, label, str(env.root / "r3" / "data"), location="local-a")


KILL_SCRIPT = """
import json, sys
sys.path.insert(0, {collections!r})
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.config import BackupConfig
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import native
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.native import take_backup
native.BUNDLE_SIZE = 256 * 1024  # bundles are uploaded while the backup runs
cfg = BackupConfig.from_dict(json.loads(sys.argv[1]))
print(json.dumps(take_backup(cfg, "full", label="20990101T000000Z-full")["label"]))
"""


def test_kill_9_midway_leaves_nothing_valid_and_next_run_succeeds(pg_factory):
    env = make_env(pg_factory, "kill", compression="zstd", compression_level=12, parallel=1)
    load(env.pg, rows=400_000)
    label = "20990101T000000Z-full"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT.format(collections=str(REPO / "collections")),
         json.dumps(env.cfg.to_dict())],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    files_dir = env.backup_dir("local-a", label) / "files"
    bundles_dir = env.backup_dir("local-a", label) / "bundles"

    def count(path):
        return sum(1 for p in path.rglob("*") if p.is_file()) if path.exists() else 0

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if count(files_dir) >= 3 and count(bundles_dir) >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for loc in ("local-a", "local-b"):
        assert not (env.backup_dir(loc, label) / "backup.json").exists()
    assert env.backup_dir("local-a", label).exists()  # debris is there...
    assert Catalog(env.cfg).get(label) is None  # ...but nothing looks valid
    targets, _ = native.open_targets(env.cfg)
    with pytest.raises(BackupError, match="no backup labelled"):
        native.restore(env.cfg, label, str(env.root / "r" / "data"))

    fast = BackupConfig.from_dict({**env.cfg.to_dict(), "compression": "lz4", "parallel": 4})
    entry = native.take_backup(fast, "full")
    assert not entry["incomplete_locations"]
    for loc in ("local-a", "local-b"):
        assert not env.backup_dir(loc, label).exists(), "debris not cleaned"
        assert (env.backup_dir(loc, entry["label"]) / "backup.json").exists()
    assert os.listdir(env.root / "spool" / "backup-staging") == []
    assert backup_verify.integrity(env.cfg, Catalog(env.cfg), targets)["ok"]


@pytest.fixture
def small_tmpfs():
    mount = BASE / "tmpfs-small"
    mount.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_target_disk_full(pg_factory, small_tmpfs):
    env = make_env(pg_factory, "diskfull")  # WAL goes to local-a/local-b
    load(env.pg, rows=600_000)  # ~60 MB uncompressed: cannot fit in 30 MB
    small = {"name": "small", "type": "local", "path": str(small_tmpfs / "repo")}
    base = {**env.cfg.to_dict(), "compression": "none"}
    cfg = BackupConfig.from_dict({**base, "locations": [small]})
    with pytest.raises(BackupError, match="location small.*no space left") as err:
        native.take_backup(cfg, "full")
    print(f"\n[native] disk full: {err.value}")
    assert os.listdir(env.root / "spool" / "backup-staging") == []
    assert not list((small_tmpfs / "repo").rglob("backup.json"))
    assert not list((small_tmpfs / "repo" / "kgt" / "backups").iterdir())
    assert Catalog(cfg).entries() == []

    # with a second location the backup completes there and names the full one
    local_a = {"name": "local-a", "type": "local", "path": str(env.root / "a")}
    cfg2 = BackupConfig.from_dict({**base, "locations": [local_a, small]})
    entry = native.take_backup(cfg2, "full")
    assert entry["locations"]["local-a"]["status"] == "ok"
    assert entry["locations"]["small"]["status"] == "failed"
    assert "no space left" in entry["incomplete_locations"]["small"]
    assert not list((small_tmpfs / "repo").rglob("backup.json"))


def test_clear_errors_before_anything_changes(pg_factory):
    env = make_env(pg_factory, "errors")
    with pytest.raises(BackupError, match="backup_type must be one of"):
        native.take_backup(env.cfg, "differential")
    with pytest.raises(BackupError, match="no full backup .* take a full backup first"):
        native.take_backup(env.cfg, "incremental")
    assert not (env.root / "a" / "kgt" / "backups").exists()
    entry = native.take_backup(env.cfg, "incremental", fallback_full=True)
    assert entry["type"] == "full"

    off = make_env(pg_factory, "noarchive", archive=False)
    with pytest.raises(BackupError, match="not archiving WAL \\(archive_mode = off\\)"):
        native.take_backup(off.cfg, "full")

    failing = make_env(pg_factory, "failarchive", start=False)
    failing.pg.configure(archive_command="/bin/false")
    failing.pg.start()
    failing.pg.sql("CREATE TABLE x(i int)")
    failing.pg.scalar("SELECT pg_switch_wal()")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not failing.pg.scalar(
        "SELECT failed_count FROM pg_stat_archiver"
    ):
        time.sleep(0.2)
    with pytest.raises(BackupError, match="WAL archiving is failing"):
        native.take_backup(failing.cfg, "full")

    down = BackupConfig.from_dict(
        {**env.cfg.to_dict(), "pg": {**env.pg.backend_config(), "port": 1}}
    )
    with pytest.raises(BackupError, match="not reachable at 127.0.0.1:1"):
        native.take_backup(down, "full")


def test_archiving_that_stops_during_a_backup_fails_it_in_bounded_time(pg_factory):
    """pg_backup_stop waits for the stop segment to be archived; when archiving breaks
    mid-backup the run fails within stop_timeout and names the archiver's last failure,
    instead of hanging until someone kills it."""
    env = make_env(pg_factory, "stuckarchive")
    # Broken after the last segment switch: the preflight sees a healthy archiver, and the
    # first failure is the segment pg_backup_start switches away from.
    env.pg.sql("ALTER SYSTEM SET archive_command = '/bin/false'")
    env.pg.sql("SELECT pg_reload_conf()")
    time.sleep(1)

    started = time.monotonic()
    with pytest.raises(BackupError, match=r"not archived within 5s .*last failed 0000000") as err:
        native.take_backup(env.cfg, "full", stop_timeout=5)
    assert time.monotonic() - started < 60
    assert "archive_command error" in str(err.value)
    assert not Catalog(env.cfg).entries()
    # Archiving repaired: the next backup completes.
    env.pg.sql("ALTER SYSTEM RESET archive_command")
    env.pg.sql("SELECT pg_reload_conf()")
    time.sleep(0.5)
    env.pg.switch_wal()  # wakes the archiver, which retries the failed segments
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not env.pg.scalar(
        "SELECT last_archived_time > last_failed_time FROM pg_stat_archiver"
    ):
        time.sleep(0.2)
    assert native.take_backup(env.cfg, "full")["type"] == "full"


def test_restore_tier_with_sentinel_reports_rto(pg_factory):
    env = make_env(pg_factory, "restoretest")
    load(env.pg, rows=50_000)
    time.sleep(2.5)
    native.take_backup(env.cfg, "full")
    env.pg.sql("UPDATE a SET v = 'x' WHERE id < 10")
    incr = native.take_backup(env.cfg, "incremental")
    env.pg.switch_wal()
    with pytest.raises(BackupError, match="refusing to expire"):
        from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.catalog import (
            expire,
        )

        expire(
            env.cfg,
            Catalog(env.cfg).retention_plan(),
            [t.location for t in native.open_targets(env.cfg)[0]],
        )
    result = backup_verify.verify(env.cfg, scratch_port=env.pg.port + 60)
    restore = result["tiers"]["restore"]
    assert result["ok"], json.dumps(result, indent=1, default=str)[:4000]
    assert restore["label"] == incr["label"]
    assert restore["sentinel"]["ok"] and restore["amcheck"]["ok"]
    assert restore["rto_seconds"] > 0
    assert restore["restore_command"] == "wal tool"
    assert not (env.root / "spool" / "restore-test").exists()
    assert env.pg.scalar("SELECT count(*) FROM knowngood_sentinel") == 1
    tiers = {r["tier"] for r in Catalog(env.cfg).get(incr["label"])["verification"]}
    assert tiers == {"integrity", "freshness", "restore"}
    print(f"\n[native] restore test rto_seconds={restore['rto_seconds']}")


def test_unbundled_backups_still_restore_in_a_mixed_chain(pg_factory, monkeypatch):
    """A full taken without bundles (every file one object, as before bundling) and an
    incremental on it with bundles: restore and integrity read both layouts."""
    env = make_env(pg_factory, "mixed")
    load(env.pg, rows=20_000)
    time.sleep(2.5)
    monkeypatch.setattr(native, "BUNDLE_THRESHOLD", 0)
    full = native.take_backup(env.cfg, "full")
    manifest = json.loads((env.backup_dir("local-a", full["label"]) / "manifest.json").read_text())
    assert not any(f.get("bundle") for f in manifest["files"])
    assert not (env.backup_dir("local-a", full["label"]) / "bundles").exists()
    monkeypatch.undo()
    time.sleep(1.5)
    env.pg.sql("CREATE TABLE c AS SELECT g AS id, g AS v FROM generate_series(1, 100) g")
    env.pg.sql("CHECKPOINT")
    incr = native.take_backup(env.cfg, "incremental")
    manifest = json.loads((env.backup_dir("local-b", incr["label"]) / "manifest.json").read_text())
    assert {f["ref"] for f in manifest["files"] if f.get("bundle")} == {incr["label"]}
    assert any(f["ref"] == full["label"] and f.get("key") for f in manifest["files"])
    expected = fingerprint(env.pg, ["a", "c"])
    env.pg.switch_wal()
    for loc in ("local-a", "local-b"):
        target = env.root / f"restore-{loc}" / "data"
        got = native.restore(env.cfg, incr["label"], str(target), location=loc)
        assert got["files"] == len(manifest["files"])
    targets, _ = native.open_targets(env.cfg)
    assert backup_verify.integrity(env.cfg, Catalog(env.cfg), targets)["ok"]
    r = Restored(env.root / "restore-local-b" / "data", env.pg.port + 52)
    try:
        r.start(env)
        assert fingerprint(r.port, ["a", "c"]) == expected
    finally:
        r.stop()


def test_local_location_defers_fsync_until_flush(tmp_path):
    from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import (
        store as backup_store,
    )

    cfg = BackupConfig.from_dict(
        {
            "cluster": "kgt",
            "spool_dir": str(tmp_path / "spool"),
            "catalog_dir": str(tmp_path / "catalog"),
            "locations": [{"name": "d", "type": "local", "path": str(tmp_path / "d")}],
        }
    )
    spec = cfg.location("d")
    durable = backup_store.open_location(spec, cfg)
    assert durable.fsync is True
    durable.put_bytes("x/one", b"1")
    assert durable.flush() == 0  # written durably already: nothing pending
    lazy = backup_store.LocalLocation(spec, cfg, fsync=False)
    for i in range(3):
        lazy.put_bytes(f"y/{i}", b"data %d" % i)
    assert lazy.get_bytes("y/2") == b"data 2" and lazy.head("y/1")["size"] == 6
    assert lazy.flush() == 6  # three objects + three metadata sidecars
    assert lazy.flush() == 0
