"""Release artifacts are checked member by member before anything is unpacked (issue 13)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils import release as rel
from ansible_collections.knowngood.runbooks.plugins.module_utils import release_ops
from conftest import crafted_artifact


class FakeModule:
    def __init__(self, **params):
        self.params = {k: None for k in release_ops.ARGUMENT_SPEC}
        self.params.update(state="present", keep_releases=0, wait_timeout=10)
        self.params.update(params)
        self.check_mode = False

    def warn(self, msg):
        pass


def make_tar(path, *members):
    with tarfile.open(path, "w") as archive:
        for name, kind, extra in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = extra.pop("mode", 0o644)
            data = extra.pop("data", None)
            for key, value in extra.items():
                setattr(info, key, value)
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


REG, DIR, SYM, LNK = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE
OK = ("release.json", REG, {"data": b"{}"})


def check(path):
    with tarfile.open(path) as archive:
        return rel.check_archive_members(archive.getmembers(), str(path))


@pytest.mark.parametrize(
    "members, named",
    [
        ([("/etc/x", REG, {"data": b""})], "'/etc/x'"),
        ([("a/../../x", REG, {"data": b""})], "'a/../../x'"),
        ([("null", tarfile.CHRTYPE, {})], "'null'"),
        ([("fifo", tarfile.FIFOTYPE, {})], "'fifo'"),
        ([("blk", tarfile.BLKTYPE, {})], "'blk'"),
        ([("bin", REG, {"data": b"", "mode": 0o4755})], "'bin'"),
        ([("l", SYM, {"linkname": "/etc"})], "'l'"),
        ([("d", DIR, {}), ("d/l", SYM, {"linkname": "../.."})], "'d/l'"),
        # a chain: each link normalizes inside, the composition climbs out
        (
            [
                ("s", DIR, {}),
                ("s/up", SYM, {"linkname": ".."}),
                ("l1", SYM, {"linkname": "s/up/.."}),
            ],
            "'l1'",
        ),
        # a name that walks through an earlier link to outside
        ([("s", DIR, {}), ("s/up", SYM, {"linkname": "../.."})], "'s/up'"),
        ([("h", LNK, {"linkname": "../outside"})], "'h'"),
        ([("h", LNK, {"linkname": "not-in-the-archive"})], "'h'"),
        ([("f", REG, {"data": b""}), ("f", SYM, {"linkname": "release.json"})], "'f'"),
        ([("l", SYM, {"linkname": "a"}), ("l", REG, {"data": b""})], "'l'"),
    ],
)
def test_unsafe_members_are_refused_and_named(tmp_path, members, named):
    path = make_tar(tmp_path / "a.tar", OK, *members)
    with pytest.raises(rel.ReleaseError) as err:
        check(path)
    assert named in str(err.value) and "nothing was unpacked" in str(err.value)


def test_ordinary_links_inside_the_release_pass(tmp_path):
    path = make_tar(
        tmp_path / "a.tar",
        OK,
        ("lib", DIR, {"mode": 0o755}),
        ("lib/x.py", REG, {"data": b"x"}),
        ("bin", DIR, {"mode": 0o755}),
        ("bin/x", SYM, {"linkname": "../lib/x.py", "mode": 0o777}),
        ("cur", SYM, {"linkname": "lib/", "mode": 0o777}),
        ("cur/y.py", REG, {"data": b"y"}),
        ("hard", LNK, {"linkname": "cur/y.py"}),
        ("dangling", SYM, {"linkname": "lib/not-yet", "mode": 0o777}),
    )
    assert check(path)


@pytest.mark.parametrize("data_filter", [True, False], ids=["with-data-filter", "without"])
@pytest.mark.parametrize(
    "kind, named",
    [("chain", "'l1'"), ("hardlink", "'conf'"), ("device", "'null'")],
)
def test_install_refuses_before_writing_anything(tmp_path, monkeypatch, data_filter, kind, named):
    """With and without tarfile's data filter, the crafted artifacts leave the host as it was:
    nothing next to releases/, shared/app.conf intact, no release or staging directory."""
    if not data_filter:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    root = tmp_path / "host"
    (root / "releases").mkdir(parents=True)
    (root / "shared").mkdir()
    (root / "shared" / "app.conf").write_text("{}\n")
    artifact = crafted_artifact(tmp_path / "evil.tar.gz", kind)
    module = FakeModule(root=str(root), release_id="evil", src=str(artifact))
    failed, result = release_ops.run(module)
    assert failed and named in result["msg"], result
    assert sorted(os.listdir(root)) == ["releases", "shared"]
    assert os.listdir(root / "releases") == []
    assert (root / "shared" / "app.conf").read_text() == "{}\n"
    assert not (root / ".knowngood" / "ledger.jsonl").exists()
    # the unpack step checks on its own too (the plan refused above, before it ran)
    with pytest.raises(rel.ReleaseError, match=named):
        release_ops._unpack(str(artifact), str(root / "releases" / "tree"))
    assert os.listdir(root / "releases") == []
    assert sorted(os.listdir(root)) == ["releases", "shared"]


def test_a_safe_artifact_is_unpacked(tmp_path):
    root = tmp_path / "host"
    artifact = make_tar(
        tmp_path / "v1.tar",
        ("release.json", REG, {"data": json.dumps({"id": "v1"}).encode()}),
        ("app", DIR, {"mode": 0o755}),
        ("app/run", SYM, {"linkname": "../release.json", "mode": 0o777}),
    )
    failed, result = release_ops.run(FakeModule(root=str(root), release_id="v1", src=str(artifact)))
    assert not failed, result
    tree = Path(root / "releases" / "v1")
    assert os.readlink(tree / "app" / "run") == "../release.json"
    assert [n for n in os.listdir(root / "releases")] == ["v1"]
