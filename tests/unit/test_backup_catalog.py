"""The catalog: entries, chains, verification history, retention plan and expiry."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import (
    store as backup_store,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.catalog import (
    Catalog,
    expire,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (
    BackupError,
    iso,
    segment_from_parts,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.config import (
    BackupConfig,
)

NOW = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.UTC)


def _cfg(tmp_path: Path, **extra) -> BackupConfig:
    return BackupConfig.from_dict(
        {
            "cluster": "kgt",
            "spool_dir": str(tmp_path / "spool"),
            "catalog_dir": str(tmp_path / "catalog"),
            "retention": {"full": 2, "window_days": 7},
            "locations": [
                {"name": "a", "type": "local", "path": str(tmp_path / "a")},
                {"name": "b", "type": "local", "path": str(tmp_path / "b")},
            ],
            **extra,
        }
    )


def _entry(days_ago, kind="full", parent=None, chain=None, segno=None):
    start = NOW - datetime.timedelta(days=days_ago)
    label = start.strftime("%Y%m%dT%H%M%SZ") + ("-full" if kind == "full" else "-incr")
    return {
        "label": label,
        "type": kind,
        "engine": "native",
        "parent": parent,
        "chain": (chain or []) + [label],
        "start_time": iso(start),
        "stop_time": iso(start + datetime.timedelta(minutes=5)),
        "wal_start": segment_from_parts(1, segno if segno is not None else int(100 - days_ago)),
        "locations": {"a": {"status": "ok"}, "b": {"status": "ok"}},
    }


def _history(catalog):
    """Fulls 30, 20, 10, 5 and 1 days ago, each with an incremental a day later (not the last)."""
    made = {}
    for days in (30, 20, 10, 5, 1):
        full = catalog.put(_entry(days))
        made[days] = full
        if days > 1:
            incr = catalog.put(_entry(days - 0.5, "incremental", full["label"], [full["label"]]))
            made[days - 0.5] = incr
    return made


def test_entries_chain_newest_and_history(tmp_path):
    catalog = Catalog(_cfg(tmp_path))
    made = _history(catalog)
    labels = [e["label"] for e in catalog.entries()]
    assert labels == sorted(labels) and len(labels) == 9
    chain = catalog.chain(made[4.5]["label"])
    assert [e["label"] for e in chain] == [made[5]["label"], made[4.5]["label"]]
    assert catalog.newest()["label"] == made[1]["label"]
    assert catalog.newest("incremental")["label"] == made[4.5]["label"]
    assert catalog.newest(verified=True) is None
    catalog.record_verification(made[1]["label"], {"tier": "restore", "ok": True})
    assert catalog.newest(verified=True)["label"] == made[1]["label"]
    catalog.put(dict(made[1]))  # re-putting keeps the verification history
    assert catalog.get(made[1]["label"])["verification"][0]["tier"] == "restore"
    with pytest.raises(BackupError, match="in the catalog"):
        catalog.chain("20200101T000000Z-full")


def test_retention_plan_keeps_what_the_window_needs(tmp_path):
    catalog = Catalog(_cfg(tmp_path))
    made = _history(catalog)
    catalog.record_verification(made[1]["label"], {"tier": "restore", "ok": True})
    plan = catalog.retention_plan(now=NOW)
    keep, expired = set(plan["keep"]), set(plan["expire"])
    # 2 newest fulls (5 d, 1 d), the window anchor (10 d: newest full before now-7d) and
    # every incremental of a kept full
    assert keep == {made[d]["label"] for d in (10, 9.5, 5, 4.5, 1)}
    assert expired == {made[d]["label"] for d in (30, 29.5, 20, 19.5)}
    assert "window start" in plan["reasons"][made[10]["label"]]
    assert "newest full" in plan["reasons"][made[1]["label"]]
    assert plan["wal_keep_from"] == made[10]["wal_start"]
    # a bigger window reaches further back
    wide = Catalog(_cfg(tmp_path, retention={"full": 1, "window_days": 15}))
    assert set(wide.retention_plan(now=NOW)["expire"]) == {made[30]["label"], made[29.5]["label"]}
    # nothing older than the window and few fulls: keep everything
    all_kept = Catalog(_cfg(tmp_path, retention={"full": 10, "window_days": 60}))
    assert all_kept.retention_plan(now=NOW)["expire"] == []


def test_expire_refuses_while_newest_unverified_then_deletes_everywhere(tmp_path):
    cfg = _cfg(tmp_path)
    catalog = Catalog(cfg)
    made = _history(catalog)
    locations = backup_store.open_locations(cfg)
    for location in locations:
        for entry in catalog.entries():
            prefix = f"backups/{entry['label']}/"
            location.put_bytes(prefix + "files/base/1/1.raw", b"x")
            location.put_bytes(prefix + "backup.json", b"{}")
        for segno in range(60, 100):
            location.put_bytes(f"wal/00000001/{segment_from_parts(1, segno)}.raw", b"w")
    unproven = catalog.retention_plan(now=NOW)
    assert unproven["expire"] == [] and unproven["newest_verified"] is None
    with pytest.raises(BackupError, match="refusing to expire.*no backup is verified"):
        expire(cfg, {**unproven, "expire": [made[30]["label"]]}, locations)
    catalog.record_verification(made[1]["label"], {"tier": "integrity", "ok": False})
    with pytest.raises(BackupError, match="refusing to expire"):
        expire(cfg, catalog.retention_plan(now=NOW), locations)
    catalog.record_verification(made[1]["label"], {"tier": "integrity", "ok": True})
    plan = catalog.retention_plan(now=NOW)
    # a plan made elsewhere cannot delete the proven restore point either
    with pytest.raises(BackupError, match="newest verified backup"):
        expire(cfg, {**plan, "expire": [made[1]["label"]]}, locations)
    done = expire(cfg, plan, locations)
    assert done["ok"] and set(done["expired"]) == set(plan["expire"])
    for location in locations:
        left = {k.split("/")[1] for k in location.list("backups")}
        assert left == set(plan["keep"])
        wal = backup_store_segments(location)
        assert min(wal) == plan["wal_keep_from"]
        assert done["wal_deleted"][location.name] == 90 - 60
    assert {e["label"] for e in catalog.entries()} == set(plan["keep"])
    refreshed = catalog.refresh(locations)
    assert refreshed["debris"] == {} and refreshed["unreachable"] == {}


def test_an_unverified_newest_full_never_pushes_out_the_proven_one(tmp_path):
    """backup.yml -e backup_expire=true expires right after a backup nothing verified yet:
    the newest verified full, its chain and everything newer stay, whatever retention_full
    says, so a proven restore point always survives."""
    catalog = Catalog(_cfg(tmp_path, retention={"full": 1, "window_days": 1}))
    made = _history(catalog)
    catalog.record_verification(made[10]["label"], {"tier": "restore", "ok": True})
    plan = catalog.retention_plan(now=NOW)
    assert plan["newest_verified"] == made[10]["label"]
    # retention alone keeps the newest full (1 d) and the window's anchor (5 d); the
    # guard keeps the proven 10 d chain
    assert set(plan["keep"]) == {made[d]["label"] for d in (10, 9.5, 5, 4.5, 1)}
    assert set(plan["expire"]) == {made[d]["label"] for d in (30, 29.5, 20, 19.5)}
    assert "newest verified backup" in plan["reasons"][made[10]["label"]]
    assert "newest verified backup" in plan["reasons"][made[9.5]["label"]]
    assert plan["wal_keep_from"] == made[10]["wal_start"]


def test_refresh_marks_missing_copies_and_debris(tmp_path):
    cfg = _cfg(tmp_path)
    catalog = Catalog(cfg)
    entry = catalog.put(_entry(1))
    a, b = backup_store.open_locations(cfg)
    a.put_bytes(f"backups/{entry['label']}/backup.json", b"{}")
    b.put_bytes("backups/20261127T000000Z-full/files/x.raw", b"half")  # crashed run
    result = catalog.refresh([a, b])
    assert result["debris"] == {"b": ["20261127T000000Z-full"]}
    copies = catalog.get(entry["label"])["locations"]
    assert copies["a"]["status"] == "ok" and copies["b"]["status"] == "missing"


def backup_store_segments(location):
    return sorted(k.rsplit("/", 1)[-1].split(".")[0] for k in location.list("wal"))
