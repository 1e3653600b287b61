"""Backup benchmark: the native engine and our WAL tool beside pgBackRest, plain cp and raw copies.

In one run, on a PostgreSQL 15 cluster it initdb's itself (data under /var/tmp) and fills with a
generated dataset of poorly compressible rows (uuids, md5 text, numbers, timestamps: lz4 gets
about 1.5-2x, not 10x), under a steady stream of small writes:
  (a) full backup: native (one local location, lz4) vs pgBackRest full (lz4, process-max 2)
      vs the floor, a raw copy of the data directory (tar | tar, without pg_wal);
  (b) incremental after changing 5% of the data: native incremental vs pgBackRest incr;
  (c) restore of that incremental: native vs pgBackRest vs copying the raw copy back;
  (d) WAL replay: >= 1 GB of WAL archived both through our WAL tool and as plain files, then
      the same restored base recovered with restore_command = our tool's fetch (prefetch) vs
      `cp <dir>/%f %p`, from start until "archive recovery complete".

    .venv/bin/python bench/bench_backup.py                 # 2.2 GB dataset, 1 GB of WAL
    .venv/bin/python bench/bench_backup.py --quick         # 0.3 GB, 0.3 GB of WAL

Writes a table to stdout, bench/results/backup-<timestamp>.json and .md, and an SVG bar chart
(docs/backup-bench.svg for full-size runs, bench/results/backup-quick.svg for --quick).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "collections"))
sys.path.insert(0, str(REPO / "tests"))

from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import (  # noqa: E402
    pgbackrest as pgbr,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (  # noqa: E402
    parse_lsn,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.config import (  # noqa: E402
    BackupConfig,
)

# One lock and one error type for every benchmark (bench/ is on sys.path when run as a script).
from bench_rollback import BenchError, only_bench_running, port_in_use  # noqa: E402, F401
from pgcluster import PG_BIN, PgCluster, as_postgres, make_dirs_for_postgres  # noqa: E402

RESULTS_DIR = REPO / "bench" / "results"
DOCS_SVG = REPO / "docs" / "backup-bench.svg"
GOAL_RATIO = 1.2  # the default goal: ours within 1.2x of the anchor
# Issue 16's goals: backups at most pgBackRest's time, restores at most 0.6x of it, WAL replay
# through our restore_command at most `cp`'s time.
GOALS = {"full backup": 1.0, "restore (full + incr)": 0.6, "WAL replay": 1.0}
TABLES = 20  # the 5% change rewrites one of twenty equal tables
STARTED = time.monotonic()
GB = 1024**3


def progress(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:7.1f}s] {message}", flush=True)


def native_modules():
    """(backup_native, backup_tool) when the other engine's files are in the tree, else None."""
    try:
        from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import (
            install as backup_tool,
        )
        from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import (
            native as backup_native,
        )
    except ImportError as exc:
        progress(f"native engine not available ({exc}): its rows are skipped")
        return None
    return backup_native, backup_tool


# ------------------------------------------------------------------ helpers


def du(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


@contextlib.contextmanager
def ticker(what: str, watch: Path | None = None, every: float = 10.0):
    """Print a line every `every` seconds while a long step runs (and how much it wrote)."""
    stop = threading.Event()
    t0 = time.monotonic()

    def tick() -> None:
        while not stop.wait(every):
            extra = f", {du(watch) / 1e6:,.0f} MB in {watch.name}" if watch else ""
            progress(f"  ... {what}: {time.monotonic() - t0:.0f}s{extra}")

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def timed(what: str, fn, watch: Path | None = None):
    """(seconds, result) of fn(), with progress; page cache dirt flushed first."""
    subprocess.run(["sync"], check=False)
    progress(f"{what} ...")
    with ticker(what, watch):
        t0 = time.monotonic()
        result = fn()
        seconds = time.monotonic() - t0
    progress(f"{what}: {seconds:.1f}s")
    return seconds, result


def sh(argv: list[str], **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, **kw)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(map(str, argv))} failed: {done.stderr.strip()[-800:]}")
    return done


def copy_tree(src: Path, dst: Path) -> None:
    """The floor: a raw copy (tar | tar, owners and modes kept) without pg_wal's segments,
    which no backup copies either."""
    dst.mkdir(mode=0o700)
    shutil.copystat(src, dst)
    os.chown(dst, src.stat().st_uid, src.stat().st_gid)
    # A live data directory changes under tar (exit 1, "file changed as we read it"): fine for
    # a floor, as it is for pg_basebackup and pgBackRest, which WAL replay makes consistent.
    pipe = (
        f"tar -C '{src}' --warning=no-file-changed --warning=no-file-removed "
        f"--exclude='./pg_wal/*' -cf - . | tar -C '{dst}' -xpf -; "
        's=("${PIPESTATUS[@]}"); [ "${s[0]}" -le 1 ] && [ "${s[1]}" -eq 0 ]'
    )
    sh(["bash", "-c", pipe])


# ------------------------------------------------------------------ the cluster and its data


DATASET_SQL = """
INSERT INTO {table} (customer_id, sku, status, amount, created_at, note, token)
SELECT (random() * 100000)::int,
       'SKU-' || lpad((random() * 5000)::int::text, 6, '0'),
       (ARRAY['new', 'paid', 'packed', 'shipped', 'delivered', 'returned'])[1 + mod(g, 6)],
       round((random() * 1000)::numeric, 2),
       now() - random() * interval '365 days',
       (ARRAY['Oak', 'Elm', 'Main', 'High', 'Mill', 'Park', 'Lake', 'Hill'])
         [1 + (random() * 7)::int] || ' Street ' || (random() * 999)::int || ', '
         || (ARRAY['Berlin', 'Paris', 'Lyon', 'Madrid', 'Porto', 'Oslo', 'Riga', 'Turin'])
         [1 + (random() * 7)::int] || ' ref ' || substr(md5(random()::text), 1, 16),
       gen_random_uuid()
FROM generate_series(1, {rows}) g
"""
TABLE_DDL = """
CREATE TABLE {table} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, customer_id int,
  sku text, status text, amount numeric(10, 2), created_at timestamptz, note text, token uuid)
"""
ROW_BYTES = 164  # heap + primary key per row, measured on PostgreSQL 15


def fill(cluster: PgCluster, size_gb: float) -> dict:
    """TABLES equal tables of about size_gb in total, two loaders at a time."""
    rows_per_table = int(size_gb * GB / ROW_BYTES / TABLES)
    batch = 200_000
    tables = [f"orders_{i:02d}" for i in range(TABLES)]
    for table in tables:
        cluster.sql(TABLE_DDL.format(table=table))
    todo = list(tables)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def loader() -> None:
        try:
            with cluster.connect() as conn:
                while True:
                    with lock:
                        if not todo:
                            return
                        table = todo.pop(0)
                    left = rows_per_table
                    while left > 0:
                        conn.execute(DATASET_SQL.format(table=table, rows=min(batch, left)))
                        left -= batch
                    progress(f"  loaded {table} ({TABLES - len(todo)}/{TABLES} started)")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [threading.Thread(target=loader) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise BenchError(f"loading the dataset failed: {errors[0]}")
    cluster.sql("VACUUM ANALYZE")
    cluster.sql("CHECKPOINT")
    size = cluster.scalar("SELECT pg_database_size('postgres')")
    return {"tables": TABLES, "rows": rows_per_table * TABLES, "db_bytes": size}


class Stream:
    """A steady stream of small writes (a few hundred KB/s of WAL) while backups run."""

    def __init__(self, cluster: PgCluster, per_second: float = 20, rows: int = 50) -> None:
        self.cluster = cluster
        self.interval = 1 / per_second
        self.rows = rows
        self.stop_event = threading.Event()
        self.commits = 0
        self.error: str | None = None
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        try:
            with self.cluster.connect() as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS stream (at timestamptz, note text)")
                while not self.stop_event.wait(self.interval):
                    conn.execute(
                        "INSERT INTO stream SELECT now(), md5(random()::text) "
                        "FROM generate_series(1, %s)",
                        (self.rows,),
                    )
                    self.commits += 1
        except Exception as exc:  # noqa: BLE001 - the bench reports it
            self.error = str(exc)

    def __enter__(self) -> Stream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)


def wait_archived(cluster: PgCluster, timeout: float = 900) -> str:
    name = cluster.scalar("SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last, failed = cluster.sql(
            "SELECT last_archived_wal, last_failed_wal FROM pg_stat_archiver"
        )[0]
        if last and last >= name:
            return name
        time.sleep(0.5)
    raise BenchError(f"WAL {name} not archived in {timeout}s (last failed: {failed})")


def generate_wal(cluster: PgCluster, since_lsn: str, wal_bytes: int) -> int:
    """Write until at least wal_bytes of WAL lie past since_lsn; returns the bytes written."""
    cluster.sql("CREATE TABLE IF NOT EXISTS walgen (id bigint, note text, token uuid)")
    start = parse_lsn(since_lsn)
    while True:
        now = parse_lsn(cluster.scalar("SELECT pg_current_wal_lsn()::text"))
        if now - start >= wal_bytes:
            return now - start
        progress(f"  WAL since the base: {(now - start) / GB:.2f} GB of {wal_bytes / GB:.2f}")
        cluster.sql(
            "INSERT INTO walgen SELECT g, md5(random()::text) || md5(random()::text), "
            "gen_random_uuid() FROM generate_series(1, 400000) g"
        )
        cluster.sql("DELETE FROM walgen WHERE mod(id, 3) = 0")


# ------------------------------------------------------------------ replay


def replay(root: Path, base: Path, port: int, restore_command: str, name: str) -> dict:
    """Start a copy of `base` recovering through restore_command; seconds until recovery ends."""
    data = root / name
    if data.exists():
        shutil.rmtree(data)
    copy_tree(base, data)
    run_dir = make_dirs_for_postgres(root / f"{name}-run")
    log = root / f"{name}.log"
    with (data / "postgresql.auto.conf").open("a") as conf:
        conf.write(
            f"\nrestore_command = '{restore_command.replace(chr(39), chr(39) * 2)}'\n"
            f"archive_mode = 'off'\nport = {port}\nunix_socket_directories = '{run_dir}'\n"
            "hot_standby = 'off'\nlogging_collector = 'off'\n"
        )
    (data / "recovery.signal").touch()
    os.chown(data / "recovery.signal", *pg_ids())
    subprocess.run(["sync"], check=False)
    progress(f"replay with {name}: starting ({restore_command})")
    t0 = time.monotonic()
    as_postgres([PG_BIN / "pg_ctl", "start", "-D", data, "-W", "-l", log])
    deadline = t0 + 3600
    last_note = t0
    try:
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace") if log.exists() else ""
            if "archive recovery complete" in text:
                seconds = time.monotonic() - t0
                break
            if "FATAL" in text and "the database system is starting up" not in text:
                raise BenchError(f"replay {name} failed:\n{text[-2000:]}")
            if time.monotonic() - last_note > 10:
                restored = text.count("restored log file")
                progress(f"  ... replay {name}: {time.monotonic() - t0:.0f}s, {restored} logged")
                last_note = time.monotonic()
            time.sleep(0.05)
        else:
            raise BenchError(f"replay {name} did not finish within an hour")
    finally:
        as_postgres([PG_BIN / "pg_ctl", "stop", "-D", data, "-m", "immediate", "-w"], check=False)
    text = log.read_text(errors="replace")
    progress(f"replay with {name}: {seconds:.1f}s")
    result = {"seconds": seconds, "log_tail": text.splitlines()[-5:]}
    shutil.rmtree(data, ignore_errors=True)
    return result


def pg_ids() -> tuple[int, int]:
    import pwd

    pw = pwd.getpwnam("postgres")
    return pw.pw_uid, pw.pw_gid


# ------------------------------------------------------------------ the run


def init_cluster(cluster: PgCluster) -> PgCluster:
    """initdb with the bench's settings (archiving on, its command set later)."""
    return cluster.init(
        shared_buffers="512MB",
        max_wal_size="8GB",
        checkpoint_timeout="30min",
        archive_mode="on",
        archive_command="/bin/true",
        synchronous_commit="off",
    )


def pgbackrest_config(cluster: PgCluster, br_root: Path) -> BackupConfig:
    """pgBackRest with lz4 and process-max 2, one posix repository under br_root."""
    return BackupConfig.from_dict(
        {
            "cluster": cluster.name,
            "engine": "pgbackrest",
            "pg": cluster.backend_config(),
            "compression": "lz4",
            "parallel": 2,
            "spool_dir": str(br_root / "spool"),
            "catalog_dir": str(br_root / "catalog"),
            "locations": [{"name": "unused", "type": "local", "path": str(br_root / "unused")}],
            "pgbackrest_stanza": cluster.name,
            "pgbackrest_config": str(br_root / "pgbackrest.conf"),
            "pgbackrest_repos": [{"type": "posix", "path": str(br_root / "repo")}],
        }
    )


def native_config(cluster: PgCluster, n_root: Path) -> BackupConfig:
    """The native engine with the same compression and parallelism, one local location."""
    for sub in ("store", "spool", "catalog", "tool"):
        make_dirs_for_postgres(n_root / sub)
    return BackupConfig.from_dict(
        {
            "cluster": cluster.name,
            "engine": "native",
            "pg": cluster.backend_config(),
            "compression": "lz4",
            "parallel": 2,
            "spool_dir": str(n_root / "spool"),
            "catalog_dir": str(n_root / "catalog"),
            "wal_prefetch": 8,
            "locations": [{"name": "local", "type": "local", "path": str(n_root / "store")}],
        }
    )


def run_bench(args: argparse.Namespace) -> dict:
    root = Path(args.root)
    if root.exists():
        progress(f"removing {root} left by an earlier run")
        stop_leftovers(root)
        shutil.rmtree(root)
    make_dirs_for_postgres(root)
    for port in (args.port, args.port + 1):
        if port_in_use(port):
            raise BenchError(f"port {port} is in use: pick another --port")
    native = None if args.no_native else native_modules()
    results: dict = {"rows": [], "sizes": {}}

    cluster = init_cluster(PgCluster(root / "pg", port=args.port, name="kgbench"))
    br_root = make_dirs_for_postgres(root / "pgbackrest")
    br_cfg = pgbackrest_config(cluster, br_root)
    br_conf = pgbr.configure(br_cfg)
    wal_dir = make_dirs_for_postgres(root / "wal-plain")
    commands = [br_conf["archive_command"]]
    native_cfg = tool = None
    if native:
        backup_native, backup_tool = native
        n_root = make_dirs_for_postgres(root / "native")
        native_cfg = native_config(cluster, n_root)
        tool = backup_tool.install_tool(native_cfg, str(n_root / "tool"))
        commands.append(tool["archive_command"])
    commands.append(f"test -f {wal_dir}/%f || cp %p {wal_dir}/%f")
    archive_command = " && ".join(f"( {c} )" for c in commands)
    cluster.configure(archive_command=archive_command)
    cluster.start()
    pgbr.stanza_create(br_cfg)

    progress(f"loading {args.size_gb} GB into {TABLES} tables (two loaders)")
    t0 = time.monotonic()
    dataset = fill(cluster, args.size_gb)
    dataset["load_s"] = round(time.monotonic() - t0, 1)
    dataset["data_dir_bytes"] = du(cluster.data_dir)
    dataset["lz4_ratio_sample"] = lz4_sample_ratio(cluster)
    results["dataset"] = dataset
    progress(
        f"dataset: {dataset['db_bytes'] / GB:.2f} GB in the database, data directory "
        f"{dataset['data_dir_bytes'] / GB:.2f} GB, lz4 -1 ratio on a sample "
        f"{dataset['lz4_ratio_sample']:.2f}x, loaded in {dataset['load_s']:.0f}s"
    )
    wait_archived(cluster)

    with Stream(cluster) as stream:
        # (a) full backups
        rows = results["rows"]
        raw = root / "raw-copy"
        raw_s, _ = timed("floor: raw copy of the data directory (tar | tar)",
                         lambda: copy_tree(cluster.data_dir, raw), raw)  # fmt: skip
        br_full_s, br_full = timed(
            "pgBackRest full (lz4, process-max 2)",
            lambda: pgbr.take_backup(br_cfg, "full"),
            br_root / "repo",
        )
        results["sizes"]["pgbackrest_full"] = br_full["stored_size"]
        n_full_s = n_full = None
        if native:
            n_full_s, n_full = timed(
                "native full (lz4, one local location)",
                lambda: backup_native.take_backup(native_cfg, "full", progress=quiet),
                n_root / "store",
            )
            results["sizes"]["native_full"] = n_full.get("stored_size")
        rows.append(row("full backup", "native", n_full_s, "pgBackRest full", br_full_s,
                        goal=GOALS["full backup"]))  # fmt: skip
        rows.append(row("full backup (floor)", "native", n_full_s, "raw copy tar|tar", raw_s,
                        floor=True))  # fmt: skip
        rows.append(row("full backup (floor)", "pgBackRest", br_full_s, "raw copy tar|tar", raw_s,
                        floor=True))  # fmt: skip

        # (b) 5% of the data changes: one of twenty tables rewritten in place
        progress("changing 5% of the data (every row of orders_00 updated)")
        cluster.sql("UPDATE orders_00 SET note = md5(random()::text) || ' changed', "
                    "amount = amount + 1")  # fmt: skip
        cluster.sql("CHECKPOINT")
        wait_archived(cluster)
        br_incr_s, br_incr = timed(
            "pgBackRest incr", lambda: pgbr.take_backup(br_cfg, "incremental"), br_root / "repo"
        )
        results["sizes"]["pgbackrest_incr"] = br_incr["stored_size"]
        n_incr_s = n_incr = None
        if native:
            n_incr_s, n_incr = timed(
                "native incremental",
                lambda: backup_native.take_backup(native_cfg, "incremental", progress=quiet),
                n_root / "store",
            )
            results["sizes"]["native_incr"] = n_incr.get("stored_size")
        rows.append(row("incremental (5% changed)", "native", n_incr_s, "pgBackRest incr",
                        br_incr_s))  # fmt: skip
        stream_commits = stream.commits
    if stream.error:
        raise BenchError(f"the write stream failed: {stream.error}")

    # (c) restores of the incremental
    br_restored = root / "restore-pgbackrest"
    br_rest_s, _ = timed(
        "pgBackRest restore of the incremental",
        lambda: pgbr.restore(br_cfg, br_incr["label"], str(br_restored)),
        br_restored,
    )
    raw_back = root / "restore-raw"
    raw_back_s, _ = timed("floor: copy the raw copy back (tar | tar)",
                          lambda: copy_tree(raw, raw_back), raw_back)  # fmt: skip
    shutil.rmtree(raw_back)
    shutil.rmtree(raw)
    n_rest_s = None
    if native:
        n_restored = root / "restore-native"
        n_rest_s, _ = timed(
            "native restore of the incremental",
            lambda: backup_native.restore(
                native_cfg, n_incr["label"], str(n_restored), progress=quiet
            ),
            n_restored,
        )
        shutil.rmtree(n_restored, ignore_errors=True)
    rows.append(row("restore (full + incr)", "native", n_rest_s, "pgBackRest restore", br_rest_s,
                    goal=GOALS["restore (full + incr)"]))  # fmt: skip
    rows.append(row("restore (floor)", "pgBackRest", br_rest_s, "raw copy back tar|tar",
                    raw_back_s, floor=True))  # fmt: skip
    if native:
        rows.append(row("restore (floor)", "native", n_rest_s, "raw copy back tar|tar",
                        raw_back_s, floor=True))  # fmt: skip

    # (d) WAL replay past the pgBackRest-restored incremental
    progress(f"generating {args.wal_gb} GB of WAL past the incremental (archived three ways)")
    t0 = time.monotonic()
    wal_bytes = generate_wal(cluster, br_incr["stop_lsn"], int(args.wal_gb * GB))
    last = wait_archived(cluster)
    results["wal"] = {
        "bytes_past_base": wal_bytes,
        "generate_and_archive_s": round(time.monotonic() - t0, 1),
        "last_segment": last,
        "plain_dir_bytes": du(wal_dir),
    }
    if native:
        results["wal"]["tool_store_bytes"] = du(n_root / "store")
    progress(f"WAL past the base: {wal_bytes / GB:.2f} GB, archived up to {last}")
    cluster.stop()
    cp_command = f"cp {wal_dir}/%f %p"
    replay_port = args.port + 1
    plain = replay(root, br_restored, replay_port, cp_command, "replay-cp")
    ours_s = None
    if native:
        ours = replay(root, br_restored, replay_port, tool["restore_command"], "replay-ours")
        ours_s = ours["seconds"]
        results["replay_ours"] = ours
    results["replay_cp"] = plain
    rows.append(row(f"WAL replay ({wal_bytes / GB:.2f} GB)", "our restore_command", ours_s,
                    "cp <dir>/%f %p", plain["seconds"], goal=GOALS["WAL replay"]))  # fmt: skip
    results["stream_commits"] = stream_commits
    results["commands"] = {"archive_command": archive_command, "cp_restore": cp_command}
    if tool:
        results["commands"]["our_restore"] = tool["restore_command"]
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return results


def quiet(*args, **kwargs) -> None:
    """Progress callback for the engines: only the ticker prints, so timings stay clean."""


def lz4_sample_ratio(cluster: PgCluster) -> float:
    """lz4 -1 on the first 64 MB of the first table's heap file: what compression to expect."""
    rel = cluster.scalar("SELECT pg_relation_filepath('orders_01')")
    path = cluster.data_dir / rel
    if shutil.which("lz4") is None or not path.exists():
        return 0.0
    sample = path.open("rb").read(64 * 1024 * 1024)
    done = subprocess.run(["lz4", "-1", "-c"], input=sample, capture_output=True)
    return round(len(sample) / max(len(done.stdout), 1), 2)


def stop_leftovers(root: Path) -> None:
    for pid_file in root.glob("*/postmaster.pid"):
        as_postgres([PG_BIN / "pg_ctl", "stop", "-D", pid_file.parent, "-m", "immediate"],
                    check=False)  # fmt: skip
    for pid_file in root.glob("*/data/postmaster.pid"):
        as_postgres([PG_BIN / "pg_ctl", "stop", "-D", pid_file.parent, "-m", "immediate"],
                    check=False)  # fmt: skip


def row(op: str, ours_name: str, ours: float | None, anchor_name: str, anchor: float,
        floor: bool = False, goal: float = GOAL_RATIO) -> dict:  # fmt: skip
    ratio = None if ours is None else ours / anchor
    if floor:
        verdict = "floor"
        goal_text = "floor (the least any copy takes)"
    else:
        verdict = "n/a" if ratio is None else ("PASS" if ratio <= goal else "MISS")
        goal_text = f"<= {goal}x"
    return {
        "operation": op,
        "ours_name": ours_name,
        "ours_s": None if ours is None else round(ours, 2),
        "anchor_name": anchor_name,
        "anchor_s": round(anchor, 2),
        "ratio": None if ratio is None else round(ratio, 2),
        "goal": goal_text,
        "verdict": verdict,
    }


# ------------------------------------------------------------------ output


def table(rows: list[dict]) -> str:
    head = ("operation", "ours", "ours (s)", "anchor", "anchor (s)", "ratio", "goal", "")
    lines = [head]
    for r in rows:
        lines.append(
            (
                r["operation"],
                r["ours_name"],
                "-" if r["ours_s"] is None else f"{r['ours_s']:.1f}",
                r["anchor_name"],
                f"{r['anchor_s']:.1f}",
                "-" if r["ratio"] is None else f"{r['ratio']:.2f}",
                r["goal"],
                r["verdict"],
            )
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def markdown(document: dict) -> str:
    d = document
    ds = d["results"]["dataset"]
    lines = [
        f"# Backup benchmark {d['started']}",
        "",
        f"Dataset {ds['db_bytes'] / GB:.2f} GB ({ds['tables']} tables, {ds['rows']:,} rows; "
        f"lz4 -1 ratio on a sample {ds['lz4_ratio_sample']}x), WAL replayed "
        f"{d['results']['wal']['bytes_past_base'] / GB:.2f} GB; {d['machine']['cpus']} CPUs, "
        f"load average {d['machine']['loadavg_at_start'][0]:.2f} at start, "
        f"{d['machine']['loadavg_at_end'][0]:.2f} at end (shared machine: numbers are noisy).",
        "",
        "| operation | ours | ours (s) | anchor | anchor (s) | ratio | goal | |",
        "|---|---|---:|---|---:|---:|---|---|",
    ]
    for r in d["results"]["rows"]:
        ours = "-" if r["ours_s"] is None else f"{r['ours_s']:.1f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        anchor = r["anchor_name"].replace("|", "\\|")
        lines.append(
            f"| {r['operation']} | {r['ours_name']} | {ours} | {anchor} | "
            f"{r['anchor_s']:.1f} | {ratio} | {r['goal']} | {r['verdict']} |"
        )
    sizes = d["results"]["sizes"]
    if sizes:
        lines += ["", "Stored sizes: " + ", ".join(
            f"{k} {v / 1e6:,.0f} MB" for k, v in sizes.items() if v)]  # fmt: skip
    return "\n".join(lines) + "\n"


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def svg_chart(document: dict) -> str:
    """Horizontal bars per operation: ours (red) and its anchor (blue) in seconds."""
    rows = document["results"]["rows"]
    ds = document["results"]["dataset"]
    left, bar_h, gap, width = 330, 14, 14, 900
    top = 70
    height = top + len(rows) * (2 * bar_h + gap) + 60
    vmax = max([r["anchor_s"] for r in rows] + [r["ours_s"] or 0 for r in rows] + [1]) * 1.12
    scale = (width - left - 80) / vmax
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        '<text x="20" y="26" font-size="16" font-weight="bold">knowngood backups: ours vs '
        "pgBackRest, plain cp and raw copies (seconds, lower is better)</text>",
        f'<text x="20" y="46" fill="#555">{escape(document["started"])}: dataset '
        f"{ds['db_bytes'] / GB:.2f} GB, lz4; {document['machine']['cpus']} CPUs shared with "
        f"other work (noisy); goals: full and WAL replay 1.0x, restore 0.6x, else "
        f"{GOAL_RATIO}x of the anchor</text>",
    ]
    y = top
    for r in rows:
        label = f"{r['operation']}"
        out.append(
            f'<text x="{left - 8}" y="{y + bar_h + 4}" text-anchor="end" '
            f'font-weight="bold">{escape(label)}</text>'
        )
        for name, value, colour in (
            (
                r["ours_name"],
                r["ours_s"],
                "#1f77b4" if r["ours_name"] == "pgBackRest" else "#d62728",
            ),
            (r["anchor_name"], r["anchor_s"], "#7f7f7f" if r["verdict"] == "floor" else "#1f77b4"),
        ):
            if value is not None:
                w = max(value * scale, 1)
                out.append(
                    f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h - 2}" '
                    f'fill="{colour}"/><text x="{left + w + 4:.1f}" y="{y + bar_h - 3}" '
                    f'font-size="10">{value:.1f}s {escape(name)}</text>'
                )
            else:
                out.append(
                    f'<text x="{left + 4}" y="{y + bar_h - 3}" font-size="10" fill="#999">'
                    f"{escape(name)}: not measured</text>"
                )
            y += bar_h
        if r["ratio"] is not None:
            out.append(
                f'<text x="{left - 8}" y="{y + 2}" text-anchor="end" font-size="10" '
                f'fill="#555">{r["ratio"]:.2f}x {r["verdict"]}</text>'
            )
        y += gap
    ly = y + 16
    for i, (text, colour) in enumerate(
        (
            ("ours", "#d62728"),
            ("anchor: pgBackRest / plain cp", "#1f77b4"),
            ("floor: raw copy", "#7f7f7f"),
        )  # fmt: skip
    ):
        x = 20 + 230 * i
        out.append(
            f'<rect x="{x}" y="{ly}" width="12" height="12" fill="{colour}"/>'
            f'<text x="{x + 18}" y="{ly + 10}">{text}</text>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def machine() -> dict:
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    brv = subprocess.run(["pgbackrest", "version"], capture_output=True, text=True).stdout.strip()
    return {
        "git_head": head,
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "pgbackrest": brv,
        "platform": platform.platform(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=2.2, help="dataset size (default 2.2)")
    parser.add_argument("--wal-gb", type=float, default=1.0, help="WAL to replay (default 1.0)")
    parser.add_argument("--quick", action="store_true", help="0.3 GB dataset, 0.3 GB of WAL")
    parser.add_argument("--root", default="/var/tmp/knowngood-bench-backup",
                        help="working directory (removed first and at the end)")  # fmt: skip
    parser.add_argument("--port", type=int, default=21800, help="cluster port (+1 for replay)")
    parser.add_argument("--no-native", action="store_true", help="skip the native engine")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--chart", type=Path, metavar="JSON", help="only redraw the chart")
    args = parser.parse_args(argv)
    if args.quick:
        args.size_gb, args.wal_gb = 0.3, 0.3
    if args.size_gb <= 0 or args.wal_gb <= 0:
        parser.error("--size-gb and --wal-gb must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    svg_path = args.out / "backup-quick.svg" if args.quick else DOCS_SVG
    if args.chart:
        document = json.loads(args.chart.read_text())
        svg_path = args.out / "backup-quick.svg" if document.get("quick") else DOCS_SVG
        svg_path.write_text(svg_chart(document))
        args.chart.with_suffix(".md").write_text(markdown(document))
        print(f"wrote {svg_path} and {args.chart.with_suffix('.md')}")
        return 0
    if os.geteuid() != 0:
        print("bench_backup runs clusters as the postgres user: run it as root", file=sys.stderr)
        return 2
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    info = machine()
    progress(
        f"backup bench: {args.size_gb} GB dataset, {args.wal_gb} GB WAL, {info['cpus']} CPUs, "
        f"load average {info['loadavg_at_start'][0]:.2f}"
    )
    try:
        with only_bench_running():
            results = run_bench(args)
    except (BenchError, pgbr.BackupError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            stop_leftovers(Path(args.root))
    info["loadavg_at_end"] = os.getloadavg()
    document = {
        "started": stamp,
        "quick": args.quick,
        "size_gb": args.size_gb,
        "wal_gb": args.wal_gb,
        "goal_ratio": GOAL_RATIO,
        "goals": GOALS,
        "machine": info,
        "results": results,
    }
    name = f"backup-{stamp}{'-quick' if args.quick else ''}"
    json_path = args.out / f"{name}.json"
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    md_path = args.out / f"{name}.md"
    md_path.write_text(markdown(document))
    svg_path.write_text(svg_chart(document))
    print()
    print(table(results["rows"]))
    print(
        "\nload average (1, 5, 15 min) at start "
        + "/".join(f"{v:.2f}" for v in info["loadavg_at_start"])
        + ", at end "
        + "/".join(f"{v:.2f}" for v in info["loadavg_at_end"])
        + f" ({info['cpus']} CPUs)"
    )
    print(f"wrote {json_path}, {md_path} and {svg_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
