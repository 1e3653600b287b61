"""pg_pitr state=released deletes only an aside copy this cluster's own restore recorded."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import pitr
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import BackupError

SYSID = "7300000000000000001"


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A stopped-looking live data directory, and pg_controldata/probe stand-ins."""
    data = tmp_path / "pg" / "data"
    data.mkdir(parents=True)
    (data / "PG_VERSION").write_text("15\n")
    ids = {}

    def fake_run(argv, **_kw):
        sysid = ids.get(str(argv[-1]))
        out = f"Database system identifier:           {sysid}\n" if sysid else ""
        return subprocess.CompletedProcess(argv, 0 if sysid else 1, out, "")

    monkeypatch.setattr(pitr.command, "run", fake_run)
    monkeypatch.setattr(pitr, "probe", lambda lcfg, q=None: {"system_identifier": SYSID})
    pg = SimpleNamespace(data_dir=str(data), binary=lambda name: f"/usr/bin/{name}")
    return SimpleNamespace(lcfg=SimpleNamespace(pg=pg), data=data, ids=ids, tmp=tmp_path)


def aside(host, name, sysid=SYSID):
    path = host.data.parent / name
    path.mkdir()
    (path / "PG_VERSION").write_text("15\n")
    (path / "base").mkdir()
    host.ids[str(path)] = sysid
    return path


def record(host, **state):
    Path(pitr.state_path(str(host.data))).write_text(json.dumps(state))


def target(host, path):
    return pitr.release_target(host.lcfg, pitr.Request(state="released", aside_dir=str(path)))


def test_only_recorded_copies_of_this_cluster_are_released(host):
    old = aside(host, "data.pre-restore-a")
    new = aside(host, "data.pre-restore-b")
    record(host, run="b", phase="promoted", aside_dir=str(new), asides=[str(old), str(new)],
           data_dir=str(host.data))  # fmt: skip
    assert target(host, old) == str(old)
    assert target(host, str(new) + "/") == str(new)
    # a state written before the history existed still names its own copy
    record(host, run="b", phase="promoted", aside_dir=str(new), data_dir=str(host.data))
    assert target(host, new) == str(new)
    # a recorded copy already gone: nothing to do
    record(host, run="b", phase="promoted", asides=[str(host.data) + ".pre-restore-gone"])
    assert target(host, str(host.data) + ".pre-restore-gone") is None


def refused(host, path, words):
    with pytest.raises(BackupError) as err:
        target(host, path)
    assert words in str(err.value) and "nothing was changed" in str(err.value), err.value


def test_everything_else_is_refused_naming_why(host):
    foreign = aside(host, "other-cluster")  # a stopped data directory, not this cluster's
    kept = aside(host, "data.pre-restore-a")
    link = host.data.parent / "data.pre-restore-link"
    link.symlink_to(kept)
    refused(host, foreign, "not an aside copy this cluster's rollbacks kept")
    record(host, run="a", phase="promoted", aside_dir=str(kept), asides=[str(link)],
           data_dir=str(host.data))  # fmt: skip
    refused(host, foreign, "not an aside copy this cluster's rollbacks kept")
    refused(host, link, "is a symlink")
    refused(host, host.data, "is or holds the live data directory")
    refused(host, host.data.parent, "is or holds the live data directory")
    # a state file of another data directory records nothing for this one
    record(host, run="a", phase="promoted", aside_dir=str(kept), data_dir="/elsewhere/data")
    refused(host, kept, "not an aside copy")
    # the current run is not promoted: its copy is the way back
    record(host, run="a", phase="paused", aside_dir=str(kept), data_dir=str(host.data))
    refused(host, kept, "not promoted")
    # a restore in progress keeps the original there
    record(host, run="a", phase="promoted", aside_dir=str(kept), data_dir=str(host.data))
    Path(pitr.marker_path(str(host.data))).write_text(
        json.dumps({"run": "b", "aside_dir": str(kept)})
    )
    refused(host, kept, "is unfinished")
    Path(pitr.marker_path(str(host.data))).unlink()
    # recorded, but another system's data directory, or not one at all
    host.ids[str(kept)] = "42"
    refused(host, kept, "belongs to system 42")
    del host.ids[str(kept)]
    refused(host, kept, "cannot read the system identifier")
    (kept / "PG_VERSION").unlink()
    refused(host, kept, "is not a PostgreSQL data directory")
    for path in (foreign, kept, host.data):
        assert path.is_dir()
    assert (foreign / "PG_VERSION").exists()


def test_kept_asides_keeps_the_history_in_order_without_repeats():
    state = {"asides": ["/d.pre-restore-a", "/d.pre-restore-b/"], "aside_dir": "/d.pre-restore-b"}
    assert pitr.kept_asides(state) == ["/d.pre-restore-a", "/d.pre-restore-b"]
    assert pitr.kept_asides(None) == []


def test_a_delta_snapshot_is_released_by_its_journal(host):
    """A delta restore's aside directory holds only the replaced files and kg-delta.json (no
    PG_VERSION, maybe no pg_control): its journal's system identifier decides."""
    snap = host.data.parent / "data.pre-restore-d"
    (snap / "base/1").mkdir(parents=True)
    (snap / "base/1/1259").write_bytes(b"old")
    journal = snap / "kg-delta.json"
    record(host, run="d", phase="promoted", aside_dir=str(snap), data_dir=str(host.data))
    refused(host, snap, "is not a PostgreSQL data directory")  # no journal: not ours to judge
    journal.write_text(json.dumps({"system_identifier": "42", "replaced": ["base/1/1259"]}))
    refused(host, snap, "belongs to system 42")
    journal.write_text(json.dumps({"system_identifier": SYSID, "replaced": ["base/1/1259"]}))
    assert target(host, snap) == str(snap)
    record(host, run="d", phase="paused", aside_dir=str(snap), data_dir=str(host.data))
    refused(host, snap, "not promoted")
