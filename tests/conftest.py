"""Shared fixtures: a lab of the tests' own, and helpers to run runbooks against it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from knowngood.traffic import Traffic

REPO = Path(__file__).resolve().parents[1]
# Unit tests import the collection's plugins the way Ansible does: ansible_collections.knowngood.
sys.path.insert(0, str(REPO / "collections"))
BIN = Path(sys.executable).parent
# `make test` runs the integration tests on two pytest-xdist workers, each with a lab of its own:
# worker N takes the lab directory <root>-gwN and the ports <base> + 1000 * N. Set here, before
# any test module reads them. The demo's lab (25000, /var/lib/knowngood-lab) is never touched.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _WORKER.startswith("gw"):
    os.environ["KNOWNGOOD_TEST_LAB"] = (
        os.environ.get("KNOWNGOOD_TEST_LAB", "/tmp/knowngood-test-lab") + "-" + _WORKER
    )
    os.environ["KNOWNGOOD_TEST_BASE_PORT"] = str(
        int(os.environ.get("KNOWNGOOD_TEST_BASE_PORT", "27000")) + 1000 * int(_WORKER[2:])
    )
TEST_LAB_ROOT = Path(os.environ.get("KNOWNGOOD_TEST_LAB", "/tmp/knowngood-test-lab"))
TEST_BASE_PORT = int(os.environ.get("KNOWNGOOD_TEST_BASE_PORT", "27000"))


# `make test` must stay under 20 minutes on 2 cores; these slower proofs run with
# `make test-extended` (and before a release). Each is backed by a faster test in `make test` or
# by a drill: pgBackRest is the optional engine; the native engine's failure classes, SSH mode,
# the rebuild from region B (drill disaster_recovery), the corruption repair, the PITR runbook
# end to end (test_pitr proves every target in make test; drill database_pitr), a region down
# during a backup (test_wal proves the pending copies in make test) and the WAL soak (test_wal
# proves a black-holed location's bound and the watchdog's exit status in make test).
EXTENDED = {
    "test_database_rollback.py": {
        "test_pitr_to_deploy_restore_point_stops_writes_and_reseeds_standby",
        # test_pitr proves these refusals at the engine; the archive-reading ones run here
        "test_every_other_planner_refusal_stops_before_writes_stop",
    },
    "test_backup_runbooks.py": {
        "test_region_down_during_backup_is_retried_reported_and_others_complete",
    },
    "test_pgbackrest_engine.py": None,  # the whole module
    # The collection tarball by FQCN and the wheel outside the checkout, against the lab (about
    # 60 s past the lab: build, install, venv, three rollbacks); test_packaging.py (unit) proves
    # the FQCN names, introspect and the CLI pieces in make test.
    "test_distribution.py": None,
    "test_native_backup.py": {
        "test_full_incremental_wal_round_trip",
        "test_corruption_classes_and_wal_gap_are_named",
        "test_kill_9_midway_leaves_nothing_valid_and_next_run_succeeds",
        "test_target_disk_full",
        "test_clear_errors_before_anything_changes",
        "test_restore_tier_with_sentinel_reports_rto",
        "test_unbundled_backups_still_restore_in_a_mixed_chain",
        "test_local_location_defers_fsync_until_flush",
    },
    "test_ssh_mode.py": None,
    "test_wal.py": {
        "test_soak_with_a_region_down_and_a_black_hole_never_hangs_and_loses_nothing",
    },
    # The systemd units rendered into a temporary root (this machine has no systemd as PID 1):
    # two playbook runs; the cron path, the one that runs here, is proven in make test.
    "test_drill_schedule.py": {"test_systemd_units_rendered_into_a_root"},
    "test_recovery.py": {
        "test_complete_outage_with_region_a_down_is_rebuilt_in_order_from_region_b",
        "test_corrupted_table_is_detected_by_verify_and_repaired_by_a_table_restore",
        # a failover bug's regression test; with its fixture (setup-backups, a full backup)
        # a minute of make test
        "test_promoted_standby_archives_its_timeline_to_the_backup_locations",
        # make test runs the failover under synchronous replication; this measures async's loss
        "test_primary_killed_with_asynchronous_replication_measures_the_data_loss",
    },
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        names = EXTENDED.get(item.path.name, ())
        if names is None or item.originalname in names:
            item.add_marker(pytest.mark.extended)
        # Busy loops on every core would load the other worker's lab too: `make test` runs
        # these tests after the parallel ones, on their own.
        if "cpu_hogs" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.hogs)


@dataclass
class PlaybookRun:
    rc: int
    output: str
    recap: dict[str, dict[str, int]]

    def changed(self) -> int:
        return sum(h["changed"] for h in self.recap.values())


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    recap = {}
    for line in output.split("PLAY RECAP")[-1].splitlines():
        match = re.match(r"^(\S+)\s+:\s+(.*)$", line.strip())
        if match:
            recap[match.group(1)] = {
                k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))
            }
    return recap


def ansible_env(lab_root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "KNOWNGOOD_LAB_DIR": str(lab_root),
            "KNOWNGOOD_AUDIT_DIR": str(lab_root / "audit"),
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_NOCOLOR": "1",
            "PATH": f"{BIN}:{env.get('PATH', '')}",
        }
    )
    env.pop("KNOWNGOOD_RUN_ID", None)
    return env


@dataclass
class Lab:
    root: Path
    status: dict

    @property
    def inventory(self) -> str:
        return self.status["inventory"]

    def playbook(self, name: str, *args: str, check: bool = False, **extra) -> PlaybookRun:
        argv = [str(BIN / "ansible-playbook"), "-i", self.inventory, f"playbooks/{name}.yml"]
        if check:
            argv += ["--check", "--diff"]
        for key, value in extra.items():
            argv += ["-e", json.dumps({key: value})]
        argv += list(args)
        proc = subprocess.run(
            argv,
            cwd=REPO,
            env=ansible_env(self.root),
            capture_output=True,
            text=True,
            timeout=600,
        )
        output = proc.stdout + proc.stderr
        return PlaybookRun(proc.returncode, output, parse_recap(output))

    def reset(self) -> None:
        """Every test starts from empty hosts, schema and a blue live pool."""
        from knowngood.lab import core
        from knowngood.lab.config import LabConfig

        core.reset(LabConfig.load(self.root))

    def seed(self, *releases: str) -> None:
        """Leave every host as if each release had been deployed and verified in turn.

        Builds the same state deploy-code.yml leaves (unpacked release, ledger events, slot
        link, reloaded instance, schema migrated), without a playbook per release: the
        runbook under test then starts from a realistic history in a fraction of a second.
        deploy-code.yml itself is tested on its own.
        """
        import tarfile

        from ansible_collections.knowngood.runbooks.plugins.module_utils import migrations
        from ansible_collections.knowngood.runbooks.plugins.module_utils import release as rel

        artifacts = self.root / "artifacts"
        last = releases[-1]
        for host in self.status["hosts"]:
            layout = rel.Layout(host["root"])
            previous = None
            for rid in releases:
                if not Path(layout.release_dir(rid)).exists():
                    with tarfile.open(artifacts / f"{rid}.tar.gz") as archive:
                        archive.extractall(layout.release_dir(rid), filter="data")
                checksum = rel.tree_checksum(layout.release_dir(rid))
                for status in ("registered", "deployed", "known-good"):
                    rel.append_event(
                        layout,
                        {
                            "release_id": rid,
                            "status": status,
                            "checksum": checksum,
                            "previous": previous,
                            "run_id": "seed",
                            "reason": "test history",
                        },
                    )
                previous = rid
            rel.swap_symlink(layout.slot("blue"), f"../releases/{last}")
            pid = int((self.root / "run" / f"{host['name']}-blue.pid").read_text())
            os.kill(pid, signal.SIGHUP)
        schema_dirs = [
            str(
                artifacts.parent
                / "hosts"
                / self.status["hosts"][0]["name"]
                / "releases"
                / last
                / "migrations"
            )
        ]
        import psycopg

        with psycopg.connect(self.status["postgres"]["primary_dsn"], autocommit=True) as conn:
            schema = rel.read_manifest(rel.Layout(self.status["hosts"][0]["root"]), last)
            steps = migrations.plan_sql(
                migrations.applied_revisions(conn),
                schema["schema"],
                migrations.scan_sql_dirs(schema_dirs),
                latest=True,
            )
            migrations.apply_sql(conn, steps, "seed")
        blue = [host["app_urls"]["blue"] + "/version" for host in self.status["hosts"]]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if all(http_json(url).get("release") == last for url in blue):
                break
            time.sleep(0.02)
        assert self.live_releases() == {last}

    def ledger(self, host: int = 0) -> list[dict]:
        path = Path(self.status["hosts"][host]["root"]) / ".knowngood" / "ledger.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def lock_file(self, host: str) -> Path:
        """The host run lock's file, where every destructive runbook takes it (run_lock_path)."""
        from ansible_collections.knowngood.runbooks.plugins.module_utils.run_lock import lock_path

        inv = json.loads(Path(self.inventory).with_suffix(".json").read_text())
        for group in inv["all"]["children"].values():
            if host in group.get("hosts", {}):
                return Path(lock_path(group["hosts"][host]))
        raise KeyError(host)

    def locked_hosts(self) -> list[str]:
        """Hosts of the inventory whose run lock file exists (none, after any finished run)."""
        inv = json.loads(Path(self.inventory).with_suffix(".json").read_text())
        hosts = [h for group in inv["all"]["children"].values() for h in group.get("hosts", {})]
        return [h for h in hosts if self.lock_file(h).exists()]

    def lock_messages(self) -> list[str]:
        """What the last run's audit record says its run_lock tasks did, one line per host."""
        records = [p for p in (self.root / "audit").glob("kg-*.json") if p.suffixes == [".json"]]
        record = max(records, key=os.path.getmtime)  # not a runbook's report, <run>.<name>.json
        return [
            lock["msg"]
            for event in json.loads(record.read_text())["events"]
            if event["action"].endswith("run_lock")
            for lock in event["result"].get("locks", [])
        ]

    def serving(self) -> list[str]:
        """Release each host's blue and green instance serves."""
        return [
            http_json(url + "/version").get("release")
            for host in self.status["hosts"]
            for url in host["app_urls"].values()
        ]

    def live_releases(self) -> set[str]:
        """Releases the load balancer serves across enough requests to reach every host."""
        seen = set()
        for _ in range(6 * len(self.status["hosts"])):
            seen.add(http_json(self.status["lb_url"] + "/version").get("release"))
        return seen


def http_json(url: str, timeout: float = 5) -> dict:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            return json.loads(exc.read())
        except ValueError:
            return {"error": exc.code}


# The tests' load client is the one drills and the demo use.
LoadClient = Traffic


def knowngood(*args: str, root: Path = TEST_LAB_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "knowngood"), "--root", str(root), *args],
        cwd=REPO,
        env=ansible_env(root),
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="session")
def lab_session() -> Lab:
    up = knowngood("lab", "up", "--hosts", "3", "--base-port", str(TEST_BASE_PORT))
    assert up.returncode == 0, up.stdout + up.stderr
    status = json.loads(knowngood("lab", "status", "--json").stdout)
    yield Lab(TEST_LAB_ROOT, status)
    if not os.environ.get("KNOWNGOOD_KEEP_LAB"):
        knowngood("lab", "down")


@pytest.fixture
def lab(lab_session: Lab) -> Lab:
    lab_session.reset()
    return lab_session


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def cpu_hogs():
    """Two busy loops, as many as this machine's cores, for the whole test: the loaded
    controller a verdict must not confuse with a slow service. At the end each loop must have
    had at least a quarter of a core, or the test did not run under load."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _core in range(2)]
    started = time.monotonic()
    yield hogs
    elapsed = time.monotonic() - started
    used = [_cpu_seconds(hog.pid) for hog in hogs]
    for hog in hogs:
        hog.kill()
        hog.wait()
    assert all(seconds >= 0.25 * elapsed for seconds in used), (used, elapsed)


# Real PostgreSQL clusters of the tests' own (tests/pgcluster.py), on ports past the lab's block.
PG_TEST_PORT_BASE = TEST_BASE_PORT + 800
_pg_ports = iter(range(PG_TEST_PORT_BASE, PG_TEST_PORT_BASE + 150))


@pytest.fixture
def pg_factory():
    """pg_factory(name, **settings) -> an initialised, not yet started PgCluster; all are
    stopped and removed at the end of the test."""
    from pgcluster import PgCluster

    made: list[PgCluster] = []

    def make(name: str = "kgtest", **settings) -> PgCluster:
        root = Path(f"/tmp/kgpg-{TEST_BASE_PORT}") / f"{name}-{len(made)}"
        cluster = PgCluster(root, port=next(_pg_ports), name=name).init(**settings)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop(remove=True)


def crafted_artifact(path: Path, kind: str, release_id: str = "evil") -> Path:
    """A release artifact that tries to write outside releases/ (the extraction tests).

    chain: each link on its own normalizes to a path inside the release (`l2 -> l1/..` is
    '.'), but unpacked in order they climb out: l3 is the deploy root, so l3/escape.txt lands
    next to releases/ (l1 is the first link that resolves outside). hardlink: a link
    `a/b/c/up -> ../../..` (the release root), then a hard link whose name normalizes inside
    (a/shared/app.conf) but resolves through `up` to the host's shared/app.conf, then a
    regular member of that name that would overwrite it. device: a character device.
    """
    import io
    import tarfile

    def entry(name, kind_, **attrs):
        info = tarfile.TarInfo(name)
        info.type = kind_
        info.mode = 0o777 if kind_ == tarfile.SYMTYPE else 0o755
        for key, value in attrs.items():
            setattr(info, key, value)
        return info

    manifest = json.dumps({"id": release_id, "schema": ["0001"]}).encode()
    members = [(entry("release.json", tarfile.REGTYPE, size=len(manifest), mode=0o644), manifest)]
    chain = [
        (entry("sub", tarfile.DIRTYPE), None),
        (entry("sub/l0", tarfile.SYMTYPE, linkname=".."), None),
        (entry("l1", tarfile.SYMTYPE, linkname="sub/l0/.."), None),
        (entry("l2", tarfile.SYMTYPE, linkname="l1/.."), None),
        (entry("l3", tarfile.SYMTYPE, linkname="l2/.."), None),
    ]
    payload = b"written outside releases/\n"
    if kind == "chain":
        members += chain
        members.append((entry("l3/escape.txt", tarfile.REGTYPE, size=len(payload)), payload))
    elif kind == "hardlink":
        members += [(entry(d, tarfile.DIRTYPE), None) for d in ("a", "a/b", "a/b/c")]
        members.append((entry("a/b/c/up", tarfile.SYMTYPE, linkname="../../.."), None))
        target = "a/b/c/up/../../../shared/app.conf"
        members.append((entry("conf", tarfile.LNKTYPE, linkname=target), None))
        members.append((entry("conf", tarfile.REGTYPE, size=len(payload)), payload))
    elif kind == "device":
        members.append((entry("null", tarfile.CHRTYPE, devmajor=1, devminor=3), None))
    else:
        raise ValueError(kind)
    with tarfile.open(path, "w:gz") as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return path
