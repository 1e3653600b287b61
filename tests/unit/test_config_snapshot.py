"""config_snapshot module_utils: the parts a revert decides on, without a lab."""

from __future__ import annotations

import os

import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils import config_snapshot as cs


def service(tmp_path, **extra):
    return {"name": "app", "paths": [str(tmp_path / "etc")], "validate": ["true"], **extra}


def test_secret_values_are_masked_in_every_syntax():
    text = (
        "password = hunter2\n"
        "api_key: abc123\n"
        "proxy_set_header Authorization 'Bearer xyz';\n"
        "primary_conninfo_password 'p'\n"
        "primary_conninfo = 'host=db1 user=rep password=s3cr3t'\n"
        "dsn: postgresql://app:pa55@db1/app\n"
        "work_mem = 4MB\n"
    )
    masked = cs.mask(text)
    for secret in ("hunter2", "abc123", "Bearer xyz", "'p'", "s3cr3t", "pa55"):
        assert secret not in masked
    assert "work_mem = 4MB" in masked and masked.count(cs.MASK) == 6


def test_postgresql_parameters_parse_with_comments_and_quotes():
    params = cs.pg_params(
        "# comment\nwork_mem = '8MB'  # tuned\nlog_line_prefix = '%m # %p'\n"
        "max_connections 90\ninclude 'kglab.conf'\n"
    )
    assert params == {
        "work_mem": "'8MB'",
        "log_line_prefix": "'%m # %p'",
        "max_connections": "90",
    }


def test_only_parameters_whose_value_changes_are_reported():
    change = {
        "before": b"work_mem = 4MB\nmax_connections = 100\n",
        "after": b"work_mem = 4MB\nmax_connections = 90\nshared_buffers = 1GB\n",
    }
    assert cs.changed_params([change]) == ["max_connections", "shared_buffers"]


@pytest.mark.parametrize(
    "path,message",
    [
        ("etc/app", "not absolute"),
        ("/etc/../root", "path traversal is refused"),
        ("/etc/./app", "path traversal is refused"),
    ],
)
def test_managed_paths_must_be_plain_absolute_paths(path, message):
    with pytest.raises(cs.ConfigError, match=message):
        cs.normalize_services([{"name": "app", "paths": [path]}])


def test_overlapping_services_are_refused(tmp_path):
    with pytest.raises(cs.ConfigError, match="overlap"):
        cs.normalize_services(
            [
                {"name": "a", "paths": [str(tmp_path)]},
                {"name": "b", "paths": [str(tmp_path / "x.conf")]},
            ]
        )


def test_snapshot_restore_round_trip_touches_only_tracked_files(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "a.conf").write_text("a = 1\n")
    os.chmod(etc / "a.conf", 0o640)
    services = cs.normalize_services([service(tmp_path)])
    store = cs.Store(str(tmp_path / "store"))
    first, created = cs.take(store, services, "h1")
    assert created
    again, created = cs.take(store, services, "h1", label="same content")
    assert not created and again["snapshot_id"] == first["snapshot_id"]

    (etc / "a.conf").write_text("a = 2\n")
    os.chmod(etc / "a.conf", 0o600)
    (etc / "new.conf").write_text("untracked\n")
    changes, untracked = cs.plan(store, store.read_manifest(first["snapshot_id"]), services)
    assert [(c["path"], c["change"]) for c in changes] == [
        (str(etc / "a.conf"), ["content", "mode"])
    ]
    assert untracked == [str(etc / "new.conf")]
    log = []
    cs.swap_in(services, changes, log)
    assert (etc / "a.conf").read_text() == "a = 1\n"
    assert oct(os.stat(etc / "a.conf").st_mode & 0o777) == "0o640"
    assert (etc / "new.conf").read_text() == "untracked\n"


def test_failed_validation_puts_the_previous_files_back(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "a.conf").write_text("good\n")
    services = cs.normalize_services(
        [service(tmp_path, validate=["grep", "-q", "good", str(etc / "a.conf")])]
    )
    store = cs.Store(str(tmp_path / "store"))
    (etc / "a.conf").write_text("bad\n")
    bad, _created = cs.take(store, services, "h1")
    (etc / "a.conf").write_text("good\n")
    changes, _untracked = cs.plan(store, bad, services)
    with pytest.raises(cs.ConfigError, match="fails validation, live configuration unchanged"):
        cs.swap_in(services, changes, [])
    assert (etc / "a.conf").read_text() == "good\n"


def test_snapshot_of_another_host_or_service_set_is_refused(tmp_path):
    (tmp_path / "etc").mkdir()
    services = cs.normalize_services([service(tmp_path)])
    store = cs.Store(str(tmp_path / "store"))
    doc, _created = cs.take(store, services, "h1")
    with pytest.raises(cs.ConfigError, match="taken on host h1, not h2"):
        cs.check_target(doc, services, "h2")
    other = cs.normalize_services([service(tmp_path, name="other")])
    with pytest.raises(cs.ConfigError, match="another service set"):
        cs.check_target(doc, other, "h1")


def test_tampered_manifest_and_unknown_ids_are_refused(tmp_path):
    (tmp_path / "etc").mkdir()
    services = cs.normalize_services([service(tmp_path)])
    store = cs.Store(str(tmp_path / "store"))
    doc, _created = cs.take(store, services, "h1")
    path = store.path("snapshots", doc["snapshot_id"] + ".json")
    with open(path) as handle:
        text = handle.read()
    with open(path, "w") as handle:
        handle.write(text.replace('"h1"', '"h2"'))
    with pytest.raises(cs.ConfigError, match="does not match its id"):
        store.read_manifest(doc["snapshot_id"])
    with pytest.raises(cs.ConfigError, match="unknown snapshot"):
        store.read_manifest("0" * 16)
    with pytest.raises(cs.ConfigError, match="not a snapshot id"):
        store.read_manifest("../x")


def test_postgresql_that_does_not_answer_is_restarted_not_reloaded():
    """The rescue must put a configuration back after a restart that left the server down."""
    services = cs.normalize_services(
        [
            {
                "name": "postgresql",
                "paths": ["/etc/pg/postgresql.conf"],
                "reload": ["pg_ctl", "reload"],
                "restart": ["pg_ctl", "restart"],
                "restart_on": "postgresql",
                # port 1 on loopback: nothing listens, the connection is refused at once
                "dsn": "postgresql://postgres@127.0.0.1:1/postgres",
            }
        ]
    )
    change = {
        "path": "/etc/pg/postgresql.conf",
        "service": "postgresql",
        "before": b"work_mem = '7MB'\n",
        "after": b"",
    }
    (item,) = cs.actions(services, [change])
    assert item["action"] == "restart" and item["command"] == ["pg_ctl", "restart"]
    assert item["restart_params"] == ["work_mem"] and "does not answer" in item["why"]
