# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The installer of kg-wal, the standalone tool PostgreSQL runs as archive_command /
restore_command: this package's sources, two launchers and config.json onto the host.

The tool's command line is tool.py; the archiving itself is wal.py's. Standard library only.
"""

import json
import os
import subprocess

from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (
    BackupError,
    write_atomic,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.wal import TOOL_NAME

_PKG = "ansible_collections.knowngood.runbooks.plugins.module_utils"
# The installed sources, by module name under _PKG: tool.py and everything it imports (its
# scheduled jobs, `kg-wal backup full` and `kg-wal verify`, run the engines themselves). Read
# with importlib, so this file imports none of them: Ansible ships a module the module_utils its
# import statements name, and every module that installs the tool imports tool.py for that.
MODULES = (
    "aws",
    "postgres",
    "progress",
    "_backup",
    "_backup.common",
    "_backup.config",
    "_backup.codec",
    "_backup.store",
    "_backup.archive",
    "_backup.wal",
    "_backup.metrics",
    "_backup.tool",
    "_backup.install",
    "_backup.catalog",
    "_backup.command",
    "_backup.native",
    "_backup.pgbackrest",
    "_backup.engine",
    "_backup.verify",
    "_backup.notice",
    "notify",
)
PACKAGES = ("_backup",)


_SHELL_LAUNCHER = """#!/bin/sh
# kg-wal: knowngood WAL archiving for PostgreSQL (archive_command / restore_command).
# Installed by knowngood; do not edit (it is rewritten on every install).
# PostgreSQL runs restore_command once per 16 MB segment, so a segment the prefetcher already
# fetched and verified is moved into place here without starting Python; everything else goes
# to kg-wal.py.
if [ "$1" = fetch ] && [ "$#" -eq 3 ] && [ "${{#2}}" -eq 24 ]; then
    case "$2" in
        *[!0-9A-F]*) ;;
        *)
            spool={spool}
            if [ -f "$spool/$2.json" ] && mv -f "$spool/$2" "$3" 2>/dev/null; then
                rm -f "$spool/$2.json"
                echo "kg-wal: fetch $2 ok from prefetch spool" >&2
                exit 0
            fi
            ;;
    esac
fi
exec {python} {script} "$@"
"""

_LAUNCHER = """#!{python}
# kg-wal.py: the Python half of kg-wal (see kg-wal). Installed by knowngood; do not edit.
import sys

sys.path.insert(0, {lib!r})
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.tool import tool_main

sys.exit(tool_main(sys.argv[1:], default_config={config!r}))
"""


def _module_source(modname):
    import importlib

    module = importlib.import_module(f"{_PKG}.{modname}")
    loader = getattr(module, "__loader__", None)
    source = loader.get_source(module.__name__) if loader is not None else None
    if source is None:
        raise BackupError(f"cannot read the source of {modname} to install the WAL tool")
    return source


def _module_path(pkg_dir, modname):
    """Where modname's source goes under pkg_dir (a package's in its __init__.py)."""
    parts = modname.split(".")
    if modname in PACKAGES:
        return os.path.join(pkg_dir, *parts, "__init__.py")
    return os.path.join(pkg_dir, *parts) + ".py"


def _write_if_changed(path, data, mode, uid, gid):
    if isinstance(data, str):
        data = data.encode()
    try:
        with open(path, "rb") as handle:
            same = handle.read() == data
    except OSError:
        same = False
    changed = not same
    if changed:
        write_atomic(path, data, mode=mode)
    return _ensure_attrs(path, mode, uid, gid) or changed


def _ensure_attrs(path, mode, uid, gid):
    """Mode and (when uid is given) owner of path; True if either had to change."""
    changed = False
    st = os.stat(path)
    if (st.st_mode & 0o7777) != mode:
        os.chmod(path, mode)
        changed = True
    if uid is not None and (st.st_uid, st.st_gid) != (uid, gid):
        os.chown(path, uid, gid)
        changed = True
    return changed


def _ensure_dir(path, mode, uid, gid):
    changed = False
    if not os.path.isdir(path):
        os.makedirs(path, exist_ok=True)
        changed = True
    return _ensure_attrs(path, mode, uid, gid) or changed


def tool_commands(tool_dir):
    """archive_command and restore_command for a tool installed in tool_dir."""
    tool = os.path.join(tool_dir, TOOL_NAME)
    quoted = "'" + tool.replace("'", "'\\''") + "'"
    return {
        "tool": tool,
        "config": os.path.join(tool_dir, "config.json"),
        "archive_command": f"{quoted} push %p",
        "restore_command": f"{quoted} fetch %f %p",
    }


def _same_content(path, data):
    try:
        with open(path, "rb") as handle:
            return handle.read() == (data.encode() if isinstance(data, str) else data)
    except OSError:
        return False


def _sh_quote(text):
    return "'" + text.replace("'", "'\\''") + "'"


def _launchers(cfg, tool_dir, python):
    """[(path, content)] of kg-wal (shell, with the spool fast path) and kg-wal.py."""
    commands = tool_commands(tool_dir)
    script = commands["tool"] + ".py"
    lib = os.path.join(tool_dir, "lib")
    return [
        (
            commands["tool"],
            _SHELL_LAUNCHER.format(
                spool=_sh_quote(os.path.join(cfg.spool_dir, "prefetch")),
                python=_sh_quote(python),
                script=_sh_quote(script),
            ),
        ),
        (script, _LAUNCHER.format(python=python, lib=lib, config=commands["config"])),
    ]


def tool_is_current(cfg, tool_dir, python="/usr/bin/python3"):
    """True when install_tool would write nothing: check mode's answer, read-only."""
    commands = tool_commands(tool_dir)
    pkg_dir = os.path.join(tool_dir, "lib", *_PKG.split("."))
    wanted = [
        (commands["config"], json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n"),
        *_launchers(cfg, tool_dir, python),
    ]
    wanted += [(_module_path(pkg_dir, m), _module_source(m)) for m in MODULES]
    return all(_same_content(path, data) for path, data in wanted) and os.path.isdir(cfg.spool_dir)


def install_tool(cfg, tool_dir, python="/usr/bin/python3", owner="postgres"):
    """Install kg-wal into tool_dir: the backup package's sources, a launcher and config.json (0600,
    owned by `owner`, it holds secrets). Idempotent. Also makes the spool and the local
    locations' WAL directories writable by `owner`."""
    import pwd

    if not os.path.isabs(tool_dir):
        raise BackupError(f"tool_dir must be an absolute path, got {tool_dir!r}")
    uid = gid = None
    if owner:
        try:
            entry = pwd.getpwnam(owner)
        except KeyError:
            raise BackupError(f"install WAL tool: no OS user {owner!r}") from None
        uid, gid = entry.pw_uid, entry.pw_gid
        if os.geteuid() != 0 and os.geteuid() != uid:
            uid = gid = None  # not root: cannot chown; files stay ours
    changed = False
    lib = os.path.join(tool_dir, "lib")
    pkg_dir = os.path.join(lib, *_PKG.split("."))
    changed |= _ensure_dir(tool_dir, 0o755, None, None)
    parts = _PKG.split(".")
    for depth in range(1, len(parts) + 1):
        directory = os.path.join(lib, *parts[:depth])
        changed |= _ensure_dir(directory, 0o755, None, None)
        changed |= _write_if_changed(os.path.join(directory, "__init__.py"), "", 0o644, None, None)
    for package in PACKAGES:
        changed |= _ensure_dir(os.path.join(pkg_dir, *package.split(".")), 0o755, None, None)
    for modname in MODULES:
        changed |= _write_if_changed(
            _module_path(pkg_dir, modname), _module_source(modname), 0o644, None, None
        )
    cache_tag = os.path.join(pkg_dir, "__pycache__")
    if (changed or not os.path.isdir(cache_tag)) and os.access(python, os.X_OK):
        # Byte-compile for the tool's interpreter now: postgres cannot write __pycache__ here,
        # and compiling on every archive_command call would cost tens of milliseconds.
        subprocess.run(
            [python, "-m", "compileall", "-q", lib],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
            check=False,
        )
    config_path = os.path.join(tool_dir, "config.json")
    changed |= _write_if_changed(
        config_path, json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n", 0o600, uid, gid
    )
    for path, content in _launchers(cfg, tool_dir, python):
        changed |= _write_if_changed(path, content, 0o755, None, None)
    spool_created = not os.path.isdir(cfg.spool_dir)
    os.makedirs(cfg.spool_dir, mode=0o700, exist_ok=True)
    if uid is not None and (spool_created or os.stat(cfg.spool_dir).st_uid != uid):
        os.chown(cfg.spool_dir, uid, gid)
        changed = True
    for spec in cfg.locations:
        if spec.type not in ("local", "export") or not os.path.isdir(os.path.dirname(spec.path)):
            continue
        if spec.type == "export" and not os.path.isdir(spec.path):
            continue  # removable medium not mounted now
        for directory in (spec.path, os.path.join(spec.path, cfg.cluster)):
            if not os.path.isdir(directory):
                os.makedirs(directory, mode=0o755, exist_ok=True)
                if uid is not None:
                    os.chown(directory, uid, gid)
                changed = True
        for sub in ("wal", ".meta", os.path.join(".meta", "wal")):
            directory = os.path.join(spec.path, cfg.cluster, sub)
            if not os.path.isdir(directory):
                os.makedirs(directory, mode=0o755, exist_ok=True)
                changed = True
            if uid is not None and os.stat(directory).st_uid != uid:
                os.chown(directory, uid, gid)
                changed = True
    return {"changed": changed, **tool_commands(tool_dir)}


# ---- command line (kg-wal and `knowngood wal`) -----------------------------------------------


__all__ = ["install_tool", "tool_commands", "tool_is_current"]
