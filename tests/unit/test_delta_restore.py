"""Delta restore's file logic (native.delta_plan and what it applies): size first, sha256 when
the size matches, mtimes never trusted; replaced and removed files kept by hard link in the
snapshot; a re-run after a kill converges without overwriting the snapshot's originals."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import native
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import BackupError

BACKUP = {
    "PG_VERSION": b"15\n",
    "base/1/1259": b"A" * 8192,
    "base/1/2608": b"B" * 8192,
    "global/pg_control": b"C" * 512,
}


def _manifest() -> dict:
    files = [{"path": p, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
             for p, d in BACKUP.items()]  # fmt: skip
    return {"files": files, "dirs": ["base", "base/1", "global", "pg_wal"]}


def _write(root: Path, rel: str, data: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def live(tmp_path):
    data = tmp_path / "data"
    for rel, content in BACKUP.items():
        _write(data, rel, content)
    return data


def _cfg():
    return SimpleNamespace(pg=SimpleNamespace(os_ids=lambda: (os.getuid(), os.getgid())))


def _apply(live: Path, snapshot: Path):
    manifest = _manifest()
    plan = native.delta_plan(manifest, str(live))
    delta = {"snapshot_dir": str(snapshot), "system_identifier": "7"}
    todo = native._apply_delta_plan(plan, manifest, str(live), delta, "full-1", _cfg())
    return plan, todo


def test_unchanged_directory_needs_nothing(live):
    plan = native.delta_plan(_manifest(), str(live))
    assert plan["create"] == plan["rewrite"] == plan["remove"] == []
    assert plan["checked"] == plan["checksummed"] == len(BACKUP)
    assert plan["bytes_to_write"] == 0


def test_same_size_change_with_old_mtime_is_found_by_checksum(live):
    path = live / "base/1/1259"
    stat = path.stat()
    path.write_bytes(b"A" * 4096 + b"X" + b"A" * 4095)  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old mtime
    plan = native.delta_plan(_manifest(), str(live))
    assert plan["rewrite"] == ["base/1/1259"]
    assert plan["bytes_to_write"] == 8192


def test_changes_are_kept_by_hard_link_and_extras_removed(live, tmp_path):
    grown = _write(live, "base/1/2608", b"B" * 16384)  # size differs: no checksum needed
    _write(live, "base/1/99999", b"new table")  # not in the backup
    _write(live, "pg_wal/000000010000000000000009", b"w" * 100)
    _write(live, "postmaster.pid", b"123\n")
    _write(live, "pgsql_tmp_dir/junk", b"j")  # a directory the backup does not have
    (live / "global/pg_control").unlink()  # missing: created
    inode = grown.stat().st_ino
    snapshot = tmp_path / "data.pre-restore-r1"
    plan, todo = _apply(live, snapshot)
    assert plan["rewrite"] == ["base/1/2608"]
    assert plan["create"] == ["global/pg_control"]
    assert plan["remove"] == sorted(["base/1/99999", "pg_wal/000000010000000000000009",
                                     "postmaster.pid", "pgsql_tmp_dir/junk"])  # fmt: skip
    assert sorted(i["path"] for i in todo) == ["base/1/2608", "global/pg_control"]
    # The old bytes are in the snapshot, the same inode (a link, not a copy).
    assert (snapshot / "base/1/2608").stat().st_ino == inode
    assert (snapshot / "base/1/2608").read_bytes() == b"B" * 16384
    assert (snapshot / "base/1/99999").read_bytes() == b"new table"
    assert not (live / "base/1/2608").exists() and not (live / "postmaster.pid").exists()
    assert not (live / "pgsql_tmp_dir").exists()
    assert (live / "base/1/1259").read_bytes() == BACKUP["base/1/1259"]  # untouched
    journal = json.loads((snapshot / native.DELTA_JOURNAL).read_text())
    assert journal["created"] == ["global/pg_control"]
    assert journal["replaced"] == ["base/1/2608"]
    assert "postmaster.pid" in journal["removed"] and journal["system_identifier"] == "7"


def test_rerun_after_a_kill_keeps_the_first_original(live, tmp_path):
    _write(live, "base/1/1259", b"original" + b"A" * 8184)
    snapshot = tmp_path / "snap"
    _apply(live, snapshot)  # "killed" here: base/1/1259 retired, not yet restored
    assert not (live / "base/1/1259").exists()
    _write(live, "base/1/1259", b"half-written")  # what the killed write left
    _write(live, "base/1/.1259.abc123.tmp", b"codec temp")
    plan, todo = _apply(live, snapshot)
    assert plan["rewrite"] == ["base/1/1259"] and plan["temps"] == ["base/1/.1259.abc123.tmp"]
    assert (snapshot / "base/1/1259").read_bytes().startswith(b"original")
    assert not (snapshot / "base/1/.1259.abc123.tmp").exists()
    assert not (live / "base/1/.1259.abc123.tmp").exists()
    assert [i["path"] for i in todo] == ["base/1/1259"]


def test_symlinks_and_another_file_system_are_refused_read_only(live, tmp_path):
    native.delta_refusal(str(live), str(tmp_path / "snap"))  # plain directory: fine
    os.symlink("/somewhere/else", live / "pg_wal_link")
    with pytest.raises(BackupError, match="symlink"):
        native.delta_refusal(str(live), str(tmp_path / "snap"))
    assert not (tmp_path / "snap").exists()
    os.unlink(live / "pg_wal_link")
    if Path("/dev/shm").is_dir() and os.stat("/dev/shm").st_dev != os.stat(live).st_dev:
        with pytest.raises(BackupError, match="another file system"):
            native.delta_refusal(str(live), "/dev/shm/kg-delta-snap")


def test_the_pgbackrest_engine_refuses_delta_before_anything(live, tmp_path):
    from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import engine

    with pytest.raises(BackupError, match="native engine only"):
        engine.delta_refusal(SimpleNamespace(engine="pgbackrest"), str(live), str(tmp_path / "s"))
    assert not (tmp_path / "s").exists()
