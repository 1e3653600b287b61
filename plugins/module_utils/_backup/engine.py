# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One entry point per operation, whichever engine the configuration names."""

import time

from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import (
    native as backup_native,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import (
    pgbackrest as backup_pgbackrest,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (
    BACKUP_TYPES,
    BackupError,
)


def _engine(cfg):
    return backup_pgbackrest if cfg.engine == "pgbackrest" else backup_native


def take_backup(cfg, backup_type, **kwargs):
    if backup_type not in BACKUP_TYPES:
        raise BackupError(f"backup_type must be one of {BACKUP_TYPES}, got {backup_type!r}")
    started = time.monotonic()
    entry = _engine(cfg).take_backup(cfg, backup_type, **kwargs)
    entry.setdefault("duration_s", round(time.monotonic() - started, 3))
    return entry


def restore(cfg, label, target_dir, **kwargs):
    return _engine(cfg).restore(cfg, label, target_dir, **kwargs)
