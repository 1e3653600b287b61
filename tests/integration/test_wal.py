"""WAL archiving end to end: a real PostgreSQL 15 cluster whose archive_command is the
installed kg-wal tool (system Python, run by the postgres user), two local directories and one
lab SeaweedFS S3 region (encrypted).

What matters: every segment PostgreSQL archives is in every location with identical content;
a retry of the same segment is fine, different content under the same name is refused loudly;
a required region that is down stops archiving (PostgreSQL keeps the WAL and retries) and it
catches up when the region is back; a non-required one is backfilled later; a location that
accepts connections and never answers costs a push its deadline at most; a stuck push ends
with a failed attempt PostgreSQL counts and retries; restore_command serves prefetched
segments from the spool and says "not here" fast; gaps are named.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import os
import pwd
import re
import shutil
import statistics
import subprocess
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import (
    archive,
    metrics,
    store,
    wal,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import (
    install as wal_tool,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.codec import decode_file
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (
    next_segment,
    sha256_file,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.config import (
    BackupConfig,
)
from conftest import BIN, REPO, TEST_LAB_ROOT
from pgcluster import as_postgres, make_dirs_for_postgres
from promrules import firing, samples
from stalls import StallingEndpoint

from knowngood.lab import s3 as lab_s3
from knowngood.lab.config import LabConfig
from knowngood.lab.notify_sinks import WebhookReceiver

ENC_KEY = "wal-test-passphrase-0123456789"
CONTACTS = {
    role: {"name": name, "email": f"{name}@lab.invalid"}
    for role, name in (
        ("primary_oncall", "oscar"),
        ("secondary_oncall", "tess"),
        ("infra_lead", "ivan"),
    )
}


def notifying(hook: WebhookReceiver) -> dict:
    """The backup configuration's notify: the test's webhook, the lab's contacts."""
    return {
        "channels": {"webhooks": [hook.url()], "attempts": 1, "timeout_s": 2},
        "contacts": CONTACTS,
    }


def only_notice(hook: WebhookReceiver) -> str:
    """The one notice the receiver heard (waits for it, then a moment for any second one)."""
    wait_for(hook.texts, 10, "the notice")
    time.sleep(0.5)
    (text,) = hook.texts()
    return text


def job_ok(cfg: BackupConfig, kind: str) -> float:
    labels = frozenset({("cluster", cfg.cluster), ("kind", kind)})
    return samples(metrics.metrics_path(cfg))[("knowngood_backup_job_ok", labels)]


@pytest.fixture(scope="module")
def labcfg(lab_session) -> LabConfig:
    return LabConfig.load(TEST_LAB_ROOT)


@pytest.fixture
def walenv(labcfg: LabConfig):
    """A fresh base dir reachable by postgres; a config builder; cleanup of S3 objects."""
    base = make_dirs_for_postgres(Path(f"{TEST_LAB_ROOT}-wal-{uuid.uuid4().hex[:8]}"))
    prefix = f"test-wal/{uuid.uuid4().hex[:8]}"
    status = lab_s3.s3_status(labcfg)["region-a"]
    access, secret = lab_s3.s3_credentials(labcfg)

    def config(s3_required: bool = True, **extra) -> BackupConfig:
        data = {
            "cluster": "waltest",
            "compression": "lz4",
            "encryption_key": ENC_KEY,
            "spool_dir": str(base / "spool"),
            "wal_prefetch": 3,
            "retries": {"attempts": 2, "base_delay": 0.2, "max_delay": 1},
            "locations": [
                {"name": "local-a", "type": "local", "path": str(base / "loc-a")},
                {"name": "local-b", "type": "local", "path": str(base / "loc-b")},
                {
                    "name": "s3-region-a",
                    "type": "s3",
                    "endpoint_url": status["endpoint"],
                    "region": status["region"],
                    "bucket": status["bucket"],
                    "prefix": prefix,
                    "access_key": access,
                    "secret_key": secret,
                    "encrypt": True,
                    "required": s3_required,
                },
            ],
        }
        data.update(extra)
        return BackupConfig.from_dict(data)

    yield base, config
    with_s3 = store.open_locations(config())[2]
    if lab_s3.s3_status(labcfg)["region-a"]["running"]:
        with_s3.delete_prefix("wal")
        with_s3.delete_prefix("repo.json")
    shutil.rmtree(base, ignore_errors=True)


def start_archiving(pg_factory, cfg: BackupConfig, tool_dir: Path):
    installed = wal_tool.install_tool(cfg, str(tool_dir))
    assert installed["changed"]
    assert wal_tool.install_tool(cfg, str(tool_dir))["changed"] is False  # idempotent
    pg = pg_factory(
        "waltest", archive_mode="on", archive_command=installed["archive_command"]
    ).start()
    return pg, installed


def write_and_switch(pg, n: int = 1) -> list[str]:
    names = []
    pg.sql("CREATE TABLE IF NOT EXISTS t (i int, pad text)")
    for _ in range(n):
        pg.sql("INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 2000) g")
        names.append(pg.switch_wal())
    return names


def content_sha(cfg: BackupConfig, location, name: str, tmp: Path) -> str:
    """Download + decode one archived segment; sha256 of the plain segment."""
    store.ensure_repo(location, cfg)
    found = wal._find(cfg, location, name)
    assert found is not None, f"{name} missing in {location.name}"
    out = tmp / f"{location.name}-{name}"
    src = out.with_suffix(".stored")
    location.get_file(found[0], src)
    try:
        decode_file(src, out, compression="lz4", key=location.key, expect_sha256=found[1]["sha256"])
        return sha256_file(out)
    finally:
        src.unlink()
        out.unlink(missing_ok=True)


def s3_spec(cfg: BackupConfig, name: str, **changes) -> dict:
    """walenv's s3-region-a location, renamed and changed (another endpoint, optional...)."""
    spec = next(loc for loc in cfg.to_dict()["locations"] if loc["name"] == "s3-region-a")
    return {**spec, "name": name, **changes}


def reconfigured(cfg: BackupConfig, locations: list[dict], **top) -> BackupConfig:
    return BackupConfig.from_dict({**cfg.to_dict(), "locations": locations, **top})


def push_times_ms(log: str) -> list[int]:
    return [int(ms) for ms in re.findall(r"kg-wal: push \S+ ok in (\d+)ms", log)]


def test_archive_to_every_location(pg_factory, walenv, tmp_path: Path) -> None:
    base, config = walenv
    cfg = config()
    pg, installed = start_archiving(pg_factory, cfg, base / "tool")
    tool_cfg = base / "tool" / "config.json"
    assert oct(tool_cfg.stat().st_mode & 0o777) == "0o600"
    assert tool_cfg.stat().st_uid == pwd.getpwnam("postgres").pw_uid
    names = write_and_switch(pg, 2)
    locations = store.open_locations(cfg)
    for name in names:
        shas = {loc.name: content_sha(cfg, loc, name, tmp_path) for loc in locations}
        assert len(set(shas.values())) == 1, shas
    # Stored forms: plain lz4 locally, encrypted in S3 (no segment bytes readable there).
    tli = names[0][:8]
    assert f"wal/{tli}/{names[0]}.lz4" in locations[0].list(f"wal/{tli}")
    assert f"wal/{tli}/{names[0]}.lz4.enc" in locations[2].list(f"wal/{tli}")
    # One log line per push, with segment and locations, and no secret anywhere.
    log = pg.log()
    assert f"kg-wal: push {names[0]} ok" in log and "s3-region-a=stored" in log
    for secret in (ENC_KEY, lab_s3.s3_credentials(None)[1]):
        assert secret not in log
    status = json.loads(
        as_postgres([installed["tool"], "status"]).stdout  # the tool reads its own config
    )
    assert status["locations"]["s3-region-a"]["newest"] >= names[-1]
    assert lab_s3.s3_credentials(None)[1] not in json.dumps(status)


def test_push_idempotent_and_conflict_refused(pg_factory, walenv, tmp_path: Path) -> None:
    base, config = walenv
    cfg = config()
    pg, _ = start_archiving(pg_factory, cfg, base / "tool")
    (name,) = write_and_switch(pg, 1)
    # The same segment again through the CLI (PostgreSQL retrying after a crash): success.
    seg = tmp_path / name
    local_a = store.open_locations(cfg)[0]
    store.ensure_repo(local_a, cfg)
    hit = wal._find(cfg, local_a, name)
    decode_file(local_a._path(hit[0]), seg, compression="lz4")
    cli_cfg = dict(cfg.to_dict(), spool_dir=str(tmp_path / "spool-cli"))
    (tmp_path / "cfg.json").write_text(json.dumps(cli_cfg))

    def cli(*args):
        return subprocess.run(
            [str(BIN / "knowngood"), "wal", "--config", str(tmp_path / "cfg.json"), *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )

    again = cli("push", str(seg))
    assert again.returncode == 0, again.stderr
    assert "local-a=exists local-b=exists s3-region-a=exists" in again.stderr
    # Different content under the same name: refused, exit 1, ALERT, nothing overwritten.
    data = bytearray(seg.read_bytes())
    data[5000] ^= 0xFF
    seg.write_bytes(bytes(data))
    refused = cli("push", str(seg))
    assert refused.returncode == 1
    assert f"ALERT push {name}" in refused.stderr and "different content" in refused.stderr
    assert ENC_KEY not in refused.stderr
    shas = {content_sha(cfg, loc, name, tmp_path) for loc in store.open_locations(cfg)}
    assert len(shas) == 1 and sha256_file(seg) not in shas


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_required_region_down_blocks_then_catches_up(pg_factory, walenv, labcfg: LabConfig) -> None:
    base, config = walenv
    hook = WebhookReceiver().__enter__()
    cfg = config(s3_required=True, notify=notifying(hook))
    pg, _ = start_archiving(pg_factory, cfg, base / "tool")
    write_and_switch(pg, 1)
    lab_s3.s3_region_down(labcfg, 0)
    try:
        pg.sql("INSERT INTO t SELECT g, 'y' FROM generate_series(1, 1000) g")
        stuck = pg.scalar("SELECT pg_walfile_name(pg_switch_wal())")
        # PostgreSQL retries the segment: the on-call hears once, not once per attempt.
        wait_for(
            lambda: pg.scalar("SELECT failed_count FROM pg_stat_archiver") > 1,
            60,
            "archive_command to fail and be retried",
        )
        text = only_notice(hook)
        assert text.startswith("[knowngood] WAL archiving FAILED: waltest on "), text
        assert "s3-region-a" in text and "locations not stored: s3-region-a" in text, text
        assert job_ok(cfg, "wal_push") == 0
        assert pg.scalar("SELECT last_archived_wal FROM pg_stat_archiver") < stuck
        assert f"push {stuck} FAILED" in pg.log()
        assert "endpoint" in pg.log() and "unreachable" in pg.log()
        # PostgreSQL keeps the segment: it is still ready to archive.
        assert (pg.data_dir / "pg_wal" / "archive_status" / f"{stuck}.ready").exists()
    finally:
        lab_s3.s3_region_up(labcfg, lambda m: None, 0)
        hook.__exit__(None, None, None)
    names = write_and_switch(pg, 1)  # wakes the archiver; it catches up in order
    assert names[0] > stuck
    s3 = store.open_locations(cfg)[2]
    assert stuck in archive.list_segments(s3)


def test_optional_region_down_pending_then_backfilled(
    pg_factory, walenv, labcfg: LabConfig
) -> None:
    base, config = walenv
    hook = WebhookReceiver().__enter__()
    cfg = config(s3_required=False, notify=notifying(hook))
    pg, _ = start_archiving(pg_factory, cfg, base / "tool")
    write_and_switch(pg, 1)  # the S3 repo.json exists (and is cached) before the outage
    lab_s3.s3_region_down(labcfg, 0)
    try:
        t0 = time.monotonic()
        (name,) = write_and_switch(pg, 1)  # archived although S3 is down
        print(f"archive with optional region down: {time.monotonic() - t0:.1f}s")
        assert wal.pending_copies(cfg) == {"s3-region-a": [name]}
        assert "pending copies: 1" in pg.log()
        local_a = store.open_locations(cfg)[0]
        assert name in archive.list_segments(local_a)
        # The archive falls behind in region A: one notice while it stays down.
        (second,) = write_and_switch(pg, 1)
        assert wal.pending_copies(cfg) == {"s3-region-a": [name, second]}
        text = only_notice(hook)
        assert text.startswith("[knowngood] WAL archive falling behind: waltest on "), text
        assert "location s3-region-a" in text and "queued" in text, text
        assert job_ok(cfg, "wal_push") == 1
    finally:
        lab_s3.s3_region_up(labcfg, lambda m: None, 0)
        hook.__exit__(None, None, None)
    time.sleep(wal._down_hold(cfg) + 0.5)
    (later,) = write_and_switch(pg, 1)  # the next push backfills first
    assert wal.pending_copies(cfg) == {}
    s3 = store.open_locations(cfg)[2]
    assert {name, second, later} <= set(archive.list_segments(s3))
    assert "backfilled 2 pending WAL file(s) to s3-region-a" in pg.log()


def test_fetch_prefetch_missing_and_continuity(pg_factory, walenv, tmp_path: Path) -> None:
    base, config = walenv
    cfg = config()
    pg, installed = start_archiving(pg_factory, cfg, base / "tool")
    names = write_and_switch(pg, 6)
    pg.stop()
    restore = make_dirs_for_postgres(base / "restore")
    tool = installed["tool"]

    def fetch(name: str, *extra: str):
        t0 = time.monotonic()
        run = as_postgres([tool, "fetch", name, restore / "RECOVERYXLOG", *extra], check=False)
        return run, time.monotonic() - t0

    # Not archived anywhere: exit 1, fast (no backoff on not-found). The baseline walks the same
    # locations the same way and finds its segment only in the last one (S3, whose client the
    # missing fetch has to start as well), measured in this run: a not-found retried with
    # backoff (0.5 s base, 4 attempts) would add seconds to every try, where a stall of this
    # shared machine hits one, so the fastest of up to three tries counts.
    last = names[-1]  # from here on only in S3
    for loc in store.open_locations(cfg)[:2]:
        loc.delete(wal._find(cfg, loc, last)[0])
    run, through_all = fetch(last, "--no-prefetch")
    assert run.returncode == 0 and "from s3-region-a" in run.stderr, run.stderr
    missing = next_segment(last, 50)
    tries = []
    for _try in range(3):
        run, took = fetch(missing)
        assert run.returncode == 1 and "not found" in run.stderr
        tries.append(took)
        if took < through_all + 0.5:
            break
    print(
        f"missing segment {min(tries) * 1000:.0f} ms; found in the last location "
        f"{through_all * 1000:.0f} ms"
    )
    assert min(tries) < through_all + 0.5, (
        f"fetch of a missing segment took {tries}s, found in the last location {through_all:.2f}s"
    )
    first, cold = fetch(names[0])
    assert first.returncode == 0, first.stderr
    assert "from local-a" in first.stderr
    spool = base / "spool" / "prefetch"
    wanted = names[1:4]  # wal_prefetch = 3
    wait_for(lambda: all((spool / f"{n}.json").exists() for n in wanted), 30, "the prefetcher")
    assert not (spool / names[4]).exists()  # exactly wal_prefetch ahead
    # Take the prefetched segments away from every location: served from the spool anyway.
    expected = {}
    for loc in store.open_locations(cfg):
        store.ensure_repo(loc, cfg)
        for n in wanted:
            key = wal._find(cfg, loc, n)[0]
            if loc.name == "local-a":
                decode_file(loc._path(key), tmp_path / n, compression="lz4")
                expected[n] = sha256_file(tmp_path / n)
            loc.delete(key)
    warm = []
    for n in wanted:
        run, took = fetch(n)
        assert run.returncode == 0, run.stderr
        assert "from prefetch spool" in run.stderr
        assert sha256_file(restore / "RECOVERYXLOG") == expected[n]
        warm.append(took)
    print(f"fetch from location {cold * 1000:.0f} ms; from spool {min(warm) * 1000:.0f} ms")
    # Continuity names every gap (the three taken away above), per location.
    local_b, s3 = store.open_locations(cfg)[1:3]
    report = archive.continuity(cfg, local_b, names[0])
    assert report == {
        "ok": False,
        "gaps": wanted,
        "newest": names[4],
        "checked": len(names) - 1,
        "location": "local-b",
    }
    assert archive.continuity(cfg, local_b, names[4])["ok"]
    assert archive.newest_segment(local_b) == names[4]
    assert archive.newest_segment(s3) == names[-1]


def test_fetch_skips_a_down_location(pg_factory, walenv, labcfg: LabConfig) -> None:
    """Config order s3 first: with the region down, fetch falls through to a local copy."""
    base, config = walenv
    cfg = config()
    data = cfg.to_dict()
    data["locations"] = [data["locations"][2], data["locations"][0]]
    s3_first = BackupConfig.from_dict(data)
    pg, _ = start_archiving(pg_factory, s3_first, base / "tool")
    (name,) = write_and_switch(pg, 1)
    lab_s3.s3_region_down(labcfg, 0)
    try:
        t0 = time.monotonic()
        ok = wal.fetch(s3_first, name, str(base / "out"), prefetch=False)
        took = time.monotonic() - t0
    finally:
        lab_s3.s3_region_up(labcfg, lambda m: None, 0)
    assert ok and (base / "out").stat().st_size == 16 * 1024 * 1024
    assert took < 10, took
    assert os.path.getsize(base / "out") > 0


def test_spool_directories_made_by_root_stay_usable_by_postgres(tmp_path):
    """A root-run fetch (a module, a restore test) creating the prefetch queue must not lock
    out restore_command, which runs as postgres: it lost its prefetcher and fast path once."""
    spool = make_dirs_for_postgres(Path(f"/tmp/kg-spool-{uuid.uuid4().hex[:8]}"), 0o700)
    try:
        cfg = BackupConfig.from_dict(
            {
                "cluster": "spooltest",
                "spool_dir": str(spool),
                "locations": [{"name": "a", "type": "local", "path": str(tmp_path / "a")}],
            }
        )
        assert not wal.fetch(cfg, "000000010000000000000001", str(tmp_path / "x"), prefetch=False)
        postgres = pwd.getpwnam("postgres").pw_uid
        made = [p for p in spool.rglob("*") if p.is_dir()]
        assert made and all(p.stat().st_uid == postgres for p in made), made
        probe = as_postgres(["touch", str(spool / "prefetch" / "probe")], check=False)
        assert probe.returncode == 0, probe.stderr
    finally:
        shutil.rmtree(spool, ignore_errors=True)


def test_black_holed_optional_location_costs_a_bounded_time_per_push(pg_factory, walenv) -> None:
    """Accepts connections, never answers: a push waits for it its deadline (10 s) at most,
    marks it down and keeps a pending copy; every segment reaches the required locations."""
    base, config = walenv
    plain = config()
    with StallingEndpoint() as hole:
        black_holed = s3_spec(plain, "hole", endpoint_url=hole.url, required=False)
        cfg = reconfigured(plain, [*plain.to_dict()["locations"], black_holed])
        pg, _ = start_archiving(pg_factory, cfg, base / "tool")
        names = write_and_switch(pg, 3)
        assert hole.accepted >= 1
    took = push_times_ms(pg.log())
    print(f"push times with a black-holed location: {took} ms")
    assert max(took) >= wal.OPTIONAL_DEADLINE * 1000  # it was waited for, once at least
    assert max(took) < 13000, took
    pending = wal.pending_copies(cfg)["hole"]
    assert set(names) <= set(pending)
    record = json.loads((base / "spool" / "pending" / "hole" / f"{pending[0]}.json").read_text())
    assert "no answer within 10s" in record["error"] or "less than" in record["error"]
    for location in store.open_locations(cfg)[:3]:
        assert set(names) <= set(archive.list_segments(location)), location.name


def test_watchdog_exit_is_a_failed_attempt_postgresql_counts_and_retries(
    pg_factory, walenv, labcfg: LabConfig
) -> None:
    """Region A's S3 stalls (connections accepted, no answer) under a required location: the
    watchdog ends each push with exit status 1, PostgreSQL counts the failures and archives
    the segment once the stall is gone. Never a signal: an archiver killed by one restarts
    uncounted."""
    base, config = walenv
    plain = config()
    endpoint = urlsplit(lab_s3.s3_status(labcfg)["region-a"]["endpoint"])
    with StallingEndpoint(upstream=(endpoint.hostname, endpoint.port)) as stall:
        stalled = s3_spec(plain, "s3-region-a", endpoint_url=stall.url)
        cfg = reconfigured(plain, [*plain.to_dict()["locations"][:2], stalled])
        installed = wal_tool.install_tool(cfg, str(base / "tool"))
        pg = pg_factory(
            "waltest",
            archive_mode="on",
            archive_command=f"KG_WAL_WATCHDOG=3 {installed['archive_command']}",
        ).start()
        pg.sql("CREATE TABLE t (i int, pad text)")
        pg.sql("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 1000) g")
        stuck = pg.scalar("SELECT pg_walfile_name(pg_switch_wal())")
        wait_for(
            lambda: pg.scalar("SELECT failed_count FROM pg_stat_archiver") > 0, 60, "a failure"
        )
        log = pg.log()
        assert "failed with exit code 1" in log
        assert "terminated by signal" not in log
        assert "watchdog: no result after 3 s" in log and "Thread 0x" in log  # every stack
        stall.heal()
        write_and_switch(pg, 1)  # wakes the archiver; the stuck segment goes first
    assert pg.scalar("SELECT failed_count FROM pg_stat_archiver") > 0
    for location in store.open_locations(plain):
        assert stuck in archive.list_segments(location), location.name


SOAK_PUSHES = 2000
SOAK_PUSHERS = 3
SEGMENT = 16 * 1024 * 1024


def test_soak_with_a_region_down_and_a_black_hole_never_hangs_and_loses_nothing(
    walenv, labcfg: LabConfig, tmp_path: Path
) -> None:
    """2,000 fresh `kg-wal push` processes (as postgres, as archive_command runs them), three
    at a time, with region B down and an optional location black-holed. Zero hangs, zero
    failures; then region B comes back, its pending copies are copied, and every copy in
    every location decodes to the source's checksum; the black hole keeps a pending copy of
    every segment."""
    base, config = walenv
    plain = config()
    region_b = lab_s3.s3_status(labcfg)["region-b"]
    locations = plain.to_dict()["locations"]
    runs: list[tuple[float, int, str]] = []
    shas: dict[str, str] = {}
    source = make_dirs_for_postgres(base / "pg_wal")
    first = "000000010000000200000000"

    def pusher(start: int) -> None:
        for i in range(start, SOAK_PUSHES, SOAK_PUSHERS):
            path = source / next_segment(first, i)
            with open(path, "wb") as handle:
                handle.write(path.name.encode() + os.urandom(64 * 1024))
                handle.truncate(SEGMENT)
            shas[path.name] = sha256_file(path)
            t0 = time.monotonic()
            try:
                run = as_postgres([tool, "push", path], timeout=90, check=False)
                outcome = (run.returncode, run.stderr)
            except subprocess.TimeoutExpired:
                outcome = (-1, "killed after 90s")
            runs.append((time.monotonic() - t0, *outcome))
            path.unlink()

    with StallingEndpoint() as hole:
        cfg = reconfigured(
            plain,
            [
                locations[0],
                locations[2],
                s3_spec(
                    plain,
                    "s3-region-b",
                    endpoint_url=region_b["endpoint"],
                    region=region_b["region"],
                    bucket=region_b["bucket"],
                    required=False,
                ),
                s3_spec(plain, "hole", endpoint_url=hole.url, required=False),
            ],
            retries={"attempts": 4, "base_delay": 0.5, "max_delay": 8},
        )
        tool = wal_tool.install_tool(cfg, str(base / "tool"))["tool"]
        lab_s3.s3_region_down(labcfg, 1)
        started = time.monotonic()
        try:
            pushers = [threading.Thread(target=pusher, args=(n,)) for n in range(SOAK_PUSHERS)]
            for thread in pushers:
                thread.start()
            for thread in pushers:
                thread.join()
        finally:
            lab_s3.s3_region_up(labcfg, lambda m: None, 1)
    wall = time.monotonic() - started
    times = sorted(took for took, _rc, _err in runs)
    hangs = [err for _took, rc, err in runs if rc == -1 or "Timeout (" in err]
    failures = [err for _took, rc, err in runs if rc != 0]
    print(
        f"soak: {len(runs)} pushes in {wall:.0f}s, {len(failures)} failed, {len(hangs)} hung; "
        f"push time median {statistics.median(times):.2f}s, "
        f"p95 {times[int(len(times) * 0.95) - 1]:.2f}s, max {times[-1]:.2f}s; "
        f"{sum(took >= wal.OPTIONAL_DEADLINE for took in times)} waited for the black hole"
    )
    assert len(runs) == SOAK_PUSHES
    assert hangs == [], hangs[0]
    assert failures == [], failures[0]
    assert times[-1] < 15, times[-1]
    # Nothing lost: region B gets its pending copies; the black hole keeps one of each.
    region_b_location = store.open_locations(cfg)[2]
    wal._mark_down(cfg, "s3-region-b", up=True)
    try:
        give_up = time.monotonic() + 900
        while wal.pending_copies(cfg).get("s3-region-b") and time.monotonic() < give_up:
            if not wal.backfill_pending(cfg, [region_b_location])["s3-region-b"]["copied"]:
                time.sleep(1)  # still coming up, or marked down for a few seconds
        assert "s3-region-b" not in wal.pending_copies(cfg)
        assert wal.pending_copies(cfg)["hole"] == sorted(shas)
        for location in store.open_locations(cfg)[:3]:
            assert set(archive.list_segments(location)) == set(shas), location.name
            store.ensure_repo(location, cfg)
            decode = functools.partial(content_sha, cfg, location, tmp=tmp_path)
            with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
                decoded = dict(zip(shas, pool.map(decode, shas), strict=True))
            wrong = [name for name in shas if decoded[name] != shas[name]]
            assert wrong == [], (location.name, wrong[:5])
    finally:
        region_b_location.delete_prefix("wal")
        region_b_location.delete_prefix("repo.json")


def test_a_broken_location_is_seen_in_the_metrics_and_fires_its_alerts(
    pg_factory, walenv, tmp_path: Path
) -> None:
    """An optional location breaks under the scheduled full backup (kg-wal, as postgres, as
    cron runs it): the backup exits 1 and the metrics it leaves for node_exporter say which job
    and which location; the shipped alert rules, evaluated by promtool on exactly those samples,
    fire for both. WAL pushes keep pending copies for it, and that fires too."""
    base, config = walenv
    pg = pg_factory("waltest", archive_mode="on", archive_command="/bin/false")
    plain = config(pg=pg.backend_config(), catalog_dir=str(base / "catalog"))
    locations = plain.to_dict()["locations"]
    cfg = reconfigured(plain, [locations[0], {**locations[1], "required": False}, locations[2]])
    installed = wal_tool.install_tool(cfg, str(base / "tool"))
    pg.configure(archive_command=installed["archive_command"])
    pg.start()
    write_and_switch(pg, 1)
    wal_metrics = Path(metrics.metrics_path(cfg))
    wait_for(wal_metrics.exists, 30, "the first push's metrics")
    push_job = frozenset({("cluster", "waltest"), ("kind", "wal_push")})
    assert samples(wal_metrics)[("knowngood_backup_job_ok", push_job)] == 1
    firing(tmp_path, wal_metrics, 1, set())

    (base / "loc-b").rename(base / "loc-b.gone")  # the mount went away
    (base / "loc-b").write_text("not a directory")
    run = as_postgres([installed["tool"], "backup", "full"], timeout=300, check=False)
    assert run.returncode == 1, run.stdout + run.stderr
    got = samples(wal_metrics)
    full = frozenset({("cluster", "waltest"), ("kind", "backup_full")})
    assert got[("knowngood_backup_job_ok", full)] == 0, run.stderr
    assert ("knowngood_backup_job_last_success_timestamp_seconds", full) not in got
    down = frozenset({("cluster", "waltest"), ("location", "local-b")})
    assert got[("knowngood_backup_location_up", down)] == 0, run.stderr
    assert got[("knowngood_wal_pending_copies", down)] >= 1  # the backup's own segments
    up = frozenset({("cluster", "waltest"), ("location", "local-a")})
    assert got[("knowngood_backup_location_up", up)] == 1
    failed = ("KnowngoodBackupJobFailed", "kind", "backup_full")
    firing(tmp_path, wal_metrics, 1, {failed})
    location = ("KnowngoodBackupLocationDown", "location", "local-b")
    firing(tmp_path, wal_metrics, 10, {failed, location})
    pending = ("KnowngoodWalCopiesPending", "location", "local-b")
    firing(tmp_path, wal_metrics, 16, {failed, location, pending})
