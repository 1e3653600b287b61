"""`knowngood wal push|fetch|status`: the WAL tool's commands from the knowngood CLI.

The same code PostgreSQL's archive_command runs (plugins/module_utils/_backup/wal.py), so
`knowngood wal push %p` and the installed `kg-wal push %p` behave identically.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _import_tool():
    """The WAL tool from this checkout's collection, else from an installed collection."""
    repo_collections = Path(__file__).resolve().parents[2] / "collections"
    checkout = (repo_collections / "ansible_collections").is_dir()
    if checkout and str(repo_collections) not in sys.path:
        sys.path.insert(0, str(repo_collections))
    try:
        from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import (
            tool,
        )
    except ImportError as exc:
        raise SystemExit(
            "knowngood wal: the knowngood.runbooks collection is not importable "
            f"(run from a checkout or install the collection): {exc}"
        ) from None
    return tool


def cmd_wal(args: argparse.Namespace) -> int:
    tool = _import_tool()
    argv = ["--config", args.config, args.wal_command, *args.wal_args]
    return tool.tool_main(argv)


def add_parser(sub: argparse._SubParsersAction) -> None:
    wal = sub.add_parser(
        "wal",
        help="WAL archiving: push PATH | fetch NAME DEST | status",
        description="knowngood wal push PATH | fetch NAME DEST [--no-prefetch] | status",
    )
    wal.add_argument("--config", required=True, help="backup configuration (JSON)")
    wal.add_argument("wal_command", choices=["push", "fetch", "status"])
    wal.add_argument("wal_args", nargs=argparse.REMAINDER)
    wal.set_defaults(func=cmd_wal)
