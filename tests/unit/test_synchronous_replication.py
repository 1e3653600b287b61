"""Synchronous replication across a failover (module_utils/replication.py): which standbys the
primary waits for, never itself or a fenced node; the degraded asynchronous window and its
warning; the refusal that keeps RPO 0; and the lab's declaration."""

from __future__ import annotations

import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils import replication

NAMES = {"db1": "kglab", "db2": "kglab-standby", "db3": "kglab-third"}


def spec(**over):
    return {"enabled": True, "names": dict(NAMES), **over}


def test_a_primary_waits_for_every_other_node_and_never_names_itself():
    out = replication.plan(spec(), "db1", streaming=["kglab-standby", "kglab-third"])
    assert out["settings"] == {
        "synchronous_standby_names": 'ANY 1 ("kglab-standby", "kglab-third")',
        "synchronous_commit": "on",
    }
    assert not out["degraded"] and out["warning"] == ""
    promoted = replication.plan(
        spec(method="first", num_sync=2), "db2", streaming=["kglab", "kglab-third"]
    )
    assert promoted["settings"]["synchronous_standby_names"] == 'FIRST 2 ("kglab", "kglab-third")'
    # One of the two streams: it is waited for, and the run says it is degraded.
    partial = replication.plan(spec(num_sync=2), "db2", streaming=["kglab"])
    assert partial["settings"]["synchronous_standby_names"] == 'ANY 1 ("kglab")'
    assert partial["degraded"] and "2 synchronous standby(s) declared" in partial["warning"]


def test_a_promoted_node_whose_only_standby_is_fenced_runs_asynchronous_with_a_warning():
    names = {"db1": "kglab", "db2": "kglab-standby"}
    out = replication.plan(spec(names=names), "db2", exclude=["db1"], streaming=[])
    # An empty list: the new primary never waits for the fenced old primary (every commit
    # would block until it is re-seeded).
    assert out["settings"]["synchronous_standby_names"] == ""
    assert out["degraded"] and out["standbys"] == []
    assert "DEGRADED" in out["warning"] and "ASYNCHRONOUS" in out["warning"]
    assert "['db1'] not waited for" in out["warning"] and "loss of db2" in out["warning"]
    # Once the old primary streams as a standby, the same declaration names it again.
    back = replication.plan(spec(names=names), "db2", streaming=["kglab"])
    assert back["settings"]["synchronous_standby_names"] == 'ANY 1 ("kglab")'
    assert not back["degraded"]


def test_a_standby_that_remains_keeps_the_new_primary_synchronous():
    out = replication.plan(spec(), "db2", exclude=["db1"], streaming=["kglab-third"])
    assert out["settings"]["synchronous_standby_names"] == 'ANY 1 ("kglab-third")'
    assert not out["degraded"]


def test_refuse_stops_when_no_standby_remains_and_waits_for_those_that_do():
    names = {"db1": "kglab", "db2": "kglab-standby"}
    with pytest.raises(replication.ReplicationError, match="refusing to run degraded"):
        replication.plan(spec(names=names, without_standby="refuse"), "db2", exclude=["db1"])
    # A standby remains but does not stream yet: named all the same, commits wait (RPO 0).
    out = replication.plan(spec(without_standby="refuse"), "db2", exclude=["db1"], streaming=[])
    assert out["settings"]["synchronous_standby_names"] == 'ANY 1 ("kglab-third")'
    assert not out["degraded"]


def test_application_names_are_quoted_for_postgresql():
    assert replication.standby_names("ANY", 1, ['odd"name', "b"]) == 'ANY 1 ("odd""name", "b")'


def test_an_off_declaration_manages_nothing_and_bad_ones_name_every_problem():
    assert replication.plan({"enabled": False}, "db1") == {
        "managed": False,
        "settings": {},
        "standbys": [],
        "streaming": [],
        "degraded": False,
        "warning": "",
    }
    with pytest.raises(replication.ReplicationError) as err:
        replication.validate(
            {
                "enabled": True,
                "method": "SOME",
                "commit": "local",
                "num_sync": 0,
                "names": {"db1": "a"},
                "without_standby": "hope",
                "mode": "x",
            }
        )
    text = str(err.value)
    for problem in ("unknown keys ['mode']", "'SOME'", "'local'", "'hope'", "num_sync 0", "two"):
        assert problem in text, (problem, text)
    with pytest.raises(replication.ReplicationError, match="no entry for the primary db9"):
        replication.plan(spec(), "db9")


def test_the_lab_declares_each_nodes_cluster_name_and_is_off_unless_asked(tmp_path):
    from knowngood.lab.config import LabConfig
    from knowngood.lab.postgres import synchronous_declaration

    off = synchronous_declaration(LabConfig(root=tmp_path))
    on = synchronous_declaration(LabConfig(root=tmp_path, extra={"synchronous": True}))
    assert not off["enabled"] and on["enabled"]
    assert on["names"] == {"db1": "kglab", "db2": "kglab-standby"}
    assert replication.validate(on)["without_standby"] == "async"
