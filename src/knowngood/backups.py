"""Controller-side views of the backup catalog (the CLI and the demo read it the same way)."""

from __future__ import annotations

import json
from typing import Any

from knowngood.lab.config import LabConfig
from knowngood.modutils import module_utils


def lab_backup_config(cfg: LabConfig) -> Any:
    """The lab primary's BackupConfig, secrets included (they never leave this process)."""
    inventory = json.loads(cfg.inventory_path.with_suffix(".json").read_text())
    hostvars = inventory["all"]["children"]["db"]["hosts"]["db1"]
    data = dict(hostvars["knowngood_backup"])
    data["encryption_key"] = hostvars["knowngood_backup_encryption_key"]
    data["signing_key"] = hostvars["knowngood_backup_signing_key"]
    return module_utils("_backup.config").parse_config(data)


def lab_catalog(cfg: LabConfig) -> list[dict]:
    return module_utils("_backup.catalog").Catalog(lab_backup_config(cfg)).entries()
