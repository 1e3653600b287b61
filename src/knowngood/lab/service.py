"""The lab's service manager for one app host.

    python -m knowngood.lab.service --root R start app2


What systemd is to a production host: starts the host's app instances that are not running
(both pools), and waits until they answer. Recovery runbooks call it through the host's
`knowngood_app_start_command` after rebuilding a lost host.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from knowngood.lab import apps, postgres, process
from knowngood.lab.config import LabConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("action", choices=["start"])
    parser.add_argument("host", help="app host name, e.g. app2")
    args = parser.parse_args(argv)
    cfg = LabConfig.load(args.root)
    names = [cfg.host_name(i) for i in range(cfg.hosts)]
    if args.host not in names:
        print(f"unknown host {args.host}; the lab has {', '.join(names)}", file=sys.stderr)
        return 2
    index = names.index(args.host)
    # The lab's original primary; the host's database.json (written by a repoint) overrides it.
    dsn = f"postgresql://{postgres.APP_ROLE}@{process.LOOPBACK}:{cfg.pg_primary_port}/{postgres.APP_DB}"
    apps.apps_up(cfg, print, dsn, only={index})
    return 0


if __name__ == "__main__":
    sys.exit(main())
