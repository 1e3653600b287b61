"""Real lab infrastructure on this machine: postgres pair, S3 regions, Prometheus, sshd.

Needs root and the Debian packages (postgresql-15, prometheus, openssh-server); skipped elsewhere.
Each test brings up what it needs itself (every *_up is idempotent), so they also run alone.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from knowngood import errors
from knowngood.lab import core, postgres, prometheus, s3, sshd
from knowngood.lab.config import PG_BIN, LabConfig

pytestmark = pytest.mark.lab

BASE_PORT = 31000
SSH_ADDRESS = "127.0.1.1"


def _missing_prerequisites() -> str | None:
    if os.geteuid() != 0:
        return "lab infrastructure needs root"
    for path in (PG_BIN / "postgres", prometheus.PROMETHEUS_BIN, sshd.SSHD_BIN):
        if not path.exists():
            return f"{path} not installed"
    return None


def _eventually(check: Callable[[], object], timeout: float = 15.0) -> object:
    """Poll until check returns something truthy; its last value (or error) explains a failure."""
    deadline = time.monotonic() + timeout
    result: object = None
    while True:
        try:
            result = check()
            if result:
                return result
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s (last value {result!r})")
        time.sleep(0.2)


def _port_busy(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@pytest.fixture(scope="module")
def cfg() -> Iterator[LabConfig]:
    reason = _missing_prerequisites()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="kg-infra-test-", dir="/tmp"))
    root.chmod(0o755)  # mkdtemp makes 0700, which the postgres user could not traverse
    lab = LabConfig(root=root, base_port=BASE_PORT, ssh=True, hosts=1)
    try:
        yield lab
    finally:
        core.infra_down(lab)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def progress() -> list[str]:
    return []


def _log(lines: list[str]) -> Callable[[str], None]:
    return lines.append


def _pg(dsn: str) -> object:
    import psycopg

    return psycopg.connect(dsn, autocommit=True, connect_timeout=5)


def test_postgres_replicates_and_archives(cfg: LabConfig, progress: list[str]) -> None:
    postgres.postgres_up(cfg, _log(progress))
    status = postgres.postgres_status(cfg)
    assert status["running"] == {"primary": True, "standby": True}
    assert status["standby_streaming"] is True

    token = uuid.uuid4().hex
    with _pg(status["primary_dsn"]) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS probe (token text PRIMARY KEY)")
        conn.execute("INSERT INTO probe VALUES (%s)", (token,))
        owner = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
        ).fetchone()
    assert owner == ("app",)

    def on_standby() -> bool:
        with _pg(status["standby_dsn"]) as conn:
            return conn.execute("SELECT 1 FROM probe WHERE token = %s", (token,)).fetchone()

    _eventually(on_standby)

    with _pg(status["superuser_dsn"]) as conn:
        assert conn.execute("SHOW cluster_name").fetchone() == (cfg.name,)
        assert conn.execute("SHOW data_checksums").fetchone() == ("on",)
        segment = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
    archived = Path(status["wal_archive_dir"]) / segment
    _eventually(archived.exists)

    before = core.pids(cfg)
    postgres.postgres_up(cfg, _log(progress))
    after = core.pids(cfg)
    assert {k: after[k] for k in ("postgres-primary", "postgres-standby")} == {
        k: before[k] for k in ("postgres-primary", "postgres-standby")
    }


def test_postgres_rejects_untraversable_root(progress: list[str]) -> None:
    if _missing_prerequisites():
        pytest.skip(_missing_prerequisites())
    locked = Path(tempfile.mkdtemp(prefix="kg-infra-locked-", dir="/tmp"))  # 0700, root-owned
    try:
        lab = LabConfig(root=locked / "lab", base_port=BASE_PORT + 1000)
        with pytest.raises(errors.LabError, match="cannot be traversed"):
            postgres.postgres_up(lab, _log(progress))
    finally:
        shutil.rmtree(locked, ignore_errors=True)


def test_s3_regions_keep_versions(cfg: LabConfig, progress: list[str]) -> None:
    s3.s3_up(cfg, _log(progress))
    status = s3.s3_status(cfg)
    assert set(status) == {"region-a", "region-b"}
    access, secret = s3.s3_credentials(cfg)
    assert secret not in json.dumps(status)

    for region, info in status.items():
        assert info["running"] and info["access_key"] == access
        client = s3.s3_client(cfg, region)
        bucket = info["bucket"]
        versioning = client.get_bucket_versioning(Bucket=bucket)
        assert versioning["Status"] == "Enabled"
        first = client.put_object(Bucket=bucket, Key="backup.dump", Body=b"v1")["VersionId"]
        client.put_object(Bucket=bucket, Key="backup.dump", Body=b"v2")
        versions = client.list_object_versions(Bucket=bucket, Prefix="backup.dump")["Versions"]
        assert len(versions) == 2
        assert client.get_object(Bucket=bucket, Key="backup.dump")["Body"].read() == b"v2"
        old = client.get_object(Bucket=bucket, Key="backup.dump", VersionId=first)
        assert old["Body"].read() == b"v1"

    before = core.pids(cfg)
    s3.s3_up(cfg, _log(progress))
    after = core.pids(cfg)
    assert [after[f"s3-{r}"] for r in status] == [before[f"s3-{r}"] for r in status]


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


def test_prometheus_reloads_targets(cfg: LabConfig, progress: list[str]) -> None:
    prometheus.prometheus_up(cfg, _log(progress), [])
    url = prometheus.prometheus_status(cfg)["url"]
    with urllib.request.urlopen(f"{url}/-/ready", timeout=5) as resp:
        assert resp.status == 200
    pid = core.pids(cfg)["prometheus"]

    target = f"127.0.0.1:{cfg.app_ports(0)['blue']}"
    labels = {target: {"host": "app1", "pool": "blue"}}
    prometheus.prometheus_up(cfg, _log(progress), [target], labels)
    assert core.pids(cfg)["prometheus"] == pid
    assert any("reloaded" in line for line in progress)

    def target_labels() -> dict | None:
        active = _get_json(f"{url}/api/v1/targets")["data"]["activeTargets"]
        return next((t["labels"] for t in active if t["labels"]["instance"] == target), None)

    found = _eventually(target_labels)
    assert found["job"] == "app" and found["host"] == "app1" and found["pool"] == "blue"

    with pytest.raises(errors.LabError, match="host:port"):
        prometheus.prometheus_up(cfg, _log(progress), ["not a target"])
    assert prometheus.prometheus_status(cfg)["running"]


def test_sshd_runs_commands_on_host_address(cfg: LabConfig, progress: list[str]) -> None:
    if core.pids(cfg).get("sshd-app1") is None and _port_busy(SSH_ADDRESS, 22):
        pytest.skip(f"{SSH_ADDRESS}:22 is taken by another sshd (another lab in SSH mode?)")
    sshd.sshd_up(cfg, _log(progress), 0)
    status = sshd.sshd_status(cfg, 0)
    assert status == {"host": "app1", "address": SSH_ADDRESS, "port": 22, "running": True}

    opts = sshd.ssh_client_options(cfg)
    argv = [
        "ssh",
        "-i",
        opts["private_key_file"],
        *opts["ssh_common_args"].split(),
        "-o",
        "BatchMode=yes",
        f"{opts['user']}@{SSH_ADDRESS}",
        "true",
    ]
    assert subprocess.run(argv, timeout=30, capture_output=True).returncode == 0

    pid = core.pids(cfg)["sshd-app1"]
    sshd.sshd_up(cfg, _log(progress), 0)
    assert core.pids(cfg)["sshd-app1"] == pid

    sshd.sshd_down(cfg, 0)
    sshd.sshd_down(cfg, 0)
    assert not sshd.sshd_status(cfg, 0)["running"]


def test_infra_down_stops_everything(cfg: LabConfig, progress: list[str]) -> None:
    postgres.postgres_up(cfg, _log(progress))
    s3.s3_up(cfg, _log(progress))
    assert core.pids(cfg)
    core.infra_down(cfg)
    core.infra_down(cfg)
    assert core.pids(cfg) == {}
    status = core.infra_status(cfg)
    assert not any(status["postgres"]["running"].values())
    assert not any(region["running"] for region in status["s3"].values())
    assert not status["prometheus"]["running"]
