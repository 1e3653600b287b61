"""The lab's inventory keeps every host's state inside the lab: two labs on one machine (the
test workers', the demo's, the bench's) never share a host run lock."""

from __future__ import annotations

from pathlib import Path

import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils.run_lock import lock_path

from knowngood.lab.config import LabConfig
from knowngood.lab.inventory import inventory


def lock_files(root: Path, ssh: bool) -> dict[str, str]:
    inv = inventory(LabConfig(root=root, hosts=3, ssh=ssh, base_port=26000))
    hosts = {
        name: hostvars
        for group in inv["all"]["children"].values()
        for name, hostvars in group.get("hosts", {}).items()
    }
    return {name: lock_path(hostvars) for name, hostvars in hosts.items()}


@pytest.mark.parametrize("ssh", [False, True], ids=["local", "ssh"])
def test_every_host_has_its_own_run_lock_inside_the_lab(tmp_path, ssh):
    locks = lock_files(tmp_path / "lab", ssh)
    assert {"app1", "app2", "app3", "lb1", "db1", "db2"} <= set(locks)
    assert len(set(locks.values())) == len(locks), locks  # no two hosts share one
    for host, path in locks.items():
        assert Path(path).is_relative_to(tmp_path / "lab"), (host, path)
    # A second lab on the same machine: not one lock file in common.
    other = lock_files(tmp_path / "other", ssh)
    assert not set(locks.values()) & set(other.values())
