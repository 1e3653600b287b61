#!/usr/bin/python
# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: feature_flag
short_description: Turn a feature flag on or off, in a file on the host or in a flag service
version_added: "0.1.0"
description:
  - Turning a flag off is the fastest rollback there is; this module makes it declarative,
    idempotent and recorded (who, when, which run, why) next to the flag.
  - The C(file) backend keeps flags in a JSON file on the host, written atomically; the
    application re-reads it when it changes.
  - 'The C(http) backend talks to a flag service (C(GET/PUT <url>/flags/<name>), JSON
    C({"enabled": bool})).'
options:
  name:
    description: Flag name.
    type: str
    required: true
  enabled:
    description: Desired state of the flag.
    type: bool
    required: true
  backend:
    description: Where flags live.
    type: str
    choices: [file, http]
    default: file
  path:
    description: C(file) backend. The flags JSON file.
    type: path
  url:
    description: C(http) backend. Base URL of the flag service.
    type: str
  token:
    description: C(http) backend. Bearer token for the flag service. Never logged.
    type: str
  run_id:
    description: Recorded with the change.
    type: str
  reason:
    description: Recorded with the change.
    type: str
  timeout:
    description: C(http) backend. Seconds per request.
    type: float
    default: 5
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - knowngood.runbooks.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
author:
  - knowngood contributors (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Switch the risky checkout path off
  knowngood.runbooks.feature_flag:
    name: new_checkout
    enabled: false
    path: /srv/app/shared/flags.json
    reason: error rate above 30%
"""

RETURN = r"""
name:
  description: Flag name.
  returned: always
  type: str
enabled:
  description: State after the call (unchanged in check mode).
  returned: always
  type: bool
previous:
  description: State before the call, null when the flag did not exist.
  returned: always
  type: bool
duration_ms:
  description: Wall time in milliseconds.
  returned: always
  type: int
"""

import json
import os
import re
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class FlagError(Exception):
    pass


def file_read(path):
    try:
        with open(path) as handle:
            data = json.load(handle)
    except OSError:
        return {"flags": {}}
    except ValueError as exc:
        raise FlagError("flags file %s is not valid JSON: %s" % (path, exc)) from exc
    if not isinstance(data, dict) or not isinstance(data.get("flags", {}), dict):
        raise FlagError('flags file %s must hold {"flags": {...}}' % path)
    data.setdefault("flags", {})
    return data


def file_get(path, name):
    value = file_read(path)["flags"].get(name)
    if value is None:
        return None
    return bool(value.get("enabled") if isinstance(value, dict) else value)


def file_set(module, path, name, enabled):
    data = file_read(path)
    data["flags"][name] = {
        "enabled": enabled,
        "updated_at": _now(),
        "run_id": module.params["run_id"],
        "reason": module.params["reason"],
    }
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o755)
    fd, tmp = tempfile.mkstemp(prefix=".flags-", dir=directory)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
    os.chmod(tmp, 0o644)
    module.atomic_move(tmp, path)


def _headers(module):
    headers = {"Content-Type": "application/json"}
    if module.params["token"]:
        headers["Authorization"] = "Bearer " + module.params["token"]
    return headers


def http_get(module, name):
    url = "%s/flags/%s" % (module.params["url"].rstrip("/"), name)
    try:
        response = open_url(url, headers=_headers(module), timeout=module.params["timeout"])
        return bool(json.loads(response.read()).get("enabled"))
    except Exception as exc:
        if getattr(exc, "code", None) == 404:
            return None
        raise FlagError("flag service %s: %s" % (url, exc)) from exc


def http_set(module, name, enabled):
    url = "%s/flags/%s" % (module.params["url"].rstrip("/"), name)
    body = json.dumps(
        {"enabled": enabled, "run_id": module.params["run_id"], "reason": module.params["reason"]}
    )
    try:
        open_url(
            url, data=body, method="PUT", headers=_headers(module), timeout=module.params["timeout"]
        )
    except Exception as exc:
        raise FlagError("flag service %s refused the change: %s" % (url, exc)) from exc


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            enabled=dict(type="bool", required=True),
            backend=dict(type="str", default="file", choices=["file", "http"]),
            path=dict(type="path"),
            url=dict(type="str"),
            token=dict(type="str", no_log=True),
            run_id=dict(type="str"),
            reason=dict(type="str"),
            timeout=dict(type="float", default=5),
        ),
        required_if=[("backend", "file", ("path",)), ("backend", "http", ("url",))],
        supports_check_mode=True,
    )
    started = time.time()
    name, enabled = module.params["name"], module.params["enabled"]
    if not NAME_RE.match(name):
        module.fail_json(msg="invalid flag name %r" % name)
    try:
        if module.params["backend"] == "file":
            previous = file_get(module.params["path"], name)
        else:
            previous = http_get(module, name)
        changed = previous != enabled
        if changed and not module.check_mode:
            if module.params["backend"] == "file":
                file_set(module, module.params["path"], name, enabled)
            else:
                http_set(module, name, enabled)
    except FlagError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(
        changed=changed,
        name=name,
        enabled=enabled if not module.check_mode else previous,
        previous=previous,
        duration_ms=int((time.time() - started) * 1000),
        diff={"before": {name: previous}, "after": {name: enabled}},
    )


if __name__ == "__main__":
    main()
