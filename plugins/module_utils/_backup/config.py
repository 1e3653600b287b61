# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one backup configuration: module parameters and the WAL tool's JSON file parse here.

Standard library and module_utils/postgres only (the WAL tool imports it under the system
Python). Every check raises
BackupError with a message that names the bad key, before anything is touched.
"""

import dataclasses
import posixpath

from ansible_collections.knowngood.runbooks.plugins.module_utils import postgres
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (
    COMPRESSIONS,
    ENGINES,
    LOCATION_NAME_RE,
    LOCATION_TYPES,
    BackupError,
)

SECRET_KEYS = ("encryption_key", "signing_key", "secret_key", "access_key")
_CLUSTER_RE = LOCATION_NAME_RE


@dataclasses.dataclass(frozen=True)
class LocationSpec:
    name: str
    type: str
    path: str = ""
    endpoint_url: str = ""
    region: str = ""
    bucket: str = ""
    prefix: str = ""
    access_key: str = ""
    secret_key: str = ""
    storage_class: str = ""
    object_lock_days: int = 0
    encrypt: bool = False
    required: bool = True

    def public(self):
        data = dataclasses.asdict(self)
        for key in SECRET_KEYS:
            if key in data:
                data[key] = "********" if data[key] else ""
        return data


@dataclasses.dataclass(frozen=True)
class PgSpec:
    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    dbname: str = "postgres"
    data_dir: str = ""
    bin_dir: str = "/usr/lib/postgresql/15/bin"
    os_user: str = "postgres"

    @property
    def target(self):
        """The cluster as the PostgreSQL layer (module_utils/postgres) reaches it."""
        return postgres.Target(
            host=self.host,
            port=int(self.port),
            user=self.user,
            dbname=self.dbname,
            bin_dir=self.bin_dir,
            os_user=self.os_user,
        )

    def conninfo(self, dbname=None):
        return self.target.conninfo(dbname)

    def binary(self, name):
        return self.target.binary(name)

    def connect(self, dbname=None):
        """A connection (autocommit) through the PostgreSQL layer; BackupError on failure."""
        return postgres.connect(self.target, dbname, error=BackupError)

    def os_ids(self):
        """(uid, gid) of the cluster's OS user; BackupError when it does not exist."""
        uid, gid, _home = postgres.os_user_ids(self.os_user, BackupError)
        return uid, gid


@dataclasses.dataclass(frozen=True)
class BackupConfig:
    cluster: str
    locations: tuple
    pg: PgSpec = dataclasses.field(default_factory=PgSpec)
    engine: str = "native"
    compression: str = "lz4"
    compression_level: int = 1
    parallel: int = 2
    spool_dir: str = "/var/lib/knowngood/spool"
    catalog_dir: str = "/var/lib/knowngood/catalog"
    encryption_key: str = ""
    signing_key: str = ""
    wal_prefetch: int = 8
    retry_attempts: int = 4
    retry_base_delay: float = 0.5
    retry_max_delay: float = 8.0
    retention_full: int = 2
    retention_window_days: float = 7.0
    freshness_full_hours: float = 26.0
    freshness_incremental_hours: float = 2.0
    freshness_wal_minutes: float = 10.0
    pgbackrest_stanza: str = ""
    pgbackrest_config: str = ""
    pgbackrest_repos: tuple = ()
    # Where failed scheduled jobs and a falling-behind WAL archive are announced
    # (_backup/notice.py): {channels: knowngood_notify, contacts: knowngood_contacts,
    # smtp_password}.
    notify: dict = dataclasses.field(default_factory=dict, hash=False, compare=False)

    @classmethod
    def from_dict(cls, data):
        return parse_config(data)

    @property
    def io_parallel(self):
        """Files in flight at once: S3 round trips wait on the network, not on the cores."""
        remote = any(loc.type == "s3" for loc in self.locations)
        return self.parallel * 4 if remote else self.parallel

    def location(self, name):
        for loc in self.locations:
            if loc.name == name:
                return loc
        raise BackupError(f"no location named {name!r}; have {[x.name for x in self.locations]}")

    def public(self):
        """Everything but secrets: safe for results, logs and reports."""
        data = dataclasses.asdict(self)
        data["locations"] = [loc.public() for loc in self.locations]
        for key in ("encryption_key", "signing_key"):
            data[key] = "********" if data[key] else ""
        # A webhook's path is its token: only how many channels there are.
        channels = self.notify.get("channels") or {}
        data["notify"] = {
            "webhooks": len(channels.get("webhooks") or []),
            "smtp": bool(channels.get("smtp")),
        }
        return data

    def to_dict(self):
        """Round-trips through from_dict (secrets included: only for the 0600 tool config)."""
        data = dataclasses.asdict(self)
        data["locations"] = [dataclasses.asdict(loc) for loc in self.locations]
        data["pgbackrest_repos"] = list(self.pgbackrest_repos)
        data["retention"] = {
            "full": data.pop("retention_full"),
            "window_days": data.pop("retention_window_days"),
        }
        data["freshness"] = {
            "full_hours": data.pop("freshness_full_hours"),
            "incremental_hours": data.pop("freshness_incremental_hours"),
            "wal_minutes": data.pop("freshness_wal_minutes"),
        }
        data["retries"] = {
            "attempts": data.pop("retry_attempts"),
            "base_delay": data.pop("retry_base_delay"),
            "max_delay": data.pop("retry_max_delay"),
        }
        return data


def _require(cond, message):
    if not cond:
        raise BackupError(message)


def _number(data, key, kind, low, high, default):
    value = data.get(key, default)
    if value is None:
        value = default
    try:
        value = kind(value)
    except (TypeError, ValueError) as err:
        raise BackupError(f"{key} must be a number, got {value!r}") from err
    _require(low <= value <= high, f"{key} must be between {low} and {high}, got {value}")
    return value


def _abs_path(value, what):
    _require(isinstance(value, str) and value, f"{what} is required")
    _require(posixpath.isabs(value), f"{what} must be an absolute path, got {value!r}")
    _require(".." not in value.split("/"), f"{what} must not contain '..', got {value!r}")
    return posixpath.normpath(value)


def parse_location(raw, index):
    _require(isinstance(raw, dict), f"locations[{index}] must be a mapping")
    known = {f.name for f in dataclasses.fields(LocationSpec)}
    unknown = sorted(set(raw) - known)
    _require(not unknown, f"locations[{index}]: unknown keys {unknown}")
    name = raw.get("name")
    _require(
        isinstance(name, str) and LOCATION_NAME_RE.match(name or ""),
        f"locations[{index}].name must match {LOCATION_NAME_RE.pattern}, got {name!r}",
    )
    kind = raw.get("type")
    _require(
        kind in LOCATION_TYPES,
        f"location {name}: type must be one of {LOCATION_TYPES}, got {kind!r}",
    )
    values = {k: v for k, v in raw.items() if v is not None}
    if kind in ("local", "export"):
        values["path"] = _abs_path(values.get("path"), f"location {name}: path")
    else:
        _require(values.get("bucket"), f"location {name}: bucket is required for type s3")
        prefix = values.get("prefix", "") or ""
        _require(".." not in prefix.split("/"), f"location {name}: prefix must not contain '..'")
        values["prefix"] = prefix.strip("/")
        days = values.get("object_lock_days", 0) or 0
        _require(
            isinstance(days, int) and 0 <= days <= 36500,
            f"location {name}: object_lock_days must be 0..36500",
        )
    if kind == "export":
        values.setdefault("encrypt", True)
    if kind == "s3":
        values.setdefault("encrypt", True)
    return LocationSpec(**values)


def parse_config(data):
    _require(isinstance(data, dict), "backup configuration must be a mapping")
    cluster = data.get("cluster")
    _require(
        isinstance(cluster, str) and _CLUSTER_RE.match(cluster or ""),
        f"cluster must match {_CLUSTER_RE.pattern}, got {cluster!r}",
    )
    engine = data.get("engine") or "native"
    _require(engine in ENGINES, f"engine must be one of {ENGINES}, got {engine!r}")
    compression = data.get("compression") or "lz4"
    _require(
        compression in COMPRESSIONS,
        f"compression must be one of {COMPRESSIONS}, got {compression!r}",
    )
    raw_locations = data.get("locations") or []
    _require(
        isinstance(raw_locations, (list, tuple)) and raw_locations,
        "locations: at least one backup location is required",
    )
    locations = tuple(parse_location(raw, i) for i, raw in enumerate(raw_locations))
    names = [loc.name for loc in locations]
    _require(len(set(names)) == len(names), f"location names must be unique, got {names}")
    needs_key = [loc.name for loc in locations if loc.encrypt]
    key = data.get("encryption_key") or ""
    _require(
        not needs_key or len(key) >= 16,
        f"locations {needs_key} are encrypted: encryption_key (16+ characters) is required",
    )
    signing_key = data.get("signing_key") or ""
    exports = [loc.name for loc in locations if loc.type == "export"]
    _require(
        not exports or len(signing_key) >= 16,
        f"export locations {exports} need signing_key (16+ characters) for their manifests",
    )
    pg_raw = dict(data.get("pg") or {})
    known_pg = {f.name for f in dataclasses.fields(PgSpec)}
    unknown = sorted(set(pg_raw) - known_pg)
    _require(not unknown, f"pg: unknown keys {unknown}")
    pg_raw = {k: v for k, v in pg_raw.items() if v is not None}
    if "port" in pg_raw:
        pg_raw["port"] = _number(pg_raw, "port", int, 1, 65535, 5432)
    if pg_raw.get("data_dir"):
        pg_raw["data_dir"] = _abs_path(pg_raw["data_dir"], "pg.data_dir")
    retention = data.get("retention") or {}
    freshness = data.get("freshness") or {}
    retries = data.get("retries") or {}
    if engine == "pgbackrest":
        _require(data.get("pgbackrest_stanza"), "engine pgbackrest needs pgbackrest_stanza")
    return BackupConfig(
        cluster=cluster,
        locations=locations,
        pg=PgSpec(**pg_raw),
        engine=engine,
        compression=compression,
        compression_level=_number(data, "compression_level", int, 0, 19, 1),
        parallel=_number(data, "parallel", int, 1, 64, 2),
        spool_dir=_abs_path(data.get("spool_dir") or BackupConfig.spool_dir, "spool_dir"),
        catalog_dir=_abs_path(data.get("catalog_dir") or BackupConfig.catalog_dir, "catalog_dir"),
        encryption_key=key,
        signing_key=signing_key,
        wal_prefetch=_number(data, "wal_prefetch", int, 0, 256, 8),
        retry_attempts=_number(retries, "attempts", int, 1, 20, 4),
        retry_base_delay=_number(retries, "base_delay", float, 0, 60, 0.5),
        retry_max_delay=_number(retries, "max_delay", float, 0, 600, 8.0),
        retention_full=_number(retention, "full", int, 1, 1000, 2),
        retention_window_days=_number(retention, "window_days", float, 0, 3650, 7.0),
        freshness_full_hours=_number(freshness, "full_hours", float, 0.01, 10000, 26.0),
        freshness_incremental_hours=_number(
            freshness, "incremental_hours", float, 0.01, 10000, 2.0
        ),
        freshness_wal_minutes=_number(freshness, "wal_minutes", float, 0.1, 100000, 10.0),
        pgbackrest_stanza=data.get("pgbackrest_stanza") or "",
        pgbackrest_config=data.get("pgbackrest_config") or "",
        pgbackrest_repos=tuple(data.get("pgbackrest_repos") or ()),
        notify=_notify_settings(data.get("notify")),
    )


def _notify_settings(raw):
    raw = raw or {}
    _require(isinstance(raw, dict), "notify must be a mapping of channels, contacts, smtp_password")
    unknown = sorted(set(raw) - {"channels", "contacts", "smtp_password"})
    _require(not unknown, f"notify: unknown keys {unknown}")
    for key in ("channels", "contacts"):
        _require(isinstance(raw.get(key) or {}, dict), f"notify.{key} must be a mapping")
    return dict(raw)
