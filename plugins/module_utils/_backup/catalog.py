# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backup catalog: one JSON entry per backup, chains, copies per location, verification
history and the retention plan.

    catalog_dir/<label>.json          the entry (as backup.json in each location) plus history
    catalog_dir/manifests/<label>.<variant>.json   cached manifest.json (incremental parents)

A location holds a committed copy of a backup when `<cluster>/backups/<label>/backup.json` is
there; a backup directory without it is debris of a crashed run. Standard library only.
"""

import contextlib
import datetime
import json
import os

from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import archive
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (
    WAL_SEGMENT_RE,
    BackupError,
    dump_json,
    iso,
    parse_iso,
    read_json,
    sha256_bytes,
    utcnow,
    write_atomic,
)

VERIFY_TIERS_PROVING = ("integrity", "restore")


def location_name(location):
    """The configured name of a store Location object."""
    name = getattr(location, "name", None)
    if name:
        return name
    spec = getattr(location, "spec", None)
    if spec is not None and getattr(spec, "name", None):
        return spec.name
    raise BackupError(f"location object {location!r} has no name")


def location_spec(location):
    return getattr(location, "spec", None)


def backups_prefix(cfg, label=None):
    """Keys are relative to the location's `<cluster>/` root (store adds it)."""
    return "backups/" + (f"{label}/" if label else "")


def entry_key(cfg, label):
    """The key of a copy's backup.json (its commit marker: written last, deleted first)."""
    return f"{backups_prefix(cfg, label)}backup.json"


def manifest_key(cfg, label):
    """The key of a copy's manifest.json (every file of the backup and where it is stored)."""
    return f"{backups_prefix(cfg, label)}manifest.json"


def read_entry(location, cfg, label):
    """The backup.json of the copy of `label` in location, parsed."""
    return json.loads(location.get_bytes(entry_key(cfg, label)))


def read_manifest_bytes(location, cfg, label):
    """The manifest.json of the copy of `label` in location, as stored."""
    return location.get_bytes(manifest_key(cfg, label))


def read_manifest(cfg, target, label, expect_sha256=None):
    """(manifest, backup.json) of one copy, the manifest checked against the checksum given
    or the one in backup.json; BackupError naming the location when either is bad."""
    try:
        raw_entry = target.location.get_bytes(entry_key(cfg, label))
        raw = read_manifest_bytes(target.location, cfg, label)
    except Exception as err:  # noqa: BLE001
        raise BackupError(f"location {target.name}: cannot read backup {label}: {err}") from None
    stored_entry = json.loads(raw_entry)
    want = expect_sha256 or ((stored_entry.get("locations") or {}).get(target.name) or {}).get(
        "manifest_sha256"
    )
    if want is None:
        want = (stored_entry.get("manifests") or {}).get(target.variant)
    if want and sha256_bytes(raw) != want:
        raise BackupError(
            f"location {target.name}: manifest.json of {label} does not match the checksum in "
            "its backup.json (bad manifest)"
        )
    try:
        return json.loads(raw), stored_entry
    except ValueError as err:
        raise BackupError(f"location {target.name}: manifest.json of {label} is not JSON") from err


def _when(entry):
    return entry.get("start_time") or entry.get("stop_time") or ""


def _ts(text):
    return parse_iso(text) if text else None


def is_committed(entry):
    """True when at least one location holds a committed copy."""
    return any(c.get("status") == "ok" for c in (entry.get("locations") or {}).values())


def is_verified(entry):
    """The latest result of every proving tier that ran is ok, and at least one ran."""
    latest = {}
    for record in entry.get("verification") or []:
        if record.get("tier") in VERIFY_TIERS_PROVING:
            latest[record["tier"]] = record
    return bool(latest) and all(r.get("ok") for r in latest.values())


def list_labels(location, cfg):
    """{label: committed?} of every backup directory in a location."""
    prefix = backups_prefix(cfg)
    found = {}
    for key in location.list(prefix):
        rest = key[len(prefix) :] if key.startswith(prefix) else key
        parts = rest.split("/", 1)
        if not parts[0]:
            continue
        label = parts[0]
        found.setdefault(label, False)
        if len(parts) == 2 and parts[1] == "backup.json":
            found[label] = True
    return found


class Catalog:
    def __init__(self, cfg):
        self.cfg = cfg
        self.dir = cfg.catalog_dir
        os.makedirs(self.dir, exist_ok=True)

    # ---- entries -----------------------------------------------------------------------------

    def _path(self, label):
        if not label or "/" in label or label.startswith("."):
            raise BackupError(f"not a backup label: {label!r}")
        return os.path.join(self.dir, f"{label}.json")

    def _read(self, path):
        return read_json(path, f"catalog entry {path}")

    def entries(self, include_expired=False):
        """Every entry, oldest first."""
        out = []
        for name in os.listdir(self.dir):
            if not name.endswith(".json") or name.startswith("."):
                continue
            entry = self._read(os.path.join(self.dir, name))
            if entry and (include_expired or not entry.get("expired")):
                out.append(entry)
        out.sort(key=lambda e: (_when(e), e.get("label", "")))
        return out

    def get(self, label):
        return self._read(self._path(label))

    def put(self, entry):
        """Write an entry; verification history already recorded is kept."""
        label = entry.get("label")
        path = self._path(label)
        old = self._read(path)
        entry = dict(entry)
        history = list((old or {}).get("verification") or [])
        for record in entry.get("verification") or []:
            if record not in history:
                history.append(record)
        entry["verification"] = history
        write_atomic(path, dump_json(entry), mode=0o600)
        return entry

    def remove(self, label):
        for path in (self._path(label), *self._manifest_paths(label)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def chain(self, label):
        """The entries needed to restore `label`, full first."""
        out = []
        seen = set()
        current = self.get(label)
        if current is None:
            raise BackupError(f"no backup labelled {label!r} in the catalog")
        while current is not None:
            if current["label"] in seen:
                raise BackupError(f"backup chain of {label} loops at {current['label']}")
            seen.add(current["label"])
            out.append(current)
            if current.get("type") == "full":
                return list(reversed(out))
            parent = current.get("parent")
            if not parent:
                raise BackupError(f"incremental backup {current['label']} names no parent")
            nxt = self.get(parent)
            if nxt is None:
                raise BackupError(
                    f"backup {label} needs {parent}, which is not in the catalog (expired?)"
                )
            current = nxt
        return list(reversed(out))

    def record_verification(self, label, result):
        """Append {tier, ok, at, details} to the entry's verification history."""
        entry = self.get(label)
        if entry is None:
            raise BackupError(f"no backup labelled {label!r} in the catalog")
        record = {
            "tier": result.get("tier"),
            "ok": bool(result.get("ok")),
            "at": result.get("at") or iso(utcnow()),
            "details": result.get("details", {k: v for k, v in result.items() if k != "tier"}),
        }
        entry.setdefault("verification", []).append(record)
        write_atomic(self._path(label), dump_json(entry), mode=0o600)
        return record

    def newest(self, type=None, verified=None):  # noqa: A002 - the documented keyword
        for entry in reversed(self.entries()):
            if not is_committed(entry):
                continue
            if type and entry.get("type") != type:
                continue
            if verified is not None and is_verified(entry) != verified:
                continue
            return entry
        return None

    # ---- cached manifests (incremental parents) ----------------------------------------------

    def _manifest_paths(self, label):
        mdir = os.path.join(self.dir, "manifests")
        if not os.path.isdir(mdir):
            return []
        return [os.path.join(mdir, n) for n in os.listdir(mdir) if n.startswith(label + ".")]

    def manifest_path(self, label, variant):
        return os.path.join(self.dir, "manifests", f"{label}.{variant}.json")

    def save_manifest(self, label, variant, data):
        os.makedirs(os.path.join(self.dir, "manifests"), mode=0o700, exist_ok=True)
        write_atomic(self.manifest_path(label, variant), data, mode=0o600)

    def load_manifest(self, label, variant):
        try:
            with open(self.manifest_path(label, variant), "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    # ---- reconcile with the locations --------------------------------------------------------

    def refresh(self, locations):
        """Which locations hold a committed copy of each backup.

        Returns {updated: [labels], imported: [labels], debris: {location: [labels]},
        unreachable: {location: error}}. Entries found in a location but not in the catalog
        are imported from their backup.json.
        """
        result = {"updated": [], "imported": [], "debris": {}, "unreachable": {}}
        seen = {}
        for location in locations:
            name = location_name(location)
            try:
                seen[name] = list_labels(location, self.cfg)
            except Exception as err:  # noqa: BLE001 - any store failure is reported
                result["unreachable"][name] = str(err)
                continue
            debris = sorted(label for label, ok in seen[name].items() if not ok)
            if debris:
                result["debris"][name] = debris
            for label, ok in seen[name].items():
                if ok and self.get(label) is None:
                    try:
                        entry = read_entry(location, self.cfg, label)
                    except Exception as err:  # noqa: BLE001
                        result["unreachable"].setdefault(name, f"backup.json of {label}: {err}")
                        continue
                    if entry.get("label") == label:
                        self.put(entry)
                        result["imported"].append(label)
        now = iso(utcnow())
        for entry in self.entries(include_expired=True):
            changed = False
            copies = entry.setdefault("locations", {})
            for name, labels in seen.items():
                has = labels.get(entry["label"]) is True
                old = copies.get(name) or {}
                if has and old.get("status") != "ok":
                    copies[name] = {**old, "status": "ok", "error": None, "at": now}
                    changed = True
                elif not has and old.get("status") == "ok":
                    copies[name] = {
                        **old,
                        "status": "missing",
                        "error": "no backup.json",
                        "at": now,
                    }
                    changed = True
            if changed:
                self.put(entry)
                result["updated"].append(entry["label"])
        return result

    # ---- retention ---------------------------------------------------------------------------

    def retention_plan(self, now=None):
        """Which backups to keep and which to expire, with a reason for each label.

        Keeps the newest `retention_full` full backups and their incrementals, and everything
        needed to restore to any point inside the window: the newest full whose stop time is
        before the window start (the anchor), every backup after it, and their chains.
        """
        cfg = self.cfg
        now = now or utcnow()
        if isinstance(now, str):
            now = parse_iso(now)
        window_start = now - datetime.timedelta(days=cfg.retention_window_days)
        entries = [e for e in self.entries() if is_committed(e)]
        fulls = [e for e in entries if e.get("type") == "full"]
        reasons = {}
        keep_full = {}
        for entry in fulls[-cfg.retention_full :]:
            keep_full[entry["label"]] = f"one of the {cfg.retention_full} newest full backups"
        anchor = None
        for entry in fulls:
            stop = _ts(entry.get("stop_time") or entry.get("start_time"))
            if stop and stop <= window_start:
                anchor = entry
        for entry in fulls:
            label = entry["label"]
            if anchor is not None and label == anchor["label"]:
                keep_full.setdefault(
                    label,
                    f"newest full before the {cfg.retention_window_days:g}-day window start "
                    f"({iso(window_start)}): restores to the window's first point",
                )
            elif anchor is None or _when(entry) > _when(anchor):
                keep_full.setdefault(
                    label, f"inside the {cfg.retention_window_days:g}-day retention window"
                )
        by_label = {e["label"]: e for e in entries}

        def full_of(entry):
            seen = set()
            while entry is not None and entry.get("type") != "full":
                if entry["label"] in seen:
                    return None
                seen.add(entry["label"])
                entry = by_label.get(entry.get("parent"))
            return entry

        keep, expire = [], []
        for entry in entries:
            label = entry["label"]
            root = full_of(entry)
            if entry.get("type") == "full" and label in keep_full:
                keep.append(label)
                reasons[label] = keep_full[label]
            elif root is not None and root["label"] in keep_full:
                keep.append(label)
                reasons[label] = f"incremental in the chain of kept full {root['label']}"
            elif root is None and _when(entry) >= (_when(anchor) if anchor else ""):
                keep.append(label)
                reasons[label] = "incremental whose full is missing: kept for inspection"
            else:
                expire.append(label)
                reasons[label] = (
                    f"older than the {cfg.retention_window_days:g}-day window and not among "
                    f"the {cfg.retention_full} newest full backups"
                )
        # never expire anything a kept backup's chain references
        needed = set()
        for label in keep:
            entry = by_label[label]
            needed.update(entry.get("chain") or [])
        for label in list(expire):
            if label in needed:
                expire.remove(label)
                keep.append(label)
                reasons[label] = "referenced by the chain of a kept backup"
        # A proven restore point always stays: the newest verified backup, its chain and
        # everything newer. With none verified, nothing may be expired at all.
        proven = self.newest(verified=True)
        for label in list(expire):
            entry = by_label[label]
            if (
                proven is None
                or label in (proven.get("chain") or [proven["label"]])
                or (_when(entry) >= _when(proven))
            ):
                expire.remove(label)
                keep.append(label)
                reasons[label] = (
                    "no backup is verified yet: nothing expires before one is"
                    if proven is None
                    else f"the newest verified backup {proven['label']}, its chain or newer"
                )
        keep.sort(key=lambda lb: _when(by_label[lb]))
        oldest = min((by_label[lb] for lb in keep), key=_when, default=None)
        return {
            "keep": keep,
            "expire": expire,
            "reasons": reasons,
            "window_start": iso(window_start),
            "wal_keep_from": (oldest or {}).get("wal_start"),
            "newest_verified": (proven or {}).get("label"),
        }


def _delete_copy(location, cfg, label):
    """backup.json first, so a half-deleted copy never looks valid."""
    location.delete(entry_key(cfg, label))
    location.delete_prefix(backups_prefix(cfg, label))


def _lock_note(spec, err):
    days = getattr(spec, "object_lock_days", 0) if spec is not None else 0
    text = str(err).lower()
    return bool(days) or "lock" in text or "retention" in text or "worm" in text


def expire(cfg, plan, locations):
    """Delete expired backups from every location, then WAL older than the oldest kept backup.

    Refuses while no backup is verified, and never deletes the newest verified backup, its
    chain or anything newer (retention_plan keeps them), so a proven restore point always
    stays. Object-locked copies that cannot be deleted yet are reported in `locked` and
    `warnings`, not failed; they are retried next time.
    """
    catalog = Catalog(cfg)
    proven = catalog.newest(verified=True)
    if catalog.newest() is not None and proven is None:
        raise BackupError(
            "refusing to expire backups: no backup is verified yet (run backup_verify "
            "first); expiring now could leave no proven restore point"
        )
    protected = set((proven or {}).get("chain") or []) | {(proven or {}).get("label")}
    if set(plan.get("expire") or []) & protected:
        raise BackupError(
            f"refusing to expire backups: the plan would delete the newest verified backup "
            f"{proven['label']} or its chain ({sorted(set(plan['expire']) & protected)})"
        )
    keep = set(plan.get("keep") or [])
    labels = [lb for lb in plan.get("expire") or [] if lb not in keep]
    # also retry copies left by earlier runs (object lock)
    for entry in catalog.entries(include_expired=True):
        if entry.get("expired") and entry["label"] not in labels and entry["label"] not in keep:
            labels.append(entry["label"])
    result = {"expired": [], "locked": {}, "failed": {}, "warnings": [], "wal_deleted": {}}
    now = iso(utcnow())
    for label in labels:
        entry = catalog.get(label) or {"label": label, "locations": {}}
        pending = False
        for location in locations:
            name = location_name(location)
            try:
                _delete_copy(location, cfg, label)
                entry.setdefault("locations", {})[name] = {"status": "deleted", "at": now}
                spec = location_spec(location)
                if spec is not None and getattr(spec, "object_lock_days", 0):
                    result["locked"].setdefault(name, []).append(label)
                    result["warnings"].append(
                        f"backup {label} in object-locked location {name}: delete markers "
                        f"placed; the data stays until its {spec.object_lock_days}-day lock ends"
                    )
            except Exception as err:  # noqa: BLE001 - reported per location
                pending = True
                if _lock_note(location_spec(location), err):
                    result["locked"].setdefault(name, []).append(label)
                    result["warnings"].append(
                        f"backup {label} in location {name} is object-locked; it will be "
                        f"deleted once the lock expires ({err})"
                    )
                    entry.setdefault("locations", {})[name] = {
                        "status": "locked",
                        "error": str(err),
                        "at": now,
                    }
                else:
                    result["failed"].setdefault(name, []).append(f"{label}: {err}")
                    result["warnings"].append(f"could not delete {label} from {name}: {err}")
        if pending:
            entry["expired"] = True
            catalog.put(entry)
        else:
            catalog.remove(label)
        result["expired"].append(label)
    keep_from = plan.get("wal_keep_from")
    if keep_from and WAL_SEGMENT_RE.match(keep_from):
        for location in locations:
            name = location_name(location)
            deleted = 0
            try:
                for key in archive.keys_before(location, keep_from):
                    location.delete(key)
                    deleted += 1
            except Exception as err:  # noqa: BLE001
                if _lock_note(location_spec(location), err):
                    result["locked"].setdefault(name, []).append("wal")
                    result["warnings"].append(f"WAL in {name} is object-locked: {err}")
                else:
                    result["failed"].setdefault(name, []).append(f"wal: {err}")
                    result["warnings"].append(f"could not delete old WAL from {name}: {err}")
            result["wal_deleted"][name] = deleted
    result["ok"] = not result["failed"]
    return result
