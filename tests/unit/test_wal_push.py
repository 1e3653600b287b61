"""kg-wal push never hangs: its worker threads import nothing (two threads' first imports
once deadlocked on the import locks, a push every few hundred), every location has a
deadline, a spool that cannot take a pending copy fails the push, and the watchdog ends a
stuck push with exit status 1, never a signal.

Where first imports matter the push runs in a fresh interpreter, as archive_command does.
"""

from __future__ import annotations

import errno
import hashlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import store, wal
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import tool as wal_tool
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.codec import decode_file
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (
    BackupError,
    next_segment,
    sha256_file,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.config import (
    BackupConfig,
)
from conftest import REPO
from stalls import StallingEndpoint

FIRST = "000000010000000000000010"
# What a push may add to a 1 s deadline on a loaded 2-core machine (building the S3 client
# included); without the deadline a silent endpoint holds a push for minutes of read timeouts.
SLACK = 3.0
PASSPHRASE = "push-test-passphrase-0123"
# The interpreter PostgreSQL runs the tool with (Debian's botocore goes through six.moves).
SYSTEM_PYTHON = "/usr/bin/python3"

# Runs the tool's entry point the way its launcher does, with a finder first in sys.meta_path
# that sees every module any thread goes looking for.
AUDIT = """
import json, os, sys, threading
sys.path.insert(0, sys.argv[1])
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.tool import tool_main

found = []

class Recorder:
    def find_spec(self, name, path=None, target=None):
        if threading.current_thread() is not threading.main_thread():
            found.append([threading.current_thread().name, name])

sys.meta_path.insert(0, Recorder())
parent = os.getpid()
rc = tool_main(["--config", sys.argv[2], "push", sys.argv[3]])
# The push runs in the watchdog's forked child (its imports); the parent reports the status.
print(json.dumps({"rc": rc} if os.getpid() == parent else {"imports": found}), flush=True)
"""


class _S3Stub(http.server.BaseHTTPRequestHandler):
    """Just enough S3 for a push: PUT stores, HEAD answers what S3 answers."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _reply(self, code, headers=()):
        self.send_response(code)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_PUT(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        etag = f'"{hashlib.md5(body).hexdigest()}"'
        meta = [(k, v) for k, v in self.headers.items() if k.lower().startswith("x-amz-meta-")]
        self.server.objects[self.path] = [("ETag", etag), *meta, ("X-Size", str(len(body)))]
        self._reply(200, [("ETag", etag)])

    def do_HEAD(self):
        headers = self.server.objects.get(self.path)
        if headers is None:
            self._reply(404)
            return
        size = dict(headers)["X-Size"]
        self.send_response(200)
        for name, value in headers:
            if name != "X-Size":
                self.send_header(name, value)
        self.send_header("Content-Length", size)
        self.end_headers()


@pytest.fixture
def s3_stub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _S3Stub)
    server.objects = {}
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def refused():
    """An endpoint that refuses connections: a port bound by nobody listening."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.fixture
def black_hole():
    with StallingEndpoint() as hole:
        yield hole.url


def s3(name: str, endpoint: str, required: bool = True) -> dict:
    return {
        "name": name,
        "type": "s3",
        "endpoint_url": endpoint,
        "region": "us-east-1",
        "bucket": "wal",
        "access_key": "test",
        "secret_key": "test-secret",
        "encrypt": True,
        "required": required,
    }


def config(tmp_path: Path, *locations: dict) -> BackupConfig:
    return BackupConfig.from_dict(
        {
            "cluster": "pushtest",
            "compression": "lz4",
            "encryption_key": PASSPHRASE,
            "spool_dir": str(tmp_path / "spool"),
            "retries": {"attempts": 1, "base_delay": 0.1, "max_delay": 0.2},
            "locations": [
                {"name": "plain", "type": "local", "path": str(tmp_path / "plain")},
                *locations,
            ],
        }
    )


def segment(tmp_path: Path, number: int = 0) -> Path:
    path = tmp_path / "pg_wal" / next_segment(FIRST, number)
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(os.urandom(48 * 1024) + bytes(16 * 1024))
    return path


def blocked(tmp_path: Path, name: str) -> dict:
    """A local location that fails at once: its directory's parent is a file."""
    (tmp_path / "not-a-dir").write_text("")
    return {"name": name, "type": "local", "path": str(tmp_path / "not-a-dir" / name)}


def timed_push(cfg: BackupConfig, path: Path) -> tuple[dict, float]:
    start = time.monotonic()
    result = wal.push(cfg, str(path))
    return result, time.monotonic() - start


def system_python_has_boto3() -> bool:
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import boto3"], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.parametrize("python", [SYSTEM_PYTHON, sys.executable], ids=["system", "venv"])
def test_push_worker_threads_import_nothing(tmp_path, s3_stub, refused, python) -> None:
    if python == SYSTEM_PYTHON and not system_python_has_boto3():
        pytest.skip("no boto3 under the system Python (make system-deps installs it)")
    sealed = {"name": "sealed", "type": "local", "path": str(tmp_path / "sealed"), "encrypt": True}
    cfg = config(tmp_path, sealed, s3("s3", s3_stub), s3("down", refused, required=False))
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    run = subprocess.run(
        [python, "-c", AUDIT, str(REPO / "collections"), str(tmp_path / "config.json")]
        + [str(segment(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    audit = {}
    for line in run.stdout.splitlines():
        audit.update(json.loads(line))
    assert audit["rc"] == 0, run.stderr
    assert audit["imports"] == [], audit["imports"][:20]
    assert "plain=stored sealed=stored s3=stored down=pending" in run.stderr


def test_black_holed_optional_location_costs_its_deadline_then_is_skipped(
    tmp_path, black_hole, monkeypatch
) -> None:
    monkeypatch.setattr(wal, "OPTIONAL_DEADLINE", 1.0)
    cfg = config(tmp_path, s3("hole", black_hole, required=False))
    first, took = timed_push(cfg, segment(tmp_path, 0))
    assert first["locations"] == {"plain": "stored", "hole": "pending"}
    assert 1.0 <= took < 1.0 + SLACK, took
    assert "no answer within 1s" in first["errors"]["hole"]
    # Marked down: the next push does not knock, and keeps a pending copy of its own. Not
    # knocking is no new failure: the hold still runs from the last real attempt.
    marker = tmp_path / "spool" / "pending" / "hole" / ".down"
    marked = marker.stat().st_mtime_ns
    second, took = timed_push(cfg, segment(tmp_path, 1))
    assert second["locations"] == {"plain": "stored", "hole": "pending"}
    assert took < SLACK, took
    assert marker.stat().st_mtime_ns == marked
    # Tried again after the hold: the pending copies wait for the hole to answer, and the
    # required location's copy does not wait for them.
    wal._mark_down(cfg, "hole", up=True)
    third, took = timed_push(cfg, segment(tmp_path, 2))
    assert third["locations"] == {"plain": "stored", "hole": "pending"}
    assert took < 1.0 + SLACK, took
    assert wal.pending_copies(cfg) == {"hole": [next_segment(FIRST, n) for n in range(3)]}


def test_black_holed_required_location_fails_the_push_at_its_deadline(
    tmp_path, black_hole, monkeypatch
) -> None:
    monkeypatch.setattr(wal, "REQUIRED_DEADLINE", 1.0)
    cfg = config(tmp_path, s3("hole", black_hole))
    start = time.monotonic()
    with pytest.raises(BackupError, match="no answer within 1s"):
        wal.push(cfg, str(segment(tmp_path)))
    assert time.monotonic() - start < 1.0 + SLACK
    assert wal.pending_copies(cfg) == {}


def test_spool_that_cannot_take_a_pending_copy_fails_the_push(tmp_path, monkeypatch) -> None:
    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(shutil, "copyfile", disk_full)
    cfg = config(tmp_path, blocked(tmp_path, "spare") | {"required": False})
    with pytest.raises(BackupError, match="spare: .*pending copy: spool .* No space left"):
        wal.push(cfg, str(segment(tmp_path)))
    assert wal.pending_copies(cfg) == {}


def test_pending_copy_for_a_location_never_reached_is_encrypted_when_copied(tmp_path) -> None:
    """Down from the first push on, its key was never read: the spool keeps the unencrypted
    form and the copy is encrypted with the location's key once it answers."""
    spare = blocked(tmp_path, "spare") | {"required": False, "encrypt": True}
    cfg = config(tmp_path, spare)
    first = segment(tmp_path, 0)
    source_sha = sha256_file(first)
    assert wal.push(cfg, str(first))["locations"]["spare"] == "pending"
    (tmp_path / "not-a-dir").unlink()
    (tmp_path / "not-a-dir").mkdir()
    wal._mark_down(cfg, "spare", up=True)
    result = wal.push(cfg, str(segment(tmp_path, 1)))
    assert result["locations"]["spare"] == "stored"
    assert result["backfill"]["spare"]["copied"] == [first.name]
    assert wal.pending_copies(cfg) == {}
    location = store.open_locations(cfg)[1]
    store.ensure_repo(location, cfg)
    key = wal.wal_key(first.name, "lz4", True)
    out = tmp_path / "decoded"
    decode_file(location._path(key), out, compression="lz4", key=location.key)
    assert sha256_file(out) == source_sha


def test_watchdog_ends_a_stuck_push_with_exit_status_1(tmp_path, black_hole) -> None:
    cfg = config(tmp_path, s3("hole", black_hole))
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    launcher = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.tool import "
        "tool_main; sys.exit(tool_main(sys.argv[2:]))"
    )
    start = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-c", launcher, str(REPO / "collections")]
        + ["--config", str(tmp_path / "config.json"), "push", str(segment(tmp_path))],
        capture_output=True,
        text=True,
        env={**os.environ, "KG_WAL_WATCHDOG": "1"},
        timeout=60,
        check=False,
    )
    assert run.returncode == 1, (run.returncode, run.stderr)  # not a signal's status
    assert time.monotonic() - start < 10
    # Every thread's stack, so the server log shows where it stuck.
    assert "watchdog: no result after 1 s" in run.stderr, run.stderr
    # ("Thread 0x" for the push's workers; only "Current thread 0x" when the watchdog fires
    # while the push is still importing its S3 client, before any worker started.)
    assert "thread 0x" in run.stderr.lower() and "exit status 1" in run.stderr, run.stderr
    # The killed push recorded nothing itself: the parent records the failure for the alerts.
    prom = (tmp_path / "spool" / "metrics" / f"knowngood_backup_{cfg.cluster}.prom").read_text()
    assert f'knowngood_backup_job_ok{{cluster="{cfg.cluster}",kind="wal_push"}} 0' in prom, prom


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGKILL, signal.SIGABRT])
def test_a_push_that_dies_by_a_signal_is_still_exit_status_1(sig, capfd) -> None:
    """The shell would report 128+N: PostgreSQL restarts the archiver uncounted, or aborts
    recovery. The supervising parent turns any death into status 1."""
    child = os.fork()
    if child == 0:  # pragma: no cover - the child; never back into pytest
        try:
            if sig != signal.SIGKILL:
                signal.signal(sig, signal.SIG_DFL)  # pytest's faulthandler has SIGSEGV
            os.kill(os.getpid(), sig)
        finally:
            os._exit(0)
    assert wal_tool._supervise(child, "push", 30) == 1
    assert f"ended by signal {int(sig)}" in capfd.readouterr().err


def test_a_push_that_finishes_keeps_its_exit_status() -> None:
    for code in (0, 1, 3):
        child = os.fork()
        if child == 0:  # pragma: no cover - the child
            os._exit(code)
        assert wal_tool._supervise(child, "push", 30) == code


@pytest.mark.parametrize(
    ("env", "limit"),
    [({}, 60), ({"KG_WAL_WATCHDOG": "5"}, 5), ({"KG_WAL_WATCHDOG": "3600"}, 60)]
    + [({"KG_WAL_WATCHDOG": bad}, 60) for bad in ("0", "-1", "soon", "nan")],
)
def test_watchdog_limit_can_only_be_shortened(env, limit) -> None:
    assert wal_tool.watchdog_limit("push", env) == limit
