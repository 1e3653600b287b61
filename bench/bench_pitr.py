"""PITR benchmark: pg_pitr (pitr.py) beside pgBackRest and the floor, to one target time.

Reuses bench_backup's dataset and cluster helpers: a dataset of --size-gb, WAL archived three
ways (pgBackRest archive-push, kg-wal push, cp), a full backup by each engine and a raw copy
(pg_basebackup -X none) for the floor, then >= --wal-gb of WAL written before the target.
Each contender restores its base and replays to the target with recovery_target_action=pause:
  ours       pitr.run(state=recovered) on the live cluster (plan, stop, move aside, restore,
             replay through kg-wal fetch with prefetch), per step
  pgBackRest pgbackrest restore --type=time --target-action=pause, replay via archive-get
  floor      copy of the raw base, replay with restore_command = cp
Reported: total, restore, replay, WAL MB/s, first consistent read-only query vs paused at the
target (the point a promote could follow). Results: bench/results/pitr-<stamp>[-quick].json/md.

Delta (issue 16): 5 % of the data changes after the backups (every row of one of twenty equal
tables updated). The stopped live data directory is then copied once, and from that same state
  ours delta   pitr.run(state=recovered, mode=delta): only what differs from the backup written
  pgBackRest   pgbackrest restore --delta --type=time into a copy of that data directory
  ours full    (the row above) moves it aside and restores everything
each replays to the same target; restore and total are printed beside their anchors as ratios,
with the machine's load (os.getloadavg) at the start and the end.

    sudo .venv/bin/python bench/bench_pitr.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_backup as bb  # noqa: E402
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import (  # noqa: E402
    install as backup_tool,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import (  # noqa: E402
    native as backup_native,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import (  # noqa: E402
    pitr,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import (  # noqa: E402
    verify as backup_verify,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (  # noqa: E402
    parse_lsn,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.config import (  # noqa: E402
    BackupConfig,
)

progress = bb.progress
MB = 1e6


def _paused(cfg, data: Path, log: Path, timeout: float) -> dict:
    """Start a restored data directory and wait until it pauses at the target."""
    result = {"first_read_seconds": None}
    seconds = pitr.start_and_wait_paused(cfg, str(data), str(log), timeout, result)
    pitr.report_position(cfg, result, {"base": {}})
    backup_verify.stop_scratch(cfg, str(data))
    return {"replay": seconds, "first_read": result["first_read_seconds"],
            "reached_lsn": result["reached_lsn"]}  # fmt: skip


def _local_settings(data: Path, port: int, run_dir: Path, extra: str = "") -> None:
    with (data / "postgresql.auto.conf").open("a") as conf:
        conf.write(f"\nport = {port}\nunix_socket_directories = '{run_dir}'\n"
                   f"archive_mode = 'off'\nhot_standby = 'on'\n{extra}")  # fmt: skip
    os.chown(data / "postgresql.auto.conf", *bb.pg_ids())


def run(args: argparse.Namespace) -> dict:
    root = Path(args.root)
    if root.exists():
        bb.stop_leftovers(root)
        shutil.rmtree(root)
    bb.make_dirs_for_postgres(root)
    for port in (args.port, args.port + 1):
        if bb.port_in_use(port):
            raise bb.BenchError(f"port {port} is in use: pick another --port")
    cluster = bb.PgCluster(root / "pg", port=args.port, name="kgbench")
    cluster.init(shared_buffers="512MB", max_wal_size="8GB", checkpoint_timeout="30min",
                 archive_mode="on", archive_command="/bin/true")  # fmt: skip
    br_root = bb.make_dirs_for_postgres(root / "pgbackrest")
    br_cfg = BackupConfig.from_dict({
        "cluster": "kgbench", "engine": "pgbackrest", "pg": cluster.backend_config(),
        "compression": "lz4", "parallel": 2, "spool_dir": str(br_root / "spool"),
        "catalog_dir": str(br_root / "catalog"),
        "locations": [{"name": "unused", "type": "local", "path": str(br_root / "unused")}],
        "pgbackrest_stanza": "kgbench", "pgbackrest_config": str(br_root / "pgbackrest.conf"),
        "pgbackrest_repos": [{"type": "posix", "path": str(br_root / "repo")}],
    })  # fmt: skip
    br_conf = bb.pgbr.configure(br_cfg)
    n_root = bb.make_dirs_for_postgres(root / "native")
    for sub in ("store", "spool", "catalog", "tool"):
        bb.make_dirs_for_postgres(n_root / sub)
    cfg = BackupConfig.from_dict({
        "cluster": "kgbench", "pg": cluster.backend_config(), "compression": "lz4",
        "parallel": 2, "spool_dir": str(n_root / "spool"), "catalog_dir": str(n_root / "catalog"),
        "wal_prefetch": 8,
        "locations": [{"name": "local", "type": "local", "path": str(n_root / "store")}],
    })  # fmt: skip
    tool = backup_tool.install_tool(cfg, str(n_root / "tool"))
    wal_dir = bb.make_dirs_for_postgres(root / "wal-plain")
    commands = [br_conf["archive_command"], tool["archive_command"],
                f"test -f {wal_dir}/%f || cp %p {wal_dir}/%f"]  # fmt: skip
    cluster.configure(archive_command=" && ".join(f"( {c} )" for c in commands))
    cluster.start()
    bb.pgbr.stanza_create(br_cfg)
    progress(f"loading {args.size_gb} GB")
    dataset = bb.fill(cluster, args.size_gb)
    bb.wait_archived(cluster)
    progress("full backups: pgBackRest, native, raw base (pg_basebackup -X none)")
    bb.pgbr.take_backup(br_cfg, "full")
    backup_native.take_backup(cfg, "full", progress=bb.quiet)
    raw = root / "raw-base"
    bb.as_postgres([bb.PG_BIN / "pg_basebackup", "-h", "127.0.0.1", "-p", args.port, "-U",
                    "postgres", "-D", raw, "-X", "none", "-c", "fast"], timeout=3600)  # fmt: skip
    start_lsn = cluster.scalar("SELECT pg_current_wal_lsn()::text")
    progress("changing 5% of the data (every row of orders_00 updated)")
    cluster.sql("UPDATE orders_00 SET note = md5(random()::text) || ' changed', "
                "amount = amount + 1")  # fmt: skip
    progress(f"writing {args.wal_gb} GB of WAL before the target")
    wal_bytes = bb.generate_wal(cluster, start_lsn, int(args.wal_gb * bb.GB))
    cluster.sql("CREATE TABLE IF NOT EXISTS marker (tag text)")
    cluster.sql("INSERT INTO marker VALUES ('before')")
    target = cluster.scalar("SELECT clock_timestamp()").isoformat()
    time.sleep(0.2)
    cluster.sql("INSERT INTO marker VALUES ('after')")
    bb.wait_archived(cluster)
    rows = {}

    progress("pgBackRest: restore --type=time --target-action=pause, then replay")
    br_data = root / "br-data"
    t0 = time.monotonic()
    label = bb.pgbr.list_backups(br_cfg)[-1]["label"]
    bb.pgbr.restore(br_cfg, label, str(br_data),
                    target={"type": "time", "value": target, "action": "pause"},
                    archive_mode="off")  # fmt: skip
    restore_s = time.monotonic() - t0
    run_dir = bb.make_dirs_for_postgres(root / "br-run")
    _local_settings(br_data, args.port + 1, run_dir)
    scfg = backup_verify.scratch_cfg(cfg, args.port + 1)
    got = _paused(scfg, br_data, root / "br.log", 7200)
    rows["pgbackrest"] = {"restore": restore_s, **got, "total": time.monotonic() - t0}
    shutil.rmtree(br_data)

    progress("floor: copy of the raw base + replay with cp")
    fl_data = root / "floor-data"
    t0 = time.monotonic()
    bb.copy_tree(raw, fl_data)
    restore_s = time.monotonic() - t0
    run_dir = bb.make_dirs_for_postgres(root / "floor-run")
    _local_settings(
        fl_data,
        args.port + 1,
        run_dir,
        f"restore_command = 'cp {wal_dir}/%f %p'\n"
        f"recovery_target_time = '{target}'\nrecovery_target_action = 'pause'\n",
    )
    (fl_data / "recovery.signal").touch()
    os.chown(fl_data / "recovery.signal", *bb.pg_ids())
    got = _paused(scfg, fl_data, root / "floor.log", 7200)
    rows["floor"] = {"restore": restore_s, **got, "total": time.monotonic() - t0}
    shutil.rmtree(fl_data)

    # One pre-restore state for every restore into an existing data directory.
    cluster.stop()
    pristine = root / "pristine"
    bb.sh(["cp", "-a", str(cluster.data_dir), str(pristine)])

    progress("pgBackRest --delta: restore into a copy of the live data directory, then replay")
    brd_data = root / "brd-data"
    bb.sh(["cp", "-a", str(pristine), str(brd_data)])
    (brd_data / "postmaster.pid").unlink(missing_ok=True)
    t0 = time.monotonic()
    bb.pgbr.restore(br_cfg, label, str(brd_data),
                    target={"type": "time", "value": target, "action": "pause"},
                    archive_mode="off")  # fmt: skip
    restore_s = time.monotonic() - t0
    _local_settings(brd_data, args.port + 1, bb.make_dirs_for_postgres(root / "brd-run"))
    got = _paused(scfg, brd_data, root / "brd.log", 7200)
    rows["pgbackrest_delta"] = {"restore": restore_s, **got, "total": time.monotonic() - t0}
    shutil.rmtree(brd_data)

    landed = {}
    for mode in ("delta", "full"):  # delta first: the later run gets no warmer cache
        progress(f"ours: pg_pitr state=recovered mode={mode} on the live cluster")
        _reset_live(cluster, pristine)
        t0 = time.monotonic()
        req = pitr.Request(state="recovered", target_time=target, confirm="kgbench",
                           run_id=f"bench-{mode}", timeout=7200, mode=mode,
                           tool_dir=str(n_root / "tool"))  # fmt: skip
        ours = pitr.run(cfg, req)
        total = time.monotonic() - t0
        steps = ours["steps"]
        name = "ours" if mode == "full" else "ours_delta"
        rows[name] = {"restore": steps.get("restore"), "replay": steps.get("replay"),
                      "first_read": ours["first_read_seconds"], "total": total,
                      "reached_lsn": ours["reached_lsn"], "steps": steps,
                      "delta": ours["delta"]}  # fmt: skip
        landed[mode] = cluster.sql("SELECT tag FROM marker") == [("before",)]
        backup_verify.stop_scratch(cfg, str(cluster.data_dir))
        shutil.rmtree(ours["aside_dir"], ignore_errors=True)
    ok = all(landed.values())
    replayed = parse_lsn(ours["reached_lsn"]) - parse_lsn(start_lsn)
    for item in rows.values():
        item["wal_mb_s"] = round(replayed / MB / item["replay"], 1) if item["replay"] else None
    return {"dataset": dataset, "wal_bytes": wal_bytes, "target": target, "rows": rows,
            "ours_landed_on_target": ok, "landed": landed, "plan": ours["plan"]}  # fmt: skip


def _reset_live(cluster, pristine: Path) -> None:
    """The live cluster back in the pre-restore state (a copy of the stopped data directory),
    started, with no PITR run recorded: each of ours starts from the same data directory."""
    data = cluster.data_dir
    cluster.stop(mode="immediate")
    if data.exists():
        shutil.rmtree(data)
    for path in (pitr.state_path(str(data)), pitr.marker_path(str(data))):
        Path(path).unlink(missing_ok=True)
    bb.sh(["cp", "-a", str(pristine), str(data)])
    cluster.start()


def table(res: dict) -> str:
    rows = res["rows"]
    base = rows["pgbackrest"]
    lines = ["| contender | restore s | replay s | first read s | total s | WAL MB/s | "
             "total vs pgBackRest |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in ("ours", "pgbackrest", "floor"):
        r = rows[name]
        ratio = r["total"] / base["total"] if base["total"] else float("nan")
        lines.append(f"| {name} | {r['restore']:.1f} | {r['replay']:.1f} | "
                     f"{r['first_read'] or 0:.1f} | {r['total']:.1f} | {r['wal_mb_s']} | "
                     f"{ratio:.2f}x |")  # fmt: skip
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in rows["ours"]["steps"].items())
    lines.append(f"\nours per step: {steps}")
    lines.append("\nDelta PITR after 5 % change (same target, same pre-restore data directory):\n")
    lines += ["| contender | restore s | replay s | total s | restore vs anchor | "
              "total vs anchor | anchor (goal) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    delta, full, brd = rows["ours_delta"], rows["ours"], rows["pgbackrest_delta"]
    for name, r, anchor, label in (
        ("ours delta", delta, full, "ours full (<= 0.30x)"),
        ("ours delta", delta, brd, "pgBackRest --delta (<= 1.00x)"),
        ("pgBackRest --delta", brd, full, "ours full"),
        ("ours full", full, full, "ours full"),
    ):
        lines.append(f"| {name} | {r['restore']:.1f} | {r['replay']:.1f} | {r['total']:.1f} | "
                     f"{r['restore'] / anchor['restore']:.2f}x | "
                     f"{r['total'] / anchor['total']:.2f}x | {label} |")  # fmt: skip
    d = delta["delta"]
    lines.append(f"\nours delta: {d.get('files_checked')} files checked "
                 f"({d.get('bytes_checksummed', 0) / MB:.0f} MB checksummed), "
                 f"{d.get('files_rewritten')} rewritten, {d.get('files_created')} created, "
                 f"{d.get('files_removed')} removed, {d.get('bytes_written', 0) / MB:.0f} MB "
                 "written; per step: "
                 + ", ".join(f"{k} {v:.1f}s" for k, v in delta["steps"].items()))  # fmt: skip
    load = res.get("load", {})
    lines.append(f"load average (1, 5, 15 min) at start {load.get('start')}, "
                 f"at end {load.get('end')}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=2.2)
    parser.add_argument("--wal-gb", type=float, default=1.1)
    parser.add_argument("--quick", action="store_true", help="0.3 GB dataset, 0.3 GB of WAL")
    parser.add_argument("--root", default="/var/tmp/knowngood-bench-pitr")
    parser.add_argument("--port", type=int, default=21900)
    parser.add_argument("--out", type=Path, default=bb.RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.quick:
        args.size_gb, args.wal_gb = 0.3, 0.3
    if os.geteuid() != 0:
        print("bench_pitr runs clusters as the postgres user: run it as root", file=sys.stderr)
        return 2
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    load_start = [round(x, 2) for x in os.getloadavg()]
    try:
        with bb.only_bench_running():
            res = run(args)
        res["load"] = {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]}
    except (bb.BenchError, pitr.BackupError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        bb.stop_leftovers(Path(args.root))
        shutil.rmtree(args.root, ignore_errors=True)
    doc = {"started": stamp, "quick": args.quick, "size_gb": args.size_gb, "wal_gb": args.wal_gb,
           "goal_ratio": bb.GOAL_RATIO, "machine": bb.machine(), "results": res}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"pitr-{stamp}{'-quick' if args.quick else ''}"
    (args.out / f"{name}.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    text = table(res)
    (args.out / f"{name}.md").write_text(f"# PITR bench {stamp}\n\n{text}\n")
    print(text)
    return 0 if res["ours_landed_on_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
