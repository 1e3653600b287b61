# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What knowngood.runbooks.report_file does: one JSON document into a run's artifact directory.

The module and its in-process action (plugins/action/report_file.py) both call run(). Every
runbook ends by writing its report beside the audit record; with ansible.builtin.file and
ansible.builtin.copy that was three interpreter starts on the controller per report.
"""

import json
import os
import re

from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (
    write_atomic,
)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")

ARGUMENT_SPEC = dict(
    dir=dict(type="path", required=True),
    name=dict(type="str", required=True),
    content=dict(type="raw", required=True),
)


def render(content):
    """The file's text: a string as it is, anything else as indented, key-sorted JSON."""
    if isinstance(content, str):
        return content if content.endswith("\n") else content + "\n"
    return json.dumps(content, indent=4, sort_keys=True, default=str) + "\n"


def run(module):
    """(failed, result): write dir/name (0600, its directory 0700 when made) atomically."""
    params = module.params
    name = params["name"]
    if not NAME_RE.match(name) or ".." in name:
        return True, {
            "msg": "name %r is not a plain file name (letters, digits, '.', '_', '-')" % name,
            "changed": False,
        }
    directory = params["dir"]
    path = os.path.join(directory, name)
    text = render(params["content"])
    before = None
    if os.path.isfile(path):
        with open(path, encoding="utf-8", errors="replace") as handle:
            before = handle.read()
    changed = before != text
    result = {"changed": changed, "path": path}
    if getattr(module, "_diff", False) and changed:
        result["diff"] = {
            "before": before or "",
            "after": text,
            "before_header": path if before is not None else "(absent)",
            "after_header": path,
        }
    if module.check_mode or not changed:
        return False, result
    try:
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o700)
        write_atomic(path, text, mode=0o600)
    except OSError as err:
        return True, {"msg": "cannot write %s: %s" % (path, err), "changed": False, "path": path}
    return False, result
