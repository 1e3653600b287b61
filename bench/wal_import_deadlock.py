"""Reproduce the `kg-wal push` hang: many fresh pushes, the way PostgreSQL starts them.

    .venv/bin/python bench/wal_import_deadlock.py [--pushes 600] [--jobs 2] [--timeout 20]

Runs as root. Installs the WAL tool from this tree into a scratch directory (system Python,
run as `postgres`, as archive_command is) with three locations: a plain local directory, an
encrypting local directory and an encrypting S3 location. Every push is a fresh process with a
new segment name, so it imports lz4, cryptography and botocore for the first time: the hang
was two worker threads' first imports deadlocking on the import locks, before any request.
So the S3 endpoint may be a closed port (the default): its repo.json is seeded into the spool's
cache as if it had answered once (a lab's steady state; both encrypting workers then derive
the key and start their imports at the same moment), and the spool's pending copies and down
markers are cleared before each push (a push with pending copies imported botocore on the
main thread first, backfilling them).

Each push runs the tool's Python half (kg-wal.py; the shell half only adds restore_command's
fast path) under a faulthandler timer of --timeout seconds: a push still running then is a
hang, and faulthandler prints every thread's stack and exits. The tool's own watchdog, where
it has one, is given the same limit (KG_WAL_WATCHDOG). The first hang's stacks are printed
after the counts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "collections"))
sys.path.insert(0, str(REPO / "tests"))

from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import (  # noqa: E402
    install as wal_tool,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (  # noqa: E402
    next_segment,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.config import (  # noqa: E402
    BackupConfig,
)
from pgcluster import make_dirs_for_postgres, postgres_ids  # noqa: E402

PYTHON = "/usr/bin/python3"  # what install_tool gives PostgreSQL
# faulthandler's timer, then the tool's script as its launcher would run it.
WRAPPER = (
    "import faulthandler, runpy, sys; "
    "faulthandler.dump_traceback_later(float(sys.argv[1]), exit=True); "
    "sys.argv = sys.argv[2:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)
FIRST = "000000010000000100000000"
SEGMENT = 16 * 1024 * 1024
# faulthandler's header when its watchdog (dump_traceback_later) fired.
WATCHDOG_MARK = "Timeout ("


def config(base: Path, spool: Path, endpoint: str) -> dict:
    return {
        "cluster": "deadlock",
        "compression": "lz4",
        "encryption_key": "deadlock-repro-passphrase",
        "spool_dir": str(spool),
        "retries": {"attempts": 1, "base_delay": 0.1, "max_delay": 0.2},
        "locations": [
            {"name": "plain", "type": "local", "path": str(base / "plain")},
            {"name": "sealed", "type": "local", "path": str(base / "sealed"), "encrypt": True},
            {
                "name": "s3",
                "type": "s3",
                "endpoint_url": endpoint,
                "region": "us-east-1",
                "bucket": "deadlock",
                "access_key": "repro",
                "secret_key": "repro-secret",
                "encrypt": True,
                "required": False,
            },
        ],
    }


def push_once(tool: str, cfg_file: Path, segment: Path, timeout: float) -> dict:
    uid, gid = postgres_ids()
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/tmp",
        "LC_ALL": "C.UTF-8",
        "KG_WAL_WATCHDOG": str(timeout),
    }
    argv = [PYTHON, "-c", WRAPPER, str(timeout), tool + ".py", "--config", str(cfg_file)]
    start = time.monotonic()
    try:
        run = subprocess.run(
            [*argv, "push", str(segment)],
            user=uid,
            group=gid,
            extra_groups=[],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout + 30,
            check=False,
        )
        rc, err = run.returncode, run.stderr
    except subprocess.TimeoutExpired:
        rc, err = -9, "still running after the faulthandler timer: killed"
    took = time.monotonic() - start
    return {"rc": rc, "seconds": took, "hung": rc == -9 or WATCHDOG_MARK in err, "stderr": err}


def job(number: int, args, base: Path, tool: str, results: list, lock: threading.Lock) -> None:
    spool = base / f"spool-{number}"
    cfg_file = base / f"config-{number}.json"
    data = config(base, spool, args.endpoint)
    cfg_file.write_text(json.dumps(data))
    uid, gid = postgres_ids()
    os.chown(cfg_file, uid, gid)
    os.chmod(cfg_file, 0o600)
    workdir = make_dirs_for_postgres(base / f"pg_wal-{number}")
    make_dirs_for_postgres(spool, 0o700)
    for i in range(number, args.pushes, args.jobs):
        shutil.rmtree(spool / "pending", ignore_errors=True)
        segment = workdir / next_segment(FIRST, i)
        with open(segment, "wb") as handle:
            handle.write(os.urandom(64 * 1024))
            handle.truncate(SEGMENT)
        os.chown(segment, uid, gid)
        outcome = push_once(tool, cfg_file, segment, args.timeout)
        segment.unlink()
        cache = spool / "repo"
        if not (cache / "repo-s3.json").exists() and (cache / "repo-sealed.json").exists():
            # Same cluster, same default salt: the S3 repository would say the same.
            shutil.copy(cache / "repo-sealed.json", cache / "repo-s3.json")
            os.chown(cache / "repo-s3.json", uid, gid)
        with lock:
            results.append(outcome)
            if outcome["hung"]:
                print(f"hang at push {len(results)} ({outcome['seconds']:.1f}s)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pushes", type=int, default=600)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--endpoint", default="http://127.0.0.1:9", help="S3 endpoint URL")
    parser.add_argument("--keep", action="store_true", help="leave the scratch directory")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root: the pushes run as postgres", file=sys.stderr)
        return 2
    base = make_dirs_for_postgres(Path(tempfile.mkdtemp(prefix="kg-wal-deadlock-")))
    for name in ("plain", "sealed"):
        make_dirs_for_postgres(base / name)
    cfg = BackupConfig.from_dict(config(base, base / "spool", args.endpoint))
    tool = wal_tool.install_tool(cfg, str(base / "tool"), python=PYTHON)["tool"]
    results: list[dict] = []
    lock = threading.Lock()
    started = time.monotonic()
    threads = [
        threading.Thread(target=job, args=(n, args, base, tool, results, lock))
        for n in range(args.jobs)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    hangs = [r for r in results if r["hung"]]
    failed = [r for r in results if r["rc"] != 0 and not r["hung"]]
    times = sorted(r["seconds"] for r in results)
    print(
        f"{len(results)} pushes in {time.monotonic() - started:.0f}s: {len(hangs)} hung, "
        f"{len(failed)} failed otherwise; push time median {statistics.median(times):.2f}s, "
        f"p95 {times[int(len(times) * 0.95) - 1]:.2f}s, max {times[-1]:.2f}s"
    )
    if failed:
        print("first failure:\n" + failed[0]["stderr"])
    if hangs:
        print("stacks of the first hang:\n" + hangs[0]["stderr"])
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if hangs else 0


if __name__ == "__main__":
    sys.exit(main())
