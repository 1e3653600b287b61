#!/usr/bin/env python3
"""Dynamic inventory for the embedded lab: reads what `knowngood lab up` wrote.

The lab lives in $KNOWNGOOD_LAB_DIR (default /var/lib/knowngood-lab); `knowngood lab status
--json` prints the same inventory path under "inventory".
"""

import json
import os
import sys


def convert(node, name, out, hostvars):
    group = out.setdefault(name, {"hosts": [], "vars": {}, "children": []})
    group["vars"].update(node.get("vars") or {})
    for host, hv in (node.get("hosts") or {}).items():
        group["hosts"].append(host)
        hostvars.setdefault(host, {}).update(hv or {})
    for child, sub in (node.get("children") or {}).items():
        group["children"].append(child)
        convert(sub or {}, child, out, hostvars)


def main():
    root = os.environ.get("KNOWNGOOD_LAB_DIR", "/var/lib/knowngood-lab")
    path = os.path.join(root, "inventory", "hosts.json")
    if "--host" in sys.argv:
        print("{}")
        return 0
    try:
        with open(path) as handle:
            inventory = json.load(handle)
    except OSError:
        sys.stderr.write(f"no lab at {root}: run `knowngood lab up` first\n")
        print(json.dumps({"_meta": {"hostvars": {}}}))
        return 0
    out, hostvars = {}, {}
    convert(inventory["all"], "all", out, hostvars)
    out["_meta"] = {"hostvars": hostvars}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
