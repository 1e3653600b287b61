"""The release ledger and layout checks (plugins/module_utils/release.py); the lock is
test_run_lock.py."""

from __future__ import annotations

import json
import os
import time

import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils import release as rel


@pytest.fixture
def layout(tmp_path):
    lay = rel.Layout(str(tmp_path / "app"))
    for rid in ("v1", "v2", "v3"):
        os.makedirs(lay.release_dir(rid))
        with open(os.path.join(lay.release_dir(rid), "release.json"), "w") as handle:
            json.dump({"id": rid, "schema": ["0001"]}, handle)
    os.makedirs(lay.slots)
    return lay


def events(layout, *pairs):
    for rid, status in pairs:
        rel.append_event(layout, {"release_id": rid, "status": status})


@pytest.mark.parametrize(
    "bad", ["../etc", "a/b", "v1;rm", "$(id)", "", ".hidden", "v1 v2", "x" * 65, "v1\n", ".."]
)
def test_unsafe_release_ids_are_refused(bad):
    with pytest.raises(rel.ReleaseError, match="invalid release id"):
        rel.validate_release_id(bad)


def test_last_known_good_skips_live_bad_and_rolled_back_releases(layout):
    events(
        layout,
        ("v1", "known-good"),
        ("v2", "known-good"),
        ("v3", "known-good"),
        ("v3", "rolled-back"),
    )
    summary = rel.summarize(rel.read_ledger(layout))
    assert rel.last_known_good(summary)["release_id"] == "v2"
    assert rel.last_known_good(summary, exclude=("v2",))["release_id"] == "v1"
    events(layout, ("v1", "bad"))
    summary = rel.summarize(rel.read_ledger(layout))
    assert rel.last_known_good(summary, exclude=("v2",)) is None


def test_known_good_order_comes_from_the_ledger_not_directory_mtimes(layout):
    events(layout, ("v2", "known-good"), ("v1", "known-good"))
    # make v2's directory the newest on disk: an mtime-based picker would choose it
    os.utime(layout.release_dir("v2"), (time.time() + 100, time.time() + 100))
    summary = rel.summarize(rel.read_ledger(layout))
    assert rel.last_known_good(summary)["release_id"] == "v1"


def test_ledger_is_append_only_and_survives_a_torn_last_line(layout):
    events(layout, ("v1", "registered"), ("v1", "deployed"))
    with open(layout.ledger, "a") as handle:
        handle.write('{"release_id": "v2", "sta')  # crash mid-write
    assert [e["status"] for e in rel.read_ledger(layout)] == ["registered", "deployed"]


def test_corruption_before_the_last_line_is_an_error(layout):
    os.makedirs(layout.state)
    with open(layout.ledger, "w") as handle:
        handle.write('garbage\n{"release_id": "v1", "status": "deployed"}\n')
    with pytest.raises(rel.ReleaseError, match="corrupt at line 1"):
        rel.read_ledger(layout)


def test_current_through_a_slot_names_release_and_pool(layout):
    os.symlink("../releases/v2", layout.slot("green"))
    os.symlink("slots/green", layout.current)
    assert rel.read_current(layout) == ("v2", "green")


def test_current_as_real_directory_is_refused(layout):
    os.makedirs(layout.current)
    with pytest.raises(rel.ReleaseError, match="is a real directory"):
        rel.read_current(layout)


def test_current_pointing_outside_releases_is_refused(layout, tmp_path):
    os.symlink(str(tmp_path), layout.current)
    with pytest.raises(rel.ReleaseError, match="points outside"):
        rel.read_current(layout)


def test_swap_symlink_replaces_the_link_atomically(layout):
    os.symlink("../releases/v1", layout.slot("blue"))
    rel.swap_symlink(layout.slot("blue"), "../releases/v2")
    assert os.readlink(layout.slot("blue")) == "../releases/v2"
    assert sorted(os.listdir(layout.slots)) == ["blue"]  # no temporary link left behind


def test_tree_checksum_changes_with_content_and_mode(layout):
    before = rel.tree_checksum(layout.release_dir("v1"))
    path = os.path.join(layout.release_dir("v1"), "release.json")
    os.chmod(path, 0o600)
    after_mode = rel.tree_checksum(layout.release_dir("v1"))
    with open(path, "a") as handle:
        handle.write(" ")
    after_content = rel.tree_checksum(layout.release_dir("v1"))
    assert len({before, after_mode, after_content}) == 3


def test_host_state_reports_schemas_and_the_idle_pool(layout):
    os.symlink("../releases/v1", layout.slot("blue"))
    os.symlink("../releases/v2", layout.slot("green"))
    os.symlink("slots/blue", layout.current)
    events(layout, ("v1", "known-good"), ("v2", "known-good"))
    state = rel.host_state(layout)
    assert state["current"] == "v1" and state["live_pool"] == "blue"
    assert state["idle_pool"] == "green" and state["slots"] == {"blue": "v1", "green": "v2"}
    assert state["last_known_good"] == "v2"
    assert state["schemas"]["v3"] == ["0001"]
