"""backup_store against real locations: local dirs and both lab SeaweedFS S3 regions.

What matters: an object put is the object got (checksums verified on both sides), metadata
carries the content sha256, misconfiguration fails fast with a message naming the location
and the cause, and a cold (object-locked) copy cannot be deleted before its retention ends.
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import store
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (
    BackupError,
    parse_iso,
    sha256_bytes,
    sha256_file,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.config import (
    BackupConfig,
)
from conftest import REPO, TEST_LAB_ROOT
from pgcluster import make_dirs_for_postgres, postgres_ids

from knowngood.lab import s3
from knowngood.lab.config import LabConfig

ENC_KEY = "store-test-passphrase-0123456789"


@pytest.fixture(scope="module")
def labcfg(lab_session) -> LabConfig:
    return LabConfig.load(TEST_LAB_ROOT)


def s3_spec(labcfg: LabConfig, region: int, **extra) -> dict:
    status = s3.s3_status(labcfg)[s3.s3_region_name(region)]
    access, secret = s3.s3_credentials(labcfg)
    spec = {
        "name": f"s3-{s3.s3_region_name(region)}",
        "type": "s3",
        "endpoint_url": status["endpoint"],
        "region": status["region"],
        "bucket": status["bucket"],
        "prefix": f"test-store/{uuid.uuid4().hex[:8]}",
        "access_key": access,
        "secret_key": secret,
    }
    spec.update(extra)
    return spec


def make_cfg(tmp_path: Path, locations: list[dict], **extra) -> BackupConfig:
    data = {
        "cluster": "storetest",
        "encryption_key": ENC_KEY,
        "signing_key": "signing-key-0123456789",
        "spool_dir": str(tmp_path / "spool"),
        "retries": {"attempts": 2, "base_delay": 0.1, "max_delay": 0.5},
        "locations": locations,
    }
    data.update(extra)
    return BackupConfig.from_dict(data)


@pytest.fixture
def locations(tmp_path: Path, labcfg: LabConfig):
    """A local dir and both S3 regions of the lab, each under a fresh prefix."""
    cfg = make_cfg(
        tmp_path,
        [
            {"name": "local-a", "type": "local", "path": str(tmp_path / "local-a")},
            s3_spec(labcfg, 0),
            s3_spec(labcfg, 1),
        ],
    )
    locs = store.open_locations(cfg)
    yield cfg, locs
    for loc in locs:
        if loc.type == "s3":
            loc.delete_prefix("obj")


def test_object_round_trip_every_location(tmp_path: Path, locations) -> None:
    cfg, locs = locations
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024) + b"tail")
    for loc in locs:
        assert loc.check()["ok"]
        # bytes: content sha256 recorded in metadata
        put = loc.put_bytes("obj/small.json", b'{"a": 1}', meta={"label": "x"})
        assert put["sha256"] == sha256_bytes(b'{"a": 1}')
        head = loc.head("obj/small.json")
        assert head["size"] == 8 and head["sha256"] == put["sha256"]
        assert head["meta"]["label"] == "x"
        assert loc.get_bytes("obj/small.json") == b'{"a": 1}'
        # file: the caller's content sha256 (before compression) is what head reports
        put = loc.put_file("obj/deep/dir/big.lz4", big, sha256="c0ffee" * 10 + "abcd")
        assert put["size"] == big.stat().st_size
        assert put["stored_sha256"] == sha256_file(big)
        head = loc.head("obj/deep/dir/big.lz4")
        assert head["sha256"] == "c0ffee" * 10 + "abcd"
        assert head["stored_sha256"] == sha256_file(big)
        back = tmp_path / f"back-{loc.name}"
        got = loc.get_file("obj/deep/dir/big.lz4", back)
        assert got["stored_sha256"] == sha256_file(big) and back.read_bytes() == big.read_bytes()
        assert loc.head("obj/missing") is None and not loc.exists("obj/missing")
        assert loc.list("obj") == ["obj/deep/dir/big.lz4", "obj/small.json"]
        assert loc.list("obj/deep") == ["obj/deep/dir/big.lz4"]
        assert loc.list("ob") == []  # a prefix is a folder, not a string prefix
        loc.delete("obj/small.json")
        assert not loc.exists("obj/small.json")
        loc.delete_prefix("obj/deep")
        assert loc.list("obj") == []
        with pytest.raises(BackupError, match="not found"):
            loc.get_bytes("obj/small.json")


def test_multipart_upload_is_verified(tmp_path: Path, labcfg: LabConfig) -> None:
    """Past the multipart threshold the ETag is the multipart MD5; it must match ours."""
    cfg = make_cfg(tmp_path, [s3_spec(labcfg, 1)])
    (loc,) = store.open_locations(cfg)
    big = tmp_path / "big.bin"
    with big.open("wb") as handle:
        for _ in range(store.MULTIPART_THRESHOLD // (4 << 20) + 3):
            handle.write(os.urandom(4 << 20))
    t0 = time.monotonic()
    loc.put_file("obj/multi.raw", big)
    elapsed = time.monotonic() - t0
    head = loc.head("obj/multi.raw")
    etag, _ = store.expected_etag(big, big.stat().st_size)
    assert head["etag"] == etag and etag.endswith("-5")
    assert head["size"] == big.stat().st_size
    print(f"multipart upload {big.stat().st_size / elapsed / 1e6:.0f} MB/s")
    loc.get_file("obj/multi.raw", tmp_path / "back")
    assert sha256_file(tmp_path / "back") == sha256_file(big)
    loc.delete_prefix("obj")


@pytest.mark.parametrize("key", ["../x", "/abs", "a/../b", "a//b", "", ".meta/x", "a/./b"])
def test_bad_keys_rejected(tmp_path: Path, key: str) -> None:
    cfg = make_cfg(tmp_path, [{"name": "l", "type": "local", "path": str(tmp_path / "l")}])
    (loc,) = store.open_locations(cfg)
    with pytest.raises(BackupError, match="invalid object key"):
        loc.put_bytes(key, b"x")


def test_local_put_is_atomic_and_leaves_no_debris(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, [{"name": "l", "type": "local", "path": str(tmp_path / "l")}])
    (loc,) = store.open_locations(cfg)
    loc.put_bytes("a/b", b"one")
    loc.put_bytes("a/b", b"two")  # replace
    assert loc.get_bytes("a/b") == b"two"
    assert loc.head("a/b")["sha256"] == sha256_bytes(b"two")
    files = sorted(p.name for p in (tmp_path / "l" / "storetest" / "a").iterdir())
    assert files == ["b"]
    with pytest.raises(BackupError, match="not found"):
        loc.get_file("a/missing", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unwritable_local_dir_named(tmp_path: Path) -> None:
    """As the postgres user (root writes anywhere), a root-owned directory is not writable."""
    root = make_dirs_for_postgres(Path(f"/tmp/kg-store-{uuid.uuid4().hex[:8]}"))
    target = root / "backups"
    target.mkdir()
    os.chmod(target, 0o755)  # owned by root
    code = f"""
import sys
sys.path.insert(0, {str(REPO / "collections")!r})
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import store as s
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.config import BackupConfig
cfg = BackupConfig.from_dict({{"cluster": "c", "spool_dir": "/tmp",
    "locations": [{{"name": "local-b", "type": "local", "path": {str(target)!r}}}]}})
try:
    s.open_locations(cfg)[0].check()
except s.BackupError as err:
    print(err)
"""
    uid, gid = postgres_ids()
    out = subprocess.run(
        ["/usr/bin/python3", "-c", code], user=uid, group=gid, capture_output=True, text=True
    )
    shutil.rmtree(root)
    assert f"location local-b: {target}/c is not writable" in out.stdout, out.stderr


def test_export_missing_medium(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, [{"name": "usb", "type": "export", "path": str(tmp_path / "none")}])
    (loc,) = store.open_locations(cfg)
    with pytest.raises(BackupError, match="location usb: .* does not exist .*mounted"):
        loc.check()


def test_export_signed_manifest(tmp_path: Path) -> None:
    (tmp_path / "usb").mkdir()
    cfg = make_cfg(tmp_path, [{"name": "usb", "type": "export", "path": str(tmp_path / "usb")}])
    (loc,) = store.open_locations(cfg)
    loc.check()
    manifest = b'{"files": [{"path": "base/1/1259", "sha256": "ab"}]}'
    loc.write_signed_manifest("20261128T181500Z-full", manifest, cfg.signing_key)
    assert loc.verify_signed_manifest("20261128T181500Z-full", cfg.signing_key) == manifest
    with pytest.raises(BackupError, match="signature does not match"):
        loc.verify_signed_manifest("20261128T181500Z-full", "another-signing-key-xyz")
    path = tmp_path / "usb" / "storetest" / "backups" / "20261128T181500Z-full" / "manifest.json"
    path.write_bytes(manifest.replace(b'"ab"', b'"cd"'))  # tampered on the medium
    with pytest.raises(BackupError, match="signature does not match"):
        loc.verify_signed_manifest("20261128T181500Z-full", cfg.signing_key)
    with pytest.raises(BackupError, match="manifest.json is missing"):
        loc.verify_signed_manifest("20990101T000000Z-full", cfg.signing_key)


def test_wrong_s3_credentials_named(tmp_path: Path, labcfg: LabConfig) -> None:
    spec = s3_spec(labcfg, 0, secret_key="not-the-secret-at-all")
    cfg = make_cfg(tmp_path, [spec])
    (loc,) = store.open_locations(cfg)
    for action in (loc.check, lambda: loc.put_bytes("obj/x", b"x"), lambda: loc.list("obj")):
        with pytest.raises(BackupError, match="location s3-region-a: wrong S3 credentials") as e:
            action()
        assert "not-the-secret-at-all" not in str(e.value)


def test_missing_bucket_and_unreachable_endpoint(tmp_path: Path, labcfg: LabConfig) -> None:
    cfg = make_cfg(tmp_path, [s3_spec(labcfg, 0, bucket="no-such-bucket-kg")])
    with pytest.raises(BackupError, match="bucket no-such-bucket-kg does not exist"):
        store.open_locations(cfg)[0].check()
    # A port nobody listens on: refused at once; retried with backoff, then named.
    cfg = make_cfg(tmp_path, [s3_spec(labcfg, 0, endpoint_url="http://127.0.0.1:9")])
    t0 = time.monotonic()
    with pytest.raises(BackupError, match=r"endpoint http://127.0.0.1:9 unreachable"):
        store.open_locations(cfg)[0].check()
    assert time.monotonic() - t0 < 5


def test_retry_only_transient() -> None:
    cfg = BackupConfig.from_dict(
        {
            "cluster": "c",
            "retries": {"attempts": 4, "base_delay": 0.01, "max_delay": 0.02},
            "locations": [{"name": "l", "type": "local", "path": "/tmp/x"}],
        }
    )
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset")
        return "ok"

    assert store.retry(flaky, cfg, "flaky") == "ok" and len(calls) == 3
    calls.clear()

    def denied():
        calls.append(1)
        raise BackupError("location x: wrong S3 credentials")

    with pytest.raises(BackupError):
        store.retry(denied, cfg, "denied")
    assert len(calls) == 1  # never retried

    def always_down():
        calls.append(1)
        raise store.TransientError("location x: endpoint down unreachable")

    calls.clear()
    with pytest.raises(store.TransientError):
        store.retry(always_down, cfg, "down")
    assert len(calls) == 4


def test_repo_marker_and_wrong_key(tmp_path: Path, labcfg: LabConfig) -> None:
    locs = [
        {"name": "local-a", "type": "local", "path": str(tmp_path / "a"), "encrypt": True},
        s3_spec(labcfg, 0, prefix=f"test-repo/{uuid.uuid4().hex[:8]}"),
    ]
    cfg = make_cfg(tmp_path, locs)
    for loc in store.open_locations(cfg):
        info = store.ensure_repo(loc, cfg)
        assert info["created"] and info["encrypted"]
        assert loc.key is not None and len(loc.key) == 32
        again = store.ensure_repo(loc, cfg)
        assert not again["created"] and again["key_check"] == info["key_check"]
        assert ENC_KEY not in str(again)
    other = make_cfg(tmp_path, locs, encryption_key="a-different-passphrase-123")
    for loc in store.open_locations(other):
        with pytest.raises(BackupError, match=f"location {loc.name}: wrong encryption key") as e:
            store.ensure_repo(loc, other)
        assert "a-different-passphrase-123" not in str(e.value)
    # The key is shared by every location of the cluster: encode once, upload everywhere.
    keys = {bytes(loc.key) for loc in store.open_locations(cfg) if store.ensure_repo(loc, cfg)}
    assert len(keys) == 1
    store.open_locations(cfg)[1].delete_prefix("wal")  # nothing there: no error


def test_cold_bucket_object_lock(tmp_path: Path, labcfg: LabConfig) -> None:
    """object_lock_days > 0: bucket created with object lock, every put is COMPLIANCE-locked
    with the storage class; deleting the locked version before retention fails."""
    bucket = f"kg-cold-{uuid.uuid4().hex[:10]}"
    spec = s3_spec(labcfg, 1, name="cold", bucket=bucket, object_lock_days=2)
    spec["storage_class"] = "GLACIER"
    cfg = make_cfg(tmp_path, [spec])
    (loc,) = store.open_locations(cfg)
    with pytest.raises(BackupError, match=f"bucket {bucket} does not exist"):
        loc.check()
    assert loc.ensure_bucket()["created"]
    assert loc.ensure_bucket() == {"bucket": bucket, "created": False}
    loc.check()
    loc.put_bytes("obj/locked", b"precious")
    head = loc.head("obj/locked")
    assert head["storage_class"] == "GLACIER"
    until = parse_iso(head["retain_until"])
    expected = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=2)
    assert abs((until - expected).total_seconds()) < 120
    (version,) = loc.versions("obj/locked")
    with pytest.raises(BackupError, match="access denied .*object locked"):
        loc.delete_version("obj/locked", version["version_id"])
    loc.delete("obj/locked")  # a delete marker only: the locked data stays
    assert not loc.exists("obj/locked")
    kept = [v for v in loc.versions("obj/locked") if not v["delete_marker"]]
    assert [v["version_id"] for v in kept] == [version["version_id"]]
    # A plain bucket cannot serve as cold storage: no object lock there.
    spec2 = s3_spec(labcfg, 1, name="cold2", object_lock_days=2)
    (loc2,) = store.open_locations(make_cfg(tmp_path, [spec2]))
    with pytest.raises(BackupError, match="has no object lock"):
        loc2.check()
