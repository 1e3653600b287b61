"""Where a native full backup's time goes: phases, CPU per process, per-byte costs.

On a cluster of its own (the backup bench's dataset; kept between runs with --reuse), as root:

    .venv/bin/python bench/profile_backup.py --size-gb 2.2 --port 44010 --reuse

measures, one after the other, on the same data:
  stream   pg_basebackup -Ft -X none -D - read by Python in CHUNK pieces and thrown away
           (the walsender and pg_basebackup's share: the floor of a streamed full backup);
  native   the native engine's full backup (lz4, one local location, parallel 2) with the CPU
           of this process (user/sys), of pg_basebackup and of the postgres processes, and a
           cProfile of every thread (top functions by own time);
  pgbackrest  pgbackrest backup --type=full (lz4, process-max 2) with its CPU;
  per-byte single-thread throughput of what the engine does to each byte (read, sha256,
           sha1, lz4 -1, write) on the cluster's largest relation file.
Prints a table and writes bench/results/profile-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import json
import os
import pstats
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_backup as bb  # noqa: E402
from bench_backup import PG_BIN, PgCluster, make_dirs_for_postgres, pgbr  # noqa: E402

CHUNK = 1024 * 1024


def postgres_cpu() -> float:
    """CPU seconds (user + sys) of every process owned by the postgres user, with their
    reaped children's (a walsender has exited, into the postmaster's, when it is read)."""
    import pwd

    uid = pwd.getpwnam("postgres").pw_uid
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / tick


class Meter:
    """Wall and CPU of one step: this process, its children, the postgres processes."""

    def __enter__(self) -> Meter:
        subprocess.run(["sync"], check=False)
        self.self0 = resource.getrusage(resource.RUSAGE_SELF)
        self.kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.pg0 = postgres_cpu()
        self.t0 = time.monotonic()
        self.load0 = os.getloadavg()[0]
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.monotonic() - self.t0
        s = resource.getrusage(resource.RUSAGE_SELF)
        k = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.result = {
            "wall_s": round(self.wall, 2),
            "self_user_s": round(s.ru_utime - self.self0.ru_utime, 2),
            "self_sys_s": round(s.ru_stime - self.self0.ru_stime, 2),
            "children_cpu_s": round(
                k.ru_utime - self.kids0.ru_utime + k.ru_stime - self.kids0.ru_stime, 2
            ),
            "postgres_cpu_s": round(postgres_cpu() - self.pg0, 2),
            "load_start": round(self.load0, 2),
            "load_end": round(os.getloadavg()[0], 2),
        }


def stream_only(cluster: PgCluster, pipe_size: int = 0, manifest: bool = True) -> dict:
    argv = [str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(cluster.port),
            "-U", "postgres", "-D", "-", "-Ft", "-X", "none", "--checkpoint=fast",
            "--no-password"]  # fmt: skip
    argv.append("--manifest-checksums=CRC32C" if manifest else "--no-manifest")
    with Meter() as m:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        if pipe_size:
            import fcntl

            fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, pipe_size)
        total = 0
        while block := proc.stdout.read(CHUNK):
            total += len(block)
        proc.wait()
    return {**m.result, "bytes": total}


def profiled_threads():
    """Profile every thread started from now on (and this one); returns (stop, stats)."""
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()
    original = threading.Thread.run

    def run(self):
        prof = cProfile.Profile()
        with lock:
            profiles.append(prof)
        prof.enable()
        try:
            original(self)
        finally:
            prof.disable()

    threading.Thread.run = run
    main = cProfile.Profile()
    profiles.append(main)
    main.enable()

    def stop() -> pstats.Stats:
        main.disable()
        threading.Thread.run = original
        out = io.StringIO()
        stats = pstats.Stats(profiles[0], stream=out)
        for prof in profiles[1:]:
            with __import__("contextlib").suppress(TypeError):
                stats.add(prof)
        return stats, out

    return stop


def native_full(cluster: PgCluster, root: Path, profile: bool) -> dict:
    backup_native, _ = bb.native_modules()
    n_root = root / "native"
    shutil.rmtree(n_root, ignore_errors=True)
    cfg = bb.native_config(cluster, make_dirs_for_postgres(n_root))
    stop = profiled_threads() if profile else None
    marks = []
    t0 = time.monotonic()

    def mark(message, *_args, **_kwargs):
        marks.append(f"{time.monotonic() - t0:6.2f}s {message}")

    with Meter() as m:
        entry = backup_native.take_backup(cfg, "full", require_archiving=False, progress=mark)
    top = []
    if stop:
        stats, out = stop()
        stats.sort_stats("tottime").print_stats(18)
        top = out.getvalue().splitlines()
    return {**m.result, "stored_bytes": entry.get("stored_size"), "files": entry.get("file_count"),
            "phases": marks, "profile_top": top}  # fmt: skip


def pgbackrest_full(cluster: PgCluster, root: Path) -> dict:
    br_root = root / "pgbackrest"
    shutil.rmtree(br_root, ignore_errors=True)
    cfg = bb.pgbackrest_config(cluster, make_dirs_for_postgres(br_root))
    conf = pgbr.configure(cfg)
    cluster.configure(archive_command=conf["archive_command"])
    cluster.sql("SELECT pg_reload_conf()")
    pgbr.stanza_create(cfg)
    with Meter() as m:
        entry = pgbr.take_backup(cfg, "full")
    return {**m.result, "stored_bytes": entry.get("stored_size")}


def per_byte(path: Path) -> dict:
    import lz4.frame

    data = path.read_bytes()[: 256 * CHUNK]
    chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
    mb = len(data) / 1e6
    out = {}

    def rate(name, fn):
        t0 = time.perf_counter()
        fn()
        out[name] = round(mb / (time.perf_counter() - t0))

    rate("sha256_MBps", lambda: [h.update(c) for h in [hashlib.sha256()] for c in chunks])
    rate("sha1_MBps", lambda: [h.update(c) for h in [hashlib.sha1()] for c in chunks])
    comp = lz4.frame.LZ4FrameCompressor(
        compression_level=1, block_size=lz4.frame.BLOCKSIZE_MAX4MB, auto_flush=True
    )
    comp.begin()
    rate("lz4_MBps", lambda: [comp.compress(c) for c in chunks])
    with open(path, "rb") as fh:
        rate("read_MBps", lambda: [fh.read(CHUNK) for _ in chunks])
    tmp = path.parent / "profile-write.tmp"
    with open(tmp, "wb") as fh:
        rate("write_MBps", lambda: [fh.write(c) for c in chunks])
    tmp.unlink()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=2.2)
    parser.add_argument("--port", type=int, default=21810)
    parser.add_argument("--root", default="/var/tmp/knowngood-profile-backup")
    parser.add_argument("--reuse", action="store_true", help="keep the cluster for the next run")
    parser.add_argument("--only", default="stream,native,pgbackrest,bytes")
    parser.add_argument("--no-cprofile", action="store_true")
    args = parser.parse_args()
    root = Path(args.root)
    cluster = PgCluster(root / "pg", port=args.port, name="kgprof")
    marker = root / "filled.json"
    if args.reuse and marker.exists():
        if not (cluster.data_dir / "postmaster.pid").exists():
            cluster.start()
        dataset = json.loads(marker.read_text())
    else:
        shutil.rmtree(root, ignore_errors=True)
        make_dirs_for_postgres(root)
        bb.init_cluster(cluster).start()
        dataset = bb.fill(cluster, args.size_gb)
        marker.write_text(json.dumps(dataset))
    results = {"dataset": dataset, "loadavg_start": os.getloadavg()}
    only = set(args.only.split(","))
    try:
        if "stream" in only:
            results["stream"] = stream_only(cluster)
            print("stream (64 KiB pipe)", results["stream"], flush=True)
            results["stream_1m_pipe"] = stream_only(cluster, CHUNK)
            print("stream (1 MiB pipe)", results["stream_1m_pipe"], flush=True)
            results["stream_no_manifest"] = stream_only(cluster, CHUNK, manifest=False)
            print("stream (1 MiB pipe, --no-manifest)", results["stream_no_manifest"], flush=True)
        if "native" in only:
            results["native"] = native_full(cluster, root, not args.no_cprofile)
            print("native", {k: v for k, v in results["native"].items() if k != "profile_top"})
            print("\n".join(results["native"]["profile_top"]), flush=True)
        if "pgbackrest" in only:
            results["pgbackrest"] = pgbackrest_full(cluster, root)
            print("pgbackrest", results["pgbackrest"], flush=True)
        if "bytes" in only:
            rel = cluster.scalar("SELECT pg_relation_filepath('orders_01')")
            results["per_byte"] = per_byte(cluster.data_dir / rel)
            print("per byte (MB/s, one thread)", results["per_byte"], flush=True)
    finally:
        results["loadavg_end"] = os.getloadavg()
        if not args.reuse:
            cluster.stop(remove=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = bb.RESULTS_DIR / f"profile-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"load {results['loadavg_start'][0]:.2f} -> {results['loadavg_end'][0]:.2f}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
