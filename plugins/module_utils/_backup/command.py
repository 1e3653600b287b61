# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How the backup engines, verification and PITR run a command: a scrubbed environment, a child
that dies with us, BackupError with the command's stderr tail when it fails."""

import ctypes
import os
import shutil
import signal
import subprocess

from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (
    BackupError,
)

# The environment of every command the engine runs: nothing of the caller's PG* / AWS_* leaks in.
COMMAND_ENV = {
    "PATH": "/usr/bin:/bin",
    "LC_ALL": "C.UTF-8",
    "HOME": "/tmp",
    "PGCONNECT_TIMEOUT": "10",
}


def _prctl():
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()  # resolved in the parent: the child must not dlopen between fork and exec


def _die_with_parent():
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def child(argv):
    """(argv, preexec_fn) for a child that dies with us (a kill -9 of the backup must not
    leave pg_basebackup on). setpriv sets the parent-death signal with no Python code between
    fork and exec: preexec_fn is unsafe in a threaded process (a child stuck before exec
    leaves Popen waiting forever), so it is only the fallback where setpriv is missing."""
    argv = [str(a) for a in argv]
    setpriv = shutil.which("setpriv", path=COMMAND_ENV["PATH"])
    if setpriv:
        return [setpriv, "--pdeathsig", "KILL", "--", *argv], None
    return argv, _die_with_parent


def run(argv, *, cfg=None, as_postgres=False, timeout=None, check=True, what=None):
    """Run a command (argv list); BackupError with its stderr tail on failure."""
    kwargs = {}
    if as_postgres:
        uid, gid = cfg.pg.os_ids()
        kwargs.update(user=uid, group=gid, extra_groups=[])
    argv_, preexec = child(argv)
    if not shutil.which(str(argv[0]), path=COMMAND_ENV["PATH"]):
        raise BackupError(f"{what or argv[0]}: command not found ({argv[0]})")
    try:
        proc = subprocess.run(
            argv_,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(COMMAND_ENV),
            preexec_fn=preexec,
            check=False,
            **kwargs,
        )
    except FileNotFoundError as err:
        raise BackupError(f"{what or argv[0]}: command not found ({argv[0]})") from err
    except subprocess.TimeoutExpired as err:
        raise BackupError(f"{what or argv[0]} did not finish in {timeout}s") from err
    if check and proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
        raise BackupError(f"{what or os.path.basename(str(argv[0]))} failed: " + " | ".join(tail))
    return proc
