# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Argument spec every backup module shares (documented once in doc_fragments/backup.py)."""

from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.config import (
    parse_config,
)

_S = {"type": "str"}
_I = {"type": "int"}
_F = {"type": "float"}
_P = {"type": "path"}
_SECRET = {"type": "str", "no_log": True}

LOCATION_SPEC = {
    "name": {"type": "str", "required": True},
    "type": {"type": "str", "required": True, "choices": ["local", "s3", "export"]},
    "path": _P,
    "endpoint_url": _S,
    "region": _S,
    "bucket": _S,
    "prefix": _S,
    "access_key": _SECRET,
    "secret_key": _SECRET,
    "storage_class": _S,
    "object_lock_days": _I,
    "encrypt": {"type": "bool"},
    "required": {"type": "bool"},
}

PGBACKREST_REPO_SPEC = {
    "type": {"type": "str", "choices": ["posix", "s3"]},
    "path": _S,
    "endpoint": _S,
    "bucket": _S,
    "region": _S,
    "key": _SECRET,
    "key_secret": _SECRET,
    "uri_style": _S,
    "verify_tls": {"type": "bool"},
    "storage_port": _I,
}

CONFIG_SPEC = {
    "cluster": {"type": "str", "required": True},
    "engine": {"type": "str", "choices": ["native", "pgbackrest"]},
    "pg": {
        "type": "dict",
        "options": {
            "host": _S,
            "port": _I,
            "user": _S,
            "dbname": _S,
            "data_dir": _P,
            "bin_dir": _P,
            "os_user": _S,
        },
    },
    "compression": {"type": "str", "choices": ["lz4", "zstd", "none"]},
    "compression_level": _I,
    "parallel": _I,
    "spool_dir": _P,
    "catalog_dir": _P,
    "wal_prefetch": _I,
    "retries": {"type": "dict", "options": {"attempts": _I, "base_delay": _F, "max_delay": _F}},
    "retention": {"type": "dict", "options": {"full": _I, "window_days": _F}},
    "freshness": {
        "type": "dict",
        "options": {"full_hours": _F, "incremental_hours": _F, "wal_minutes": _F},
    },
    "locations": {
        "type": "list",
        "elements": "dict",
        "required": True,
        "options": LOCATION_SPEC,
    },
    "pgbackrest_stanza": _S,
    "pgbackrest_config": _P,
    "pgbackrest_repos": {"type": "list", "elements": "dict", "options": PGBACKREST_REPO_SPEC},
    "notify": {
        "type": "dict",
        "options": {
            # a webhook URL's path is its token
            "channels": {"type": "dict", "no_log": True},
            "contacts": {"type": "dict"},
            "smtp_password": _SECRET,
        },
    },
}

BACKUP_ARGUMENT_SPEC = {
    "config": {"type": "dict", "required": True, "options": CONFIG_SPEC},
    "encryption_key": _SECRET,
    "signing_key": _SECRET,
    "progress_file": _P,
}


def _drop_none(value):
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def config_from_params(params):
    """BackupConfig from validated module params; raises BackupError naming the bad key."""
    data = _drop_none(dict(params["config"]))
    for key in ("encryption_key", "signing_key"):
        if params.get(key):
            data[key] = params[key]
    return parse_config(data)


def argument_spec(**extra):
    spec = dict(BACKUP_ARGUMENT_SPEC)
    spec.update(extra)
    return spec
