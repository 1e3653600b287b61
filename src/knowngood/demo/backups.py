"""Backups story: archive WAL to six locations, a full backup, a real restore, the catalog."""

from __future__ import annotations

from knowngood.demo.story import run, say
from knowngood.lab.config import LabConfig


def print_catalog(cfg: LabConfig) -> None:
    from knowngood.backups import lab_catalog

    for entry in lab_catalog(cfg):
        copies = entry.get("locations") or {}
        ok = sorted(n for n, c in copies.items() if c.get("status") == "ok")
        verified = {v["tier"]: v["ok"] for v in entry.get("verification", [])}
        print(
            f"    {entry['label']:<22} {entry['type']:<11} tl {entry.get('timeline')} "
            f"{entry.get('start_lsn')}..{entry.get('stop_lsn')} "
            f"{entry.get('size', 0) / 2**20:7.1f} MiB -> "
            f"{entry.get('stored_size', 0) / 2**20:6.1f} MiB stored, "
            f"in {len(ok)}/{len(copies)} locations, verified {verified or '-'}"
        )


def story(cfg: LabConfig, lb: str) -> None:
    say("backups: archive WAL to two local disks, two S3 regions, cold storage and an export")
    run(cfg, "setup-backups")
    say("take a full backup to every location")
    run(cfg, "backup", backup_type="full")
    say("prove it: integrity of every copy, freshness, and a real restore with a sentinel row")
    run(cfg, "verify-backup")
    say("the backup catalog")
    print_catalog(cfg)
