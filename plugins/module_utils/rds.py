# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restore an RDS instance to a point in time or from a snapshot, next to the source.

Order of work: preflight (read-only, fails closed) -> restore -> wait -> optional cutover
(rename source to <source>-pre-restore-<stamp>, then the restore to the source's name). The
old instance is never deleted. Every AWS call goes through Api.call, which records the
operation for the audit and retries throttling only, with module_utils/aws's jittered retry.
"""

import re
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ansible_collections.knowngood.runbooks.plugins.module_utils import aws

try:
    # HAS_BOTO3 (the module's missing_required_lib); clients come from module_utils/aws.
    import boto3  # noqa: F401 pylint: disable=unused-import
    from botocore.exceptions import BotoCoreError, ClientError

    HAS_BOTO3 = True
    BOTO3_IMPORT_ERROR = None
except ImportError:
    HAS_BOTO3 = False
    BOTO3_IMPORT_ERROR = traceback.format_exc()

    class BotoCoreError(Exception):
        """Stand-in so except clauses stay valid; main() fails before any call."""

    class ClientError(Exception):
        """Stand-in so except clauses stay valid; main() fails before any call."""


STRATEGIES = ("pitr", "snapshot")
THROTTLING_CODES = frozenset(
    (
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "SlowDown",
    )
)
# RDS identifiers: 1-63 letters, digits, hyphens; a letter first; no "--"; no trailing "-".
IDENTIFIER_RE = re.compile(r"\A[A-Za-z](?!.*--)[A-Za-z0-9-]{0,62}(?<!-)\Z")
# ISO-8601 with an explicit offset; a bare local time is ambiguous at 3 a.m. and refused.
TARGET_TIME_RE = re.compile(
    r"\A(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?)"
    r"(Z|z|[+-]\d{2}:?\d{2})\Z"
)
# datetime.UTC is Python 3.11+; modules also run on older managed-host Pythons.
UTC = timezone.utc  # noqa: UP017
OLD_SUFFIX = "-pre-restore-"
MASK = "********"
SECRET_KEY_RE = re.compile(r"password|secret", re.IGNORECASE)


class RdsRestoreError(Exception):
    """The one exception the RDS helpers raise; main() turns it into fail_json."""


@dataclass
class RestoreRequest:
    source_instance: str
    target_instance: str
    strategy: str = "pitr"
    target_time: str = None
    use_latest_restorable_time: bool = False
    snapshot_id: str = None
    confirm: str = None
    cutover: bool = False
    wait: bool = True
    wait_timeout: int = 3600
    tags: dict = field(default_factory=dict)

    @classmethod
    def from_params(cls, params):
        return cls(
            **{
                name: params.get(name)
                for name in cls.__dataclass_fields__
                if params.get(name) is not None
            }
        )


def rds_client(region=None, endpoint_url=None, access_key=None, secret_key=None):
    """The one client factory. botocore's own retries are off: Api.call owns the policy."""
    if not HAS_BOTO3:
        raise RdsRestoreError("boto3 and botocore are required for knowngood.runbooks.rds")
    return aws.client(
        "rds",
        region=region,
        endpoint_url=endpoint_url,
        access_key=access_key,
        secret_key=secret_key,
        config={"retries": {"mode": "standard", "total_max_attempts": 1}},
        error=RdsRestoreError,
    )


def error_code(err):
    if isinstance(err, ClientError):
        return err.response.get("Error", {}).get("Code", "")
    return ""


class Api:
    """An RDS client whose calls are audited and retried on throttling only."""

    def __init__(self, client, attempts=6, base_delay=1.0, max_delay=30.0, sleep=time.sleep):
        self.client = client
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.sleep = sleep
        self.calls = []

    def operation(self, method):
        return self.client.meta.method_to_api_mapping.get(method, method)

    def call(self, method, **kwargs):
        self.calls.append(self.operation(method))
        # Full jitter: many runbooks hitting one account must not retry in step. The first
        # wait is up to twice base_delay.
        return aws.retry(
            lambda: getattr(self.client, method)(**kwargs),
            attempts=self.attempts,
            base_delay=2 * self.base_delay,
            max_delay=self.max_delay,
            retryable=lambda err: error_code(err) in THROTTLING_CODES,
            full_jitter=True,
            sleep=self.sleep,
        )

    def checked(self, method, what, **kwargs):
        """call(), with any AWS error turned into RdsRestoreError naming what was attempted."""
        try:
            return self.call(method, **kwargs)
        except (ClientError, BotoCoreError) as err:
            raise RdsRestoreError(
                "%s failed (%s): %s" % (what, self.operation(method), err)
            ) from err


def parse_target_time(text):
    """ISO-8601 with an offset -> aware UTC datetime; anything else is refused."""
    match = TARGET_TIME_RE.match(text.strip()) if isinstance(text, str) else None
    if not match:
        raise RdsRestoreError(
            "target_time %r is not ISO-8601 with an offset: write it like "
            "2024-05-01T13:45:00+00:00 or 2024-05-01T15:45:00+02:00 (Z is accepted); a time "
            "without an offset is refused because it is ambiguous" % (text,)
        )
    date, clock, offset = match.groups()
    if offset in ("Z", "z"):
        offset = "+00:00"
    elif ":" not in offset:
        offset = offset[:3] + ":" + offset[3:]
    try:
        return datetime.fromisoformat("%sT%s%s" % (date, clock, offset)).astimezone(UTC)
    except ValueError as err:
        raise RdsRestoreError("target_time %r is not a valid time: %s" % (text, err)) from err


def iso(moment):
    return moment.astimezone(UTC).isoformat() if moment else None


def masked(value):
    if isinstance(value, dict):
        return {
            key: MASK if SECRET_KEY_RE.search(key) else masked(item) for key, item in value.items()
        }
    if isinstance(value, list):
        return [masked(item) for item in value]
    if isinstance(value, datetime):
        return iso(value)
    return value


def validate_identifier(name, option):
    if not isinstance(name, str) or not IDENTIFIER_RE.match(name):
        raise RdsRestoreError(
            "%s %r is not a valid RDS instance identifier: 1-63 letters, digits or hyphens, "
            "starting with a letter, no '--', not ending with '-'" % (option, name)
        )


def find_instance(api, name):
    """The instance called name, or None when the name is unused."""
    try:
        found = api.call("describe_db_instances", DBInstanceIdentifier=name)["DBInstances"]
    except ClientError as err:
        if error_code(err) in ("DBInstanceNotFound", "DBInstanceNotFoundFault"):
            return None
        raise RdsRestoreError("cannot read instance %s: %s" % (name, err)) from err
    except BotoCoreError as err:
        raise RdsRestoreError("cannot read instance %s: %s" % (name, err)) from err
    return found[0] if found else None


def copied_settings(source):
    """Settings AWS does not carry onto a restore by itself, read from the source.

    Restores start in the default security group and default parameter group unless told
    otherwise, so the network and config are passed explicitly. DeletionProtection is off on
    the restored copy (so a rejected restore can be dropped); cutover turns it on to match the
    source when the copy takes the source's name.
    """
    settings = {}
    subnet_group = (source.get("DBSubnetGroup") or {}).get("DBSubnetGroupName")
    if subnet_group:
        settings["DBSubnetGroupName"] = subnet_group
    security_groups = [
        group["VpcSecurityGroupId"]
        for group in source.get("VpcSecurityGroups", [])
        if group.get("Status", "active") == "active"
    ]
    if security_groups:
        settings["VpcSecurityGroupIds"] = security_groups
    parameter_groups = [
        group["DBParameterGroupName"] for group in source.get("DBParameterGroups", [])
    ]
    if parameter_groups:
        settings["DBParameterGroupName"] = parameter_groups[0]
    for key in ("DBInstanceClass", "MultiAZ", "PubliclyAccessible", "StorageType"):
        if source.get(key) is not None:
            settings[key] = source[key]
    port = (source.get("Endpoint") or {}).get("Port") or source.get("DbInstancePort")
    if port:
        settings["Port"] = port
    settings["DeletionProtection"] = False
    return settings


def merged_tags(source, extra):
    """Source tags plus the task's (the task wins); aws:* tags are AWS's and cannot be set."""
    tags = {
        tag["Key"]: tag["Value"]
        for tag in source.get("TagList", [])
        if not tag["Key"].lower().startswith("aws:")
    }
    tags.update(
        {str(key): "" if value is None else str(value) for key, value in (extra or {}).items()}
    )
    return [{"Key": key, "Value": value} for key, value in sorted(tags.items())]


def earliest_restorable_time(api, source):
    """Earliest point PITR can reach, and where it was read from.

    AWS reports it as RestoreWindow.EarliestTime of the instance's automated backup. Where
    that is absent (moto does not model it) the oldest automated snapshot stands in. With
    neither, the bound is unknown and the caller fails closed.
    """
    name = source["DBInstanceIdentifier"]
    resource_id = source.get("DbiResourceId")
    backups = api.checked(
        "describe_db_instance_automated_backups",
        "reading the automated backups of %s" % name,
        DBInstanceIdentifier=name,
    ).get("DBInstanceAutomatedBackups", [])
    windows = [
        backup["RestoreWindow"]["EarliestTime"]
        for backup in backups
        if (backup.get("RestoreWindow") or {}).get("EarliestTime")
        and (not resource_id or backup.get("DbiResourceId", resource_id) == resource_id)
    ]
    if windows:
        return min(windows), "automated backup RestoreWindow.EarliestTime"
    snapshots = [
        snap
        for snap in list_snapshots(api, name, snapshot_type="automated")
        if snap.get("SnapshotCreateTime") and snap.get("Status") == "available"
    ]
    if snapshots:
        oldest = min(snap["SnapshotCreateTime"] for snap in snapshots)
        return oldest, "oldest automated snapshot"
    return None, None


def list_snapshots(api, instance, snapshot_type=None):
    kwargs = {"DBInstanceIdentifier": instance}
    if snapshot_type:
        kwargs["SnapshotType"] = snapshot_type
    snapshots = []
    while True:
        page = api.checked("describe_db_snapshots", "listing snapshots of %s" % instance, **kwargs)
        snapshots.extend(page.get("DBSnapshots", []))
        if not page.get("Marker"):
            return snapshots
        kwargs["Marker"] = page["Marker"]


def find_snapshot(api, snapshot_id):
    try:
        found = api.call("describe_db_snapshots", DBSnapshotIdentifier=snapshot_id)["DBSnapshots"]
    except ClientError as err:
        if error_code(err) in ("DBSnapshotNotFound", "DBSnapshotNotFoundFault"):
            return None
        raise RdsRestoreError("cannot read snapshot %s: %s" % (snapshot_id, err)) from err
    except BotoCoreError as err:
        raise RdsRestoreError("cannot read snapshot %s: %s" % (snapshot_id, err)) from err
    return found[0] if found else None


def belongs_to(snapshot, source):
    """A snapshot belongs to the source when it was taken of this very instance.

    The identifier must match; DbiResourceId, when both sides carry it, also tells a deleted
    same-named predecessor apart. A snapshot taken before the source was renamed carries the
    old name and is refused (fail closed).
    """
    if snapshot.get("DBInstanceIdentifier") != source["DBInstanceIdentifier"]:
        return False
    if snapshot.get("DbiResourceId") and source.get("DbiResourceId"):
        return snapshot["DbiResourceId"] == source["DbiResourceId"]
    return True


def _check_inputs(request):
    validate_identifier(request.source_instance, "source_instance")
    validate_identifier(request.target_instance, "target_instance")
    if request.source_instance.lower() == request.target_instance.lower():
        raise RdsRestoreError(
            "target_instance must differ from source_instance (%s): a restore is always built "
            "next to the source; use cutover to give it the source's name" % request.source_instance
        )
    if request.strategy not in STRATEGIES:
        raise RdsRestoreError("strategy must be one of %s" % ", ".join(STRATEGIES))
    if request.strategy == "pitr":
        if bool(request.target_time) == bool(request.use_latest_restorable_time):
            raise RdsRestoreError(
                "strategy=pitr needs exactly one of target_time and use_latest_restorable_time=true"
            )
        if request.snapshot_id:
            raise RdsRestoreError(
                "snapshot_id is for strategy=snapshot; pitr restores from "
                "the source's backups and WAL/binlog"
            )
    else:
        if request.use_latest_restorable_time:
            raise RdsRestoreError(
                "use_latest_restorable_time is for strategy=pitr; strategy=snapshot restores a "
                "snapshot (pick it with snapshot_id, or target_time for the newest before it)"
            )
        if request.snapshot_id is not None and not request.snapshot_id:
            raise RdsRestoreError("snapshot_id is empty")
    if request.cutover and not request.wait:
        raise RdsRestoreError(
            "cutover=true needs wait=true: the source is only renamed once "
            "the restored instance is available"
        )
    if request.wait_timeout is None or request.wait_timeout < 1:
        raise RdsRestoreError("wait_timeout must be a positive number of seconds")


def _check_confirm(request):
    if request.confirm != request.source_instance:
        raise RdsRestoreError(
            "confirm must equal source_instance (%r) to restore it%s; got %r"
            % (request.source_instance, " and cut over" if request.cutover else "", request.confirm)
        )


def _check_source(source, request):
    name = request.source_instance
    if source is None:
        raise RdsRestoreError("source instance %s does not exist" % name)
    if source.get("DBInstanceStatus") != "available":
        raise RdsRestoreError(
            "source instance %s is %s, not available" % (name, source.get("DBInstanceStatus"))
        )
    if source.get("DBClusterIdentifier"):
        raise RdsRestoreError(
            "source instance %s belongs to cluster %s: Aurora/Multi-AZ clusters are restored "
            "per cluster, which this module does not do" % (name, source["DBClusterIdentifier"])
        )


def _plan_pitr(api, request, source):
    name = request.source_instance
    if not source.get("BackupRetentionPeriod"):
        raise RdsRestoreError(
            "source instance %s has automated backups off "
            "(BackupRetentionPeriod 0): no point-in-time restore is possible" % name
        )
    latest = source.get("LatestRestorableTime")
    if not latest:
        raise RdsRestoreError(
            "source instance %s reports no LatestRestorableTime yet; "
            "no point-in-time restore is possible" % name
        )
    parameters = {
        "SourceDBInstanceIdentifier": name,
        "TargetDBInstanceIdentifier": request.target_instance,
    }
    if request.use_latest_restorable_time:
        parameters["UseLatestRestorableTime"] = True
        return parameters, latest, None
    wanted = parse_target_time(request.target_time)
    if wanted > latest:
        raise RdsRestoreError(
            "target_time %s is after the latest restorable time of %s (%s); use "
            "use_latest_restorable_time or an earlier time" % (iso(wanted), name, iso(latest))
        )
    earliest, origin = earliest_restorable_time(api, source)
    if earliest is None:
        raise RdsRestoreError(
            "cannot establish the earliest restorable time of %s (no automated backup "
            "RestoreWindow, no automated snapshot); refusing to guess" % name
        )
    if wanted < earliest:
        raise RdsRestoreError(
            "target_time %s is before the earliest restorable time of %s (%s, from the %s)"
            % (iso(wanted), name, iso(earliest), origin)
        )
    parameters["RestoreTime"] = wanted
    return parameters, wanted, None


def _plan_snapshot(api, request, source):
    name = request.source_instance
    before = parse_target_time(request.target_time) if request.target_time else None
    if request.snapshot_id:
        snapshot = find_snapshot(api, request.snapshot_id)
        if snapshot is None:
            raise RdsRestoreError("snapshot %s does not exist" % request.snapshot_id)
        if not belongs_to(snapshot, source):
            raise RdsRestoreError(
                "snapshot %s was taken of %s, not of source instance %s"
                % (request.snapshot_id, snapshot.get("DBInstanceIdentifier"), name)
            )
        if snapshot.get("Status") != "available":
            raise RdsRestoreError(
                "snapshot %s is %s, not available" % (request.snapshot_id, snapshot.get("Status"))
            )
        taken = snapshot.get("SnapshotCreateTime")
        if before and taken and taken > before:
            raise RdsRestoreError(
                "snapshot %s was taken at %s, after target_time %s"
                % (request.snapshot_id, iso(taken), iso(before))
            )
    else:
        candidates = [
            snap
            for snap in list_snapshots(api, name)
            if snap.get("Status") == "available"
            and snap.get("SnapshotCreateTime")
            and belongs_to(snap, source)
            and (before is None or snap["SnapshotCreateTime"] <= before)
        ]
        if not candidates:
            raise RdsRestoreError(
                "no available snapshot of %s%s"
                % (name, " taken before %s" % iso(before) if before else "")
            )
        snapshot = max(candidates, key=lambda snap: snap["SnapshotCreateTime"])
    parameters = {
        "DBSnapshotIdentifier": snapshot["DBSnapshotIdentifier"],
        "DBInstanceIdentifier": request.target_instance,
    }
    return parameters, snapshot.get("SnapshotCreateTime"), snapshot["DBSnapshotIdentifier"]


def old_instance_name(source_name, now):
    return "%s%s%s" % (source_name, OLD_SUFFIX, now.strftime("%Y%m%d%H%M%S"))


def plan(api, request, now=None):
    """Read-only preflight. Returns the restore to make; raises before anything changes."""
    now = now or datetime.now(UTC)
    _check_inputs(request)
    if request.target_time:
        wanted = parse_target_time(request.target_time)
        if wanted > now:
            raise RdsRestoreError(
                "target_time %s is in the future (now %s)" % (iso(wanted), iso(now))
            )
    source = find_instance(api, request.source_instance)
    _check_source(source, request)
    if find_instance(api, request.target_instance) is not None:
        raise RdsRestoreError(
            "target instance %s already exists; pick an unused name "
            "(nothing is ever overwritten)" % request.target_instance
        )
    old_name = None
    if request.cutover:
        old_name = old_instance_name(request.source_instance, now)
        validate_identifier(old_name, "the name the source would be renamed to")
        if find_instance(api, old_name) is not None:
            raise RdsRestoreError(
                "instance %s already exists; cannot move the source aside" % old_name
            )
    if request.strategy == "pitr":
        parameters, restore_time, snapshot_id = _plan_pitr(api, request, source)
        operation = "restore_db_instance_to_point_in_time"
    else:
        parameters, restore_time, snapshot_id = _plan_snapshot(api, request, source)
        operation = "restore_db_instance_from_db_snapshot"
    _check_confirm(request)
    settings = copied_settings(source)
    parameters.update(settings)
    parameters["Tags"] = merged_tags(source, request.tags)
    return {
        "operation": operation,
        "parameters": parameters,
        "restore_time": restore_time,
        "snapshot_id": snapshot_id,
        "copied_settings": settings,
        "source": source,
        "old_instance": old_name,
    }


def wait_available(api, name, timeout, delay=15.0, clock=time.monotonic):
    """Poll until name is available. A name that is briefly unknown (mid-rename) is waited on."""
    deadline = clock() + timeout
    while True:
        instance = find_instance(api, name)
        status = instance.get("DBInstanceStatus") if instance else None
        if status == "available":
            return instance
        if status in (
            "failed",
            "deleting",
            "deleted",
            "incompatible-restore",
            "incompatible-parameters",
            "incompatible-network",
            "storage-full",
        ):
            raise RdsRestoreError("instance %s is %s" % (name, status))
        if clock() >= deadline:
            raise RdsRestoreError(
                "instance %s not available after %ss (status %s)"
                % (name, timeout, status or "not found")
            )
        api.sleep(min(delay, max(0.0, deadline - clock())))


def endpoint_of(instance):
    endpoint = (instance or {}).get("Endpoint") or {}
    return {"address": endpoint.get("Address"), "port": endpoint.get("Port")}


def _rename(api, name, new_name, **extra):
    api.checked(
        "modify_db_instance",
        "renaming %s to %s" % (name, new_name),
        DBInstanceIdentifier=name,
        NewDBInstanceIdentifier=new_name,
        ApplyImmediately=True,
        **extra,
    )


def cutover(api, request, old_name, protection, delay, timeout):
    """Move the source aside, then give the restore its name. Undo step 1 if step 2 fails."""
    source, target = request.source_instance, request.target_instance
    _rename(api, source, old_name)
    wait_available(api, old_name, timeout, delay)
    try:
        _rename(api, target, source, DeletionProtection=protection)
        return wait_available(api, source, timeout, delay)
    except RdsRestoreError as err:
        if find_instance(api, source) is not None:
            raise RdsRestoreError(
                "cutover: %s; the restore may already carry the name %s, the old instance is %s"
                % (err, source, old_name)
            ) from err
        try:
            _rename(api, old_name, source)
            wait_available(api, source, timeout, delay)
        except RdsRestoreError as undo:
            raise RdsRestoreError(
                "cutover failed (%s) and renaming %s back to %s failed too (%s): the app's "
                "endpoint has no instance; rename %s to %s by hand"
                % (err, old_name, source, undo, old_name, source)
            ) from err
        raise RdsRestoreError(
            "cutover failed (%s); the source was renamed back to %s, the "
            "restore stays as %s" % (err, source, target)
        ) from err


def empty_result(request):
    return {
        "changed": False,
        "strategy": request.strategy,
        "source_instance": request.source_instance,
        "target_instance": request.target_instance,
        "restore_time": None,
        "snapshot_id": None,
        "endpoint": {"address": None, "port": None},
        "copied_settings": {},
        "cutover": {"done": False, "renamed_from": None, "renamed_to": None, "old_instance": None},
        "would_create": {},
        "steps": {},
        "api_calls": [],
    }


def run(api, request, result, check_mode=False, delay=15.0, now=None):
    """Preflight, then (outside check mode) restore, wait and cut over, filling result."""
    result["api_calls"] = api.calls
    started = time.monotonic()
    planned = plan(api, request, now)
    result["steps"]["preflight"] = round(time.monotonic() - started, 3)
    result.update(
        restore_time=iso(planned["restore_time"]),
        snapshot_id=planned["snapshot_id"],
        copied_settings=masked(planned["copied_settings"]),
        would_create={
            "operation": api.operation(planned["operation"]),
            "parameters": masked(planned["parameters"]),
        },
    )
    if request.cutover:
        result["cutover"].update(
            renamed_from=request.target_instance,
            renamed_to=request.source_instance,
            old_instance=planned["old_instance"],
        )
    if check_mode:
        result["changed"] = True
        return result

    started = time.monotonic()
    created = api.checked(
        planned["operation"],
        "restoring %s to %s" % (request.source_instance, request.target_instance),
        **planned["parameters"],
    )
    result["changed"] = True
    result["steps"]["restore"] = round(time.monotonic() - started, 3)
    instance = created.get("DBInstance", {})
    if request.wait:
        started = time.monotonic()
        instance = wait_available(api, request.target_instance, request.wait_timeout, delay)
        result["steps"]["wait"] = round(time.monotonic() - started, 3)
    result["endpoint"] = endpoint_of(instance)
    if request.cutover:
        started = time.monotonic()
        protection = bool(planned["source"].get("DeletionProtection"))
        instance = cutover(
            api, request, planned["old_instance"], protection, delay, request.wait_timeout
        )
        result["steps"]["cutover"] = round(time.monotonic() - started, 3)
        result["cutover"]["done"] = True
        result["endpoint"] = endpoint_of(instance)
    return result
