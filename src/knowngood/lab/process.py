"""How the lab runs its daemons: start them detached (own session, output appended to
<log_dir>/<name>.log, pid in <run_dir>/<name>.pid) so they outlive the CLI, wait until they
answer, stop them, and tell whether a pid is still this lab's. Everything binds to 127.0.0.0/8.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knowngood.errors import LabError
from knowngood.lab.config import LabConfig

Progress = Callable[[str], None]
LOOPBACK = "127.0.0.1"
_SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Account:
    uid: int
    gid: int
    home: Path


def daemon_pidfile(cfg: LabConfig, name: str) -> Path:
    return cfg.run_dir / f"{name}.pid"


def daemon_log(cfg: LabConfig, name: str) -> Path:
    return cfg.log_dir / f"{name}.log"


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    tail = "\n".join(text.splitlines()[-lines:])
    return f"--- last {lines} lines of {path} ---\n{tail}"


def fail(message: str, log: Path | None = None) -> LabError:
    return LabError(f"{message}\n{_log_tail(log)}" if log else message)


# Daemons we spawned stay our children until we exit. Holding their Popen objects lets us reap
# them through Popen (no "still running" ResourceWarning when a handle is dropped) and keeps a
# dead daemon from lingering as a zombie that the liveness checks would have to second-guess.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            del _CHILDREN[pid]
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def alive(pid: int, exe: str | None = None) -> bool:
    """True if pid runs and (when exe is given) is that program, so a recycled pid never counts."""
    _reap(pid)
    try:
        proc_stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if proc_stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
        return False
    if exe is None:
        return True
    try:
        return Path(os.readlink(f"/proc/{pid}/exe")).name.startswith(exe)
    except OSError:
        return False


def read_pidfile(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def running_pid(cfg: LabConfig, name: str, exe: str) -> int | None:
    """The daemon's pid if it runs and is this lab's: its command line names the lab root
    (a recycled pid can be the same program serving another lab)."""
    pid = read_pidfile(daemon_pidfile(cfg, name))
    if pid is None or not alive(pid, exe):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if str(cfg.root).encode() in cmdline else None


def clean_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    # A fresh environment keeps the caller's PG*/AWS_* variables from leaking into daemons.
    env = {"PATH": _SAFE_PATH, "HOME": str(home), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    env.update(extra or {})
    return env


def spawn_daemon(
    cfg: LabConfig,
    name: str,
    argv: Sequence[str | Path],
    *,
    cwd: Path,
    env: Mapping[str, str],
    account: Account | None = None,
) -> subprocess.Popen[bytes]:
    """Start a detached daemon with output appended to its log and its pid recorded."""
    args = [str(a) for a in argv]
    log = daemon_log(cfg, name)
    creds: dict[str, Any] = {}
    if account is not None:
        creds = {"user": account.uid, "group": account.gid, "extra_groups": []}
    with log.open("ab") as out:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        out.write(f"\n=== {stamp} knowngood lab starting: {shlex.join(args)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
            **creds,
        )
    _CHILDREN[proc.pid] = proc
    daemon_pidfile(cfg, name).write_text(f"{proc.pid}\n")
    return proc


def wait_until(
    check: Callable[[], bool],
    *,
    what: str,
    timeout: float,
    log: Path | None = None,
    proc: subprocess.Popen[bytes] | None = None,
    interval: float = 0.2,
) -> float:
    """Poll check until it passes; return seconds waited. Fail fast if proc dies meanwhile."""
    start = time.monotonic()
    last_error = ""
    while True:
        try:
            if check():
                return time.monotonic() - start
        except Exception as err:  # any error just means "not ready yet"; keep it for the report
            last_error = f" (last error: {err})"
        if proc is not None and proc.poll() is not None:
            raise fail(f"{what}: process exited with code {proc.returncode} while starting", log)
        if time.monotonic() - start > timeout:
            raise fail(f"{what}: not ready after {timeout:.0f}s{last_error}", log)
        time.sleep(interval)


def stop_pids(targets: Sequence[tuple[int, str | None]], timeout: float = 20.0) -> None:
    """SIGTERM all at once (shutdowns overlap), then SIGKILL whatever outlives timeout."""
    for sig, grace in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        live = [(pid, exe) for pid, exe in targets if alive(pid, exe)]
        if not live:
            return
        for pid, _ in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(alive(p, e) for p, e in live):
            time.sleep(0.1)
    survivors = [pid for pid, exe in targets if alive(pid, exe)]
    if survivors:
        raise LabError(f"pids {survivors} survived SIGKILL")


def stop_daemons(cfg: LabConfig, daemons: Sequence[tuple[str, str]], timeout: float = 20.0) -> None:
    """Stop the (name, exe) daemons recorded in their pidfiles; already stopped is fine."""
    running = [(name, running_pid(cfg, name, exe), exe) for name, exe in daemons]
    stop_pids([(pid, exe) for _, pid, exe in running if pid is not None], timeout)
    for name, _, _ in running:
        daemon_pidfile(cfg, name).unlink(missing_ok=True)


def stop_daemon(cfg: LabConfig, name: str, exe: str, timeout: float = 20.0) -> None:
    stop_daemons(cfg, [(name, exe)], timeout)


def tcp_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_free(host: str, port: int, what: str) -> None:
    # Otherwise a stranger answering on our port would pass the readiness checks.
    if tcp_open(host, port, timeout=0.5):
        raise LabError(
            f"{what}: {host}:{port} is already in use by a process the lab did not start"
        )


def http_status(url: str, method: str = "GET", timeout: float = 2.0) -> tuple[int, str]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def ensure_dir(path: Path, mode: int = 0o755, owner: Account | None = None) -> None:
    """mkdir -p, giving every directory we create mode (umask must not make them untraversable)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        p.mkdir()
        os.chmod(p, mode)
    if owner is not None:
        os.chown(path, owner.uid, owner.gid)
        os.chmod(path, mode)


def ensure_base(cfg: LabConfig) -> None:
    for d in (cfg.root, cfg.run_dir, cfg.log_dir):
        ensure_dir(d)


def write_if_changed(path: Path, content: str, mode: int = 0o644) -> bool:
    if path.exists() and path.read_text() == content:
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(content)
    os.chmod(tmp, mode)
    tmp.replace(path)
    return True


def run_command(
    argv: Sequence[str | Path],
    *,
    what: str,
    timeout: float,
    account: Account | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a short-lived command; raise LabError with its output if it fails."""
    args = [str(a) for a in argv]
    creds: dict[str, Any] = {}
    if account is not None:
        creds = {"user": account.uid, "group": account.gid, "extra_groups": []}
    try:
        res = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            **creds,
        )
    except subprocess.TimeoutExpired as err:
        raise LabError(f"{what}: timed out after {timeout:.0f}s: {shlex.join(args)}") from err
    except OSError as err:
        raise LabError(f"{what}: cannot run {args[0]}: {err}") from err
    if res.returncode != 0:
        output = (res.stdout + res.stderr).strip().splitlines()[-40:]
        raise LabError(f"{what}: {shlex.join(args)} exited {res.returncode}\n" + "\n".join(output))
    return res


def descendants(pid: int) -> list[int]:
    """Every process below pid, read from /proc (children first in the list's tail)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in parents.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL pid and every process below it (a crash, not a shutdown)."""
    for victim in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


def read_pid(pidfile: Path) -> int | None:
    """The pid in pidfile if that process is alive and belongs to this lab.

    Every process the lab starts names the lab's directory on its command line. A pidfile
    left behind by a lab whose processes died may hold a pid the system has since given to
    something else (another lab's app, say): that process is not ours to signal.
    """
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    lab_root = str(pidfile.parent.parent).encode()
    return pid if lab_root in cmdline else None


def spawn(argv: list[str], log: Path, pidfile: Path) -> int:
    """Start a detached process that outlives the CLI; its pid goes to pidfile."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
    pidfile.write_text(f"{proc.pid}\n")
    return proc.pid


def running(pid: int) -> bool:
    """Alive and not a zombie: the lab's daemons outlive the CLI that started them, so
    nobody but a slow init reaps them, and a zombie still answers kill(pid, 0)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def stop_pid(pidfile: Path, timeout: float = 5.0) -> None:
    pid = read_pid(pidfile)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while running(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if running(pid):
            os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def wait_http(url: str, timeout: float, ok: Callable[[int], bool] = lambda c: c < 600) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            code, _ = http_get(url, timeout=1)
            if ok(code):
                return
            last = code
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise LabError(f"{url} not ready after {timeout}s (last: {last})")
