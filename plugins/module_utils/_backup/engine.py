# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one interface to a backup engine, native or pgBackRest behind it: take a backup, list
the backups, restore one (to a recovery target), list and fetch archived WAL, and the recovery
configuration of a restored data directory. PITR and verification call this, not an engine.
"""

import os
import time

from ansible_collections.knowngood.runbooks.plugins.module_utils import postgres
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import (
    archive,
    native,
    pgbackrest,
    store,
    wal,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.catalog import (
    Catalog,
    is_committed,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (
    BACKUP_TYPES,
    BackupError,
    write_atomic,
)

DELTA_JOURNAL = native.DELTA_JOURNAL
RECOVERY_KEYS = ("restore_command", "recovery_target", "recovery_target_action")


def take_backup(cfg, backup_type, meter=None, **kwargs):
    """`meter` (module_utils/progress.Progress): bytes stored (native); the phase only
    (pgBackRest, whose progress is its own)."""
    if backup_type not in BACKUP_TYPES:
        raise BackupError(f"backup_type must be one of {BACKUP_TYPES}, got {backup_type!r}")
    started = time.monotonic()
    if cfg.engine == "pgbackrest":
        if meter is not None:
            meter.phase("backup", total=None)
        entry = pgbackrest.take_backup(cfg, backup_type, **kwargs)
    else:
        entry = native.take_backup(cfg, backup_type, meter=meter, **kwargs)
    if meter is not None:
        meter.finish()
    entry.setdefault("duration_s", round(time.monotonic() - started, 3))
    return entry


def restore(cfg, label, target_dir, meter=None, **kwargs):
    if cfg.engine == "pgbackrest":
        if meter is not None:
            meter.phase("restore", total=None)
        restored = pgbackrest.restore(cfg, label, target_dir, **kwargs)
    else:
        restored = native.restore(cfg, label, target_dir, meter=meter, **kwargs)
    if meter is not None:
        meter.finish()
    return restored


def open_targets(cfg, *, names=None):
    """The native engine's locations, opened with their keys: (targets, {name: error})."""
    return native.open_targets(cfg, names=names)


def list_backups(cfg):
    """The committed backups, as catalog entries (either engine)."""
    if cfg.engine == "pgbackrest":
        return [e for e in pgbackrest.list_backups(cfg) if not e.get("error")]
    return [e for e in Catalog(cfg).entries() if is_committed(e)]


def list_wal(cfg):
    """[(source, [archived WAL file names], error or None)], one per location (native) or
    repository (pgBackRest): segments and history files, by name."""
    if cfg.engine == "pgbackrest":
        return pgbackrest.archived_wal(cfg)
    out = []
    for spec in cfg.locations:
        try:
            names = list(archive.wal_objects(store.open_location(spec, cfg)))
        except Exception as err:  # noqa: BLE001 - reported, other locations may do
            out.append((spec.name, [], str(err).splitlines()[0] if str(err) else "error"))
            continue
        out.append((spec.name, names, None))
    return out


def fetch_wal(cfg, name, dest):
    """One archived WAL file, decoded, at dest."""
    if cfg.engine == "pgbackrest":
        pgbackrest.run(cfg, ["archive-get", name, dest], timeout=600)
    elif not wal.fetch(cfg, name, dest, prefetch=False):
        raise BackupError(f"WAL file {name} is in no location")


def restore_to_target(
    cfg, label, data_dir, target, settings, restore_command, timeline=None, delta=None, meter=None
):
    """Restore backup `label` into data_dir to stop (paused) at `target`, a pitr recovery target
    ({time|lsn|xid|name: value} or {immediate: true}, maybe inclusive); `settings` go to
    postgresql.auto.conf. restore_command() gives the native engine's restore_command, which
    follows `timeline` when given (else the latest). `delta` ({snapshot_dir,
    system_identifier}): rewrite only what differs in an existing data_dir (native engine)."""
    if delta is not None and cfg.engine == "pgbackrest":
        raise BackupError("mode delta restores with the native engine only; use mode full")
    if cfg.engine == "pgbackrest":
        kind = next(iter(k for k in target if k != "inclusive"))
        spec = {"type": kind, "action": "pause"}
        if kind != "immediate":
            spec["value"] = target[kind]
        if "inclusive" in target:
            spec["inclusive"] = target["inclusive"]
        restored = restore(cfg, label, data_dir, target=spec, meter=meter)
        append_settings(cfg, data_dir, settings)
        return restored
    restored = restore(cfg, label, data_dir, delta=delta, meter=meter)
    strip_recovery_settings(data_dir, cfg)
    extra = dict(settings)
    if timeline is not None:
        extra["recovery_target_timeline"] = str(timeline)
    write_recovery(data_dir, cfg, restore_command(), target=target, action="pause", settings=extra)
    return restored


def delta_refusal(cfg, data_dir, snapshot_dir):
    """BackupError when a delta restore of data_dir (its replaced files kept in snapshot_dir)
    cannot be done; read-only, asked before anything is stopped or written."""
    if cfg.engine == "pgbackrest":
        raise BackupError("mode delta restores with the native engine only; use mode full")
    native.delta_refusal(data_dir, snapshot_dir)


def delta_preview(cfg, label, data_dir):
    """What a delta restore of backup `label` into data_dir would change (read-only): the
    plan (paths per kind of change) and its counts."""
    delta_refusal(cfg, data_dir, data_dir + ".pre-restore-preview")
    _entry, _target, manifest = native.open_backup(cfg, label, None)
    plan = native.delta_plan(manifest, data_dir, cfg.io_parallel)
    return plan, native.delta_report(plan)


# ---- the recovery configuration of a restored data directory ---------------------------------


def write_recovery(target_dir, cfg, restore_command, target=None, action="promote", settings=None):
    """Recovery configuration for a restored data directory: restore_command, an optional
    target ({time|lsn|xid|name: value} or {immediate: true}), the action, recovery.signal.

    `settings` adds further lines to postgresql.auto.conf (port, archive_mode = off, ...)."""
    if action not in ("promote", "pause", "shutdown"):
        raise BackupError(f"recovery action must be promote, pause or shutdown, got {action!r}")
    lines = {"restore_command": restore_command, "recovery_target_timeline": "latest"}
    for key, value in (target or {}).items():
        if key == "immediate":
            if value:
                lines["recovery_target"] = "immediate"
        elif key in ("time", "lsn", "xid", "name"):
            lines[f"recovery_target_{key}"] = str(value)
        elif key == "inclusive":
            lines["recovery_target_inclusive"] = "on" if value else "off"
        else:
            raise BackupError(f"unknown recovery target key {key!r}")
    lines["recovery_target_action"] = action
    lines.update(settings or {})
    uid, gid = cfg.pg.os_ids()
    path = os.path.join(target_dir, "postgresql.auto.conf")
    text = "\n# knowngood restore\n" + "".join(
        f"{k} = {postgres.conf_value(v)}\n" for k, v in lines.items()
    )
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
    signal_path = os.path.join(target_dir, "recovery.signal")
    with open(signal_path, "w", encoding="utf-8"):
        pass
    for p in (path, signal_path):
        os.chown(p, uid, gid)
        os.chmod(p, 0o600)
    return {"recovery_signal": signal_path, "settings": sorted(lines)}


def strip_recovery_settings(data_dir, cfg):
    """Drop earlier recovery settings from postgresql.auto.conf (two targets = FATAL)."""
    path = os.path.join(data_dir, "postgresql.auto.conf")
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return
    keep = []
    for line in lines:
        key = line.split("=", 1)[0].strip()
        if line.strip() == "# knowngood restore" or key in RECOVERY_KEYS:
            continue
        if key.startswith("recovery_target_") or key == "hot_standby":
            continue
        keep.append(line)
    write_atomic(path, "\n".join(keep) + "\n", mode=0o600)
    os.chown(path, *cfg.pg.os_ids())


def append_settings(cfg, data_dir, settings):
    """Further lines in data_dir's postgresql.auto.conf (owned by the cluster's OS user)."""
    if not settings:
        return
    path = os.path.join(data_dir, "postgresql.auto.conf")
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(f"{k} = {postgres.conf_value(v)}\n" for k, v in settings.items()))
    os.chown(path, *cfg.pg.os_ids())
