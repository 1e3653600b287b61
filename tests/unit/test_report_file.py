"""knowngood.runbooks.report_file: a report lands whole, private, once, and never outside
its directory."""

import json
import os
import stat

from ansible_collections.knowngood.runbooks.plugins.module_utils import report_file
from ansible_collections.knowngood.runbooks.plugins.plugin_utils.in_process import (
    InProcessModule,
    validate,
)


def write(check=False, diff=False, **args):
    params, errors = validate(args, report_file.ARGUMENT_SPEC)
    assert not errors, errors
    return report_file.run(InProcessModule(params, check, diff))


def test_writes_sorted_json_privately_then_reports_no_change(tmp_path):
    where = tmp_path / "audit" / "new"
    failed, result = write(dir=str(where), name="r1.verify.json", content={"b": 1, "a": [2]})
    assert not failed and result["changed"]
    path = where / "r1.verify.json"
    assert path.read_text() == json.dumps({"a": [2], "b": 1}, indent=4, sort_keys=True) + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(where.stat().st_mode) == 0o700
    assert os.listdir(where) == ["r1.verify.json"]  # no temporary file left
    failed, again = write(dir=str(where), name="r1.verify.json", content={"a": [2], "b": 1})
    assert not failed and not again["changed"]


def test_check_mode_writes_nothing_and_diff_shows_the_change(tmp_path):
    path = tmp_path / "r.json"
    path.write_text("old\n")
    failed, result = write(check=True, diff=True, dir=str(tmp_path), name="r.json", content="new")
    assert not failed and result["changed"]
    assert result["diff"]["before"] == "old\n" and result["diff"]["after"] == "new\n"
    assert path.read_text() == "old\n"


def test_a_name_that_leaves_the_directory_is_refused(tmp_path):
    for name in ("../escape.json", "a/b.json", ".hidden", "..", ""):
        failed, result = write(dir=str(tmp_path / "d"), name=name, content={})
        assert failed and "plain file name" in result["msg"], name
    assert not (tmp_path / "d").exists() and not (tmp_path / "escape.json").exists()


def test_an_unwritable_directory_fails_with_the_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    failed, result = write(dir=str(blocker / "sub"), name="r.json", content={})
    assert failed and str(blocker / "sub" / "r.json") in result["msg"]
