"""RDS restore against moto: preflight refusals, PITR, snapshot restore, cutover, check mode."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import boto3
import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.knowngood.runbooks.plugins.module_utils import rds
from ansible_collections.knowngood.runbooks.plugins.modules import rds_restore
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws

REPO = Path(__file__).resolve().parents[2]
REGION = "eu-west-1"
RESULT_KEYS = {
    "changed",
    "strategy",
    "source_instance",
    "target_instance",
    "restore_time",
    "snapshot_id",
    "endpoint",
    "copied_settings",
    "cutover",
    "would_create",
    "steps",
    "api_calls",
}
WRITES = {
    "RestoreDBInstanceToPointInTime",
    "RestoreDBInstanceFromDBSnapshot",
    "ModifyDBInstance",
    "CreateDBInstance",
    "DeleteDBInstance",
}


@contextlib.contextmanager
def mocked_aws():
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": REGION,
        }.items():
            patch.setenv(name, value)
        with mock_aws():
            yield


@pytest.fixture
def lab():
    """A fresh account for a test that restores (it changes the account)."""
    with mocked_aws():
        yield build_lab()


def build_lab():
    """orders: subnet group, security group, custom parameter group, automated + manual
    snapshot; billing: another instance with its own snapshot. Moto takes about 2 s."""
    ec2 = boto3.client("ec2", region_name=REGION)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(
            VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{REGION}{zone}"
        )["Subnet"]["SubnetId"]
        for i, zone in ((1, "a"), (2, "b"))
    ]
    sg = ec2.create_security_group(GroupName="orders-db", Description="db", VpcId=vpc)["GroupId"]
    client = boto3.client("rds", region_name=REGION)
    client.create_db_subnet_group(
        DBSubnetGroupName="orders-subnets", DBSubnetGroupDescription="orders", SubnetIds=subnets
    )
    client.create_db_parameter_group(
        DBParameterGroupName="orders-pg16",
        DBParameterGroupFamily="postgres16",
        Description="orders",
    )
    client.create_db_instance(
        DBInstanceIdentifier="orders",
        Engine="postgres",
        DBInstanceClass="db.t3.medium",
        AllocatedStorage=20,
        MasterUsername="app",
        MasterUserPassword="not-a-secret-1",
        DBSubnetGroupName="orders-subnets",
        VpcSecurityGroupIds=[sg],
        DBParameterGroupName="orders-pg16",
        BackupRetentionPeriod=7,
        MultiAZ=False,
        PubliclyAccessible=False,
        Port=5433,
        StorageType="gp3",
        DeletionProtection=True,
        Tags=[{"Key": "app", "Value": "orders"}],
    )
    time.sleep(0.01)
    client.create_db_snapshot(
        DBInstanceIdentifier="orders", DBSnapshotIdentifier="orders-before-migration"
    )
    client.create_db_instance(
        DBInstanceIdentifier="billing",
        Engine="postgres",
        DBInstanceClass="db.t3.micro",
        AllocatedStorage=20,
        MasterUsername="app",
        MasterUserPassword="not-a-secret-2",
        BackupRetentionPeriod=7,
    )
    client.create_db_snapshot(DBInstanceIdentifier="billing", DBSnapshotIdentifier="billing-1")
    source = client.describe_db_instances(DBInstanceIdentifier="orders")["DBInstances"][0]
    return {"client": client, "sg": sg, "source": source}


def api_for(client):
    return rds.Api(client, sleep=lambda _seconds: None)


def request(**overrides):
    values = {
        "source_instance": "orders",
        "target_instance": "orders-restored",
        "confirm": "orders",
        "tags": {"knowngood_run_id": "run-42"},
    }
    values.update(overrides)
    return rds.RestoreRequest(**values)


def restore(client, check_mode=False, **overrides):
    req = request(**overrides)
    result = rds.empty_result(req)
    rds.run(api_for(client), req, result, check_mode=check_mode, delay=0)
    return result


def instance(client, name):
    return client.describe_db_instances(DBInstanceIdentifier=name)["DBInstances"][0]


def names(client):
    return sorted(i["DBInstanceIdentifier"] for i in client.describe_db_instances()["DBInstances"])


def tags_of(db):
    return {tag["Key"]: tag["Value"] for tag in db["TagList"]}


def test_pitr_to_latest_copies_subnet_group_security_groups_and_parameter_group(lab):
    client = lab["client"]
    result = restore(client, use_latest_restorable_time=True)

    restored = instance(client, "orders-restored")
    assert restored["DBSubnetGroup"]["DBSubnetGroupName"] == "orders-subnets"
    assert [g["VpcSecurityGroupId"] for g in restored["VpcSecurityGroups"]] == [lab["sg"]]
    assert restored["DBParameterGroups"][0]["DBParameterGroupName"] == "orders-pg16"
    assert restored["DBInstanceClass"] == "db.t3.medium"
    assert tags_of(restored) == {"app": "orders", "knowngood_run_id": "run-42"}
    # moto's PITR copies most of the source by itself; AWS does not, so the request must say it.
    sent = result["would_create"]["parameters"]
    assert result["would_create"]["operation"] == "RestoreDBInstanceToPointInTime"
    assert sent["UseLatestRestorableTime"] is True and "RestoreTime" not in sent
    assert sent["DBSubnetGroupName"] == "orders-subnets"
    assert sent["VpcSecurityGroupIds"] == [lab["sg"]]
    assert sent["DBParameterGroupName"] == "orders-pg16"
    assert sent["Port"] == 5433 and sent["StorageType"] == "gp3" and sent["MultiAZ"] is False
    assert sent["PubliclyAccessible"] is False and sent["DeletionProtection"] is False
    assert result["copied_settings"]["DBParameterGroupName"] == "orders-pg16"
    assert result["changed"] is True and set(result) == RESULT_KEYS
    # moto reports LatestRestorableTime as "now": the restore is at or after the fixture's read.
    assert result["restore_time"] >= lab["source"]["LatestRestorableTime"].isoformat()
    assert result["endpoint"]["address"].startswith("orders-restored.")
    assert result["endpoint"]["port"] == 5433
    assert result["snapshot_id"] is None
    assert set(result["steps"]) == {"preflight", "restore", "wait"}
    assert "RestoreDBInstanceToPointInTime" in result["api_calls"]
    assert "ModifyDBInstance" not in result["api_calls"]
    assert instance(client, "orders")["DBInstanceStatus"] == "available"


def test_pitr_to_a_target_time_with_an_offset_restores_to_that_utc_instant(lab):
    client = lab["client"]
    wanted = datetime.now(UTC)
    in_paris = wanted.astimezone(timezone(timedelta(hours=2))).isoformat()
    assert in_paris.endswith("+02:00")

    result = restore(client, target_time=in_paris)

    assert result["restore_time"] == wanted.isoformat()
    assert result["would_create"]["parameters"]["RestoreTime"] == wanted.isoformat()
    assert "UseLatestRestorableTime" not in result["would_create"]["parameters"]
    assert "DescribeDBInstanceAutomatedBackups" in result["api_calls"]
    assert instance(client, "orders-restored")["DBInstanceStatus"] == "available"


def test_snapshot_restore_sets_what_aws_would_not_carry_over(lab):
    client = lab["client"]
    result = restore(client, strategy="snapshot", snapshot_id="orders-before-migration")

    restored = instance(client, "orders-restored")
    # moto, like AWS, starts a snapshot restore in the default groups: these came from the request.
    assert restored["DBParameterGroups"][0]["DBParameterGroupName"] == "orders-pg16"
    assert [g["VpcSecurityGroupId"] for g in restored["VpcSecurityGroups"]] == [lab["sg"]]
    assert restored["DBSubnetGroup"]["DBSubnetGroupName"] == "orders-subnets"
    assert result["snapshot_id"] == "orders-before-migration"
    assert result["would_create"]["operation"] == "RestoreDBInstanceFromDBSnapshot"
    snap = client.describe_db_snapshots(DBSnapshotIdentifier="orders-before-migration")
    assert result["restore_time"] == snap["DBSnapshots"][0]["SnapshotCreateTime"].isoformat()
    assert tags_of(restored)["knowngood_run_id"] == "run-42"


def test_snapshot_default_is_the_newest_of_the_source_taken_before_target_time(lab):
    client = lab["client"]
    snaps = client.describe_db_snapshots(DBInstanceIdentifier="orders")["DBSnapshots"]
    automated = next(s for s in snaps if s["SnapshotType"] == "automated")
    manual = next(s for s in snaps if s["SnapshotType"] == "manual")
    between = (
        automated["SnapshotCreateTime"]
        + (manual["SnapshotCreateTime"] - automated["SnapshotCreateTime"]) / 2
    )

    newest = restore(client, check_mode=True, strategy="snapshot")
    before = restore(client, check_mode=True, strategy="snapshot", target_time=between.isoformat())

    assert newest["snapshot_id"] == "orders-before-migration"
    assert before["snapshot_id"] == automated["DBSnapshotIdentifier"]
    assert names(client) == ["billing", "orders"]


def test_cutover_gives_the_restore_the_source_name_and_keeps_the_old_instance(lab):
    client = lab["client"]
    result = restore(client, use_latest_restorable_time=True, cutover=True)

    old_name = result["cutover"]["old_instance"]
    assert old_name.startswith("orders-pre-restore-") and len(old_name) == len("orders") + 27
    assert names(client) == ["billing", "orders", old_name]
    # moto gives every instance the same DbiResourceId, so the run-id tag tells them apart.
    old = instance(client, old_name)
    assert "knowngood_run_id" not in tags_of(old) and old["DeletionProtection"] is True
    now_live = instance(client, "orders")
    assert tags_of(now_live)["knowngood_run_id"] == "run-42"
    assert now_live["DeletionProtection"] is True
    assert result["cutover"] == {
        "done": True,
        "renamed_from": "orders-restored",
        "renamed_to": "orders",
        "old_instance": old_name,
    }
    assert result["endpoint"]["address"].startswith("orders.")
    assert result["endpoint"] == {"address": now_live["Endpoint"]["Address"], "port": 5433}
    assert result["api_calls"].count("ModifyDBInstance") == 2
    assert "cutover" in result["steps"]
    assert "DeleteDBInstance" not in result["api_calls"]


def test_failed_second_rename_moves_the_source_back(lab):
    client = lab["client"]

    class RenameFails(rds.Api):
        def call(self, method, **kwargs):
            if (
                method == "modify_db_instance"
                and kwargs["DBInstanceIdentifier"] == "orders-restored"
            ):
                self.calls.append("ModifyDBInstance")
                raise ClientError(
                    {"Error": {"Code": "InvalidDBInstanceState", "Message": "busy"}},
                    "ModifyDBInstance",
                )
            return super().call(method, **kwargs)

    req = request(use_latest_restorable_time=True, cutover=True)
    result = rds.empty_result(req)
    with pytest.raises(rds.RdsRestoreError, match="renamed back to orders"):
        rds.run(RenameFails(client, sleep=lambda _s: None), req, result, delay=0)

    assert names(client) == ["billing", "orders", "orders-restored"]
    assert "knowngood_run_id" not in tags_of(instance(client, "orders"))
    assert result["changed"] is True and result["cutover"]["done"] is False


def test_check_mode_runs_the_preflight_and_creates_nothing(lab):
    client = lab["client"]
    result = restore(client, check_mode=True, use_latest_restorable_time=True, cutover=True)

    assert names(client) == ["billing", "orders"]
    assert result["changed"] is True
    assert result["would_create"]["parameters"]["TargetDBInstanceIdentifier"] == "orders-restored"
    assert result["would_create"]["parameters"]["DBParameterGroupName"] == "orders-pg16"
    assert result["cutover"]["done"] is False
    assert result["cutover"]["old_instance"].startswith("orders-pre-restore-")
    assert not WRITES & set(result["api_calls"])
    assert result["endpoint"] == {"address": None, "port": None}
    json.dumps(result)


def _iso(delta):
    return (datetime.now(UTC) + delta).isoformat()


BAD_INPUTS = {
    "target_time without offset": (dict(target_time="2024-05-01T13:45:00"), "with an offset"),
    "target_time garbage": (dict(target_time="yesterday"), "with an offset"),
    "target_time in the future": (dict(target_time=_iso(timedelta(hours=1))), "in the future"),
    "snapshot target_time in the future": (
        dict(strategy="snapshot", target_time=_iso(timedelta(hours=1))),
        "in the future",
    ),
    "target_time before the earliest": (
        dict(target_time=_iso(timedelta(hours=-1))),
        "before the earliest restorable time",
    ),
    "both time and latest": (
        dict(target_time=_iso(timedelta(0)), use_latest_restorable_time=True),
        "exactly one",
    ),
    "neither time nor latest": ({}, "exactly one"),
    "unknown snapshot": (dict(strategy="snapshot", snapshot_id="nope"), "does not exist"),
    "snapshot of another instance": (
        dict(strategy="snapshot", snapshot_id="billing-1"),
        "not of source instance orders",
    ),
    "snapshot after target_time": (
        dict(
            strategy="snapshot",
            snapshot_id="orders-before-migration",
            target_time=_iso(timedelta(hours=-1)),
        ),
        "after target_time",
    ),
    "snapshot_id with pitr": (
        dict(snapshot_id="orders-before-migration", use_latest_restorable_time=True),
        "snapshot_id is for strategy=snapshot",
    ),
    "latest with snapshot": (
        dict(strategy="snapshot", use_latest_restorable_time=True),
        "is for strategy=pitr",
    ),
    "wrong confirm": (dict(use_latest_restorable_time=True, confirm="order"), "confirm must"),
    "missing confirm": (dict(use_latest_restorable_time=True, confirm=None), "confirm must"),
    "target equals source": (
        dict(use_latest_restorable_time=True, target_instance="ORDERS"),
        "must differ",
    ),
    "target already exists": (
        dict(use_latest_restorable_time=True, target_instance="billing"),
        "already exists",
    ),
    "unknown source": (
        dict(use_latest_restorable_time=True, source_instance="nosuch", confirm="nosuch"),
        "does not exist",
    ),
    "invalid target name": (
        dict(use_latest_restorable_time=True, target_instance="orders--x"),
        "not a valid",
    ),
    "cutover without wait": (
        dict(use_latest_restorable_time=True, cutover=True, wait=False),
        "needs wait=true",
    ),
}


@pytest.fixture(scope="class")
def refusing_lab():
    """One account for every refusal case (each case proves it wrote nothing, so a case that
    did would fail itself, not a later one): 36 fresh accounts took 70 s of make test."""
    with mocked_aws():
        yield build_lab()


class TestRefusals:
    @pytest.mark.parametrize("case", sorted(BAD_INPUTS))
    @pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
    def test_bad_input_is_refused_clearly_and_creates_nothing(self, refusing_lab, case, check_mode):
        refused(refusing_lab["client"], case, check_mode)


def refused(client, case, check_mode):
    overrides, message = BAD_INPUTS[case]
    req = request(**overrides)
    result = rds.empty_result(req)
    api = api_for(client)

    with pytest.raises(rds.RdsRestoreError, match=message):
        rds.run(api, req, result, check_mode=check_mode, delay=0)

    assert names(client) == ["billing", "orders"]
    assert not WRITES & set(api.calls)
    assert result["changed"] is False and set(result) == RESULT_KEYS


def test_earliest_time_comes_from_the_restore_window_when_aws_reports_it():
    client = boto3.client(
        "rds", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x"
    )
    earliest = datetime(2024, 5, 1, 0, 0, tzinfo=UTC)
    source = {"DBInstanceIdentifier": "orders", "DbiResourceId": "db-ORDERS"}
    with Stubber(client) as stub:
        stub.add_response(
            "describe_db_instance_automated_backups",
            {
                "DBInstanceAutomatedBackups": [
                    {
                        "DBInstanceIdentifier": "orders",
                        "DbiResourceId": "db-OLD",
                        "RestoreWindow": {"EarliestTime": datetime(2024, 4, 1, tzinfo=UTC)},
                    },
                    {
                        "DBInstanceIdentifier": "orders",
                        "DbiResourceId": "db-ORDERS",
                        "RestoreWindow": {"EarliestTime": earliest},
                    },
                ]
            },
            {"DBInstanceIdentifier": "orders"},
        )
        found, origin = rds.earliest_restorable_time(api_for(client), source)
    assert found == earliest and "RestoreWindow" in origin


def test_throttling_is_retried_with_jittered_backoff_other_errors_are_not():
    client = boto3.client(
        "rds", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x"
    )
    slept = []
    api = rds.Api(client, sleep=slept.append, base_delay=1.0, max_delay=30.0)
    with Stubber(client) as stub:
        stub.add_client_error("describe_db_instances", service_error_code="Throttling")
        stub.add_client_error("describe_db_instances", service_error_code="Throttling")
        stub.add_response("describe_db_instances", {"DBInstances": []})
        stub.add_client_error("describe_db_instances", service_error_code="AccessDenied")
        assert api.call("describe_db_instances") == {"DBInstances": []}
        with pytest.raises(ClientError):
            api.call("describe_db_instances")
    assert len(slept) == 2 and 0 <= slept[0] <= 2 and 0 <= slept[1] <= 4
    assert api.calls == ["DescribeDBInstances", "DescribeDBInstances"]


def test_target_time_parsing_accepts_offsets_and_z_only():
    assert rds.parse_target_time("2024-05-01T15:45:00+0200") == datetime(
        2024, 5, 1, 13, 45, tzinfo=UTC
    )
    assert rds.parse_target_time("2024-05-01T13:45Z") == datetime(2024, 5, 1, 13, 45, tzinfo=UTC)
    for bad in ("2024-05-01", "2024-05-01T13:45:00", "1714571100", "2024-13-01T00:00:00Z"):
        with pytest.raises(rds.RdsRestoreError):
            rds.parse_target_time(bad)


def test_secrets_are_masked_in_the_reported_request():
    shown = rds.masked(
        {
            "MasterUserPassword": "hunter2",
            "Tags": [{"Key": "a", "Value": "b"}],
            "RestoreTime": datetime(2024, 5, 1, tzinfo=UTC),
        }
    )
    assert shown == {
        "MasterUserPassword": rds.MASK,
        "Tags": [{"Key": "a", "Value": "b"}],
        "RestoreTime": "2024-05-01T00:00:00+00:00",
    }


def _run_module(args, capsys):
    with patch_module_args(args), pytest.raises(SystemExit):
        rds_restore.main()
    return json.loads(capsys.readouterr().out)


def test_module_check_mode_through_ansible_plumbing(lab, capsys):
    out = _run_module(
        {
            "source_instance": "orders",
            "target_instance": "orders-restored",
            "use_latest_restorable_time": True,
            "confirm": "orders",
            "region": REGION,
            "aws_access_key": "testing",
            "aws_secret_key": "s3cr3t-value",
            "tags": {"knowngood_run_id": "run-42"},
            "_ansible_check_mode": True,
        },
        capsys,
    )

    assert not out.get("failed"), out.get("msg")
    assert set(out) >= RESULT_KEYS and out["changed"] is True
    assert out["would_create"]["parameters"]["DBParameterGroupName"] == "orders-pg16"
    assert "s3cr3t-value" not in json.dumps(out)
    assert names(lab["client"]) == ["billing", "orders"]


def test_module_failure_keeps_every_result_key(lab, capsys):
    out = _run_module(
        {
            "source_instance": "orders",
            "target_instance": "orders-restored",
            "target_time": "2024-05-01 13:45",
            "confirm": "orders",
            "region": REGION,
        },
        capsys,
    )

    assert out["failed"] is True and "with an offset" in out["msg"]
    assert set(out) >= RESULT_KEYS and out["changed"] is False


def test_module_file_runs_standalone_with_a_json_args_file(tmp_path):
    args = tmp_path / "args.json"
    args.write_text(
        json.dumps(
            {
                "ANSIBLE_MODULE_ARGS": {
                    "source_instance": "orders",
                    "target_instance": "orders",
                    "confirm": "orders",
                    "use_latest_restorable_time": True,
                    "region": REGION,
                    "endpoint_url": "http://127.0.0.1:9",
                    "aws_access_key": "x",
                    "aws_secret_key": "x",
                }
            }
        )
    )
    env = dict(os.environ, PYTHONPATH=str(REPO / "collections"))
    proc = subprocess.run(
        [sys.executable, str(REPO / "plugins/modules/rds_restore.py"), str(args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    out = json.loads(proc.stdout)
    assert proc.returncode == 1 and out["failed"] is True
    assert "must differ" in out["msg"] and out["api_calls"] == []
    assert set(out) >= RESULT_KEYS
