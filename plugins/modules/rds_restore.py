#!/usr/bin/python
# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: rds_restore
short_description: Restore an AWS RDS instance to a point in time or from a snapshot
version_added: "0.3.0"
description:
  - Builds a new RDS DB instance I(target_instance) from I(source_instance), either to a point
    in time (C(strategy=pitr)) or from a snapshot (C(strategy=snapshot)). The source is never
    modified unless I(cutover=true), and never deleted.
  - A read-only preflight runs first and fails closed before anything changes. The source
    exists and is C(available); the target name is unused; I(target_time) is ISO-8601 with an
    offset, not in the future, not after the source's C(LatestRestorableTime) and not before its
    earliest restorable time; exactly one of I(target_time) and I(use_latest_restorable_time)
    for C(pitr); the snapshot exists, is available and was taken of the source;
    I(confirm) equals I(source_instance).
  - The earliest restorable time is C(RestoreWindow.EarliestTime) of the source's automated
    backup (C(DescribeDBInstanceAutomatedBackups)). When AWS does not report it, the oldest
    available automated snapshot of the source stands in; with neither, a I(target_time)
    restore is refused.
  - AWS does not carry the security groups or the parameter group onto a restore by itself, so
    the source's C(DBSubnetGroupName), C(VpcSecurityGroupIds), C(DBParameterGroupName),
    C(DBInstanceClass), C(MultiAZ), C(PubliclyAccessible), C(Port) and C(StorageType) are passed
    explicitly, with the source's tags plus I(tags).
  - C(DeletionProtection) is off on the restored copy while it sits next to the source, so a
    rejected restore can be dropped; I(cutover) turns it on (to the source's value) when the copy
    takes the source's name. The renamed old instance keeps its own protection.
  - I(cutover=true) renames, after the restore is C(available), the source to
    C(<source>-pre-restore-<UTC stamp>) and then the restore to the source's name, so the
    endpoint the application uses now serves the restored data. Writes the old instance takes
    after I(restore_time) stay on the old instance. When the second rename fails, the source is
    renamed back.
  - Throttled AWS calls are retried with jittered backoff; any other AWS error fails the task.
  - Re-running with the same names after a successful restore fails on the existing target; it
    never restores twice into one name.
requirements:
  - boto3
  - botocore
options:
  source_instance:
    description: Identifier of the DB instance to restore.
    type: str
    required: true
  target_instance:
    description:
      Identifier of the new DB instance; must be unused and differ from I(source_instance).
    type: str
    required: true
  strategy:
    description:
      C(pitr) restores to a point in time from automated backups; C(snapshot) restores a
      snapshot.
    type: str
    choices: [pitr, snapshot]
    default: pitr
  target_time:
    description:
      - Point to restore to, ISO-8601 with an offset (C(2024-05-01T13:45:00+00:00), C(Z) accepted).
        A time without an offset is refused.
      - With C(strategy=snapshot) and no I(snapshot_id), picks the newest snapshot taken at or
        before it; with I(snapshot_id), the snapshot must be taken at or before it.
    type: str
  use_latest_restorable_time:
    description:
      With C(strategy=pitr), restore to the source's latest restorable time instead of
      I(target_time).
    type: bool
    default: false
  snapshot_id:
    description:
      - Snapshot to restore with C(strategy=snapshot); it must be a snapshot of I(source_instance).
      - Default is the newest available automated or manual snapshot of the source (taken at or
        before I(target_time) when given).
    type: str
  confirm:
    description:
      Must equal I(source_instance), also in check mode, so the task cannot restore the wrong
      database by accident.
    type: str
  cutover:
    description:
      After the restore is available, rename the source aside and give the restore the
      source's name.
    type: bool
    default: false
  wait:
    description: Wait until the restored instance is C(available). I(cutover=true) needs it.
    type: bool
    default: true
  wait_timeout:
    description: Seconds to wait for the restore, and for each rename during cutover.
    type: int
    default: 3600
  region:
    description: AWS region; default from the environment or the AWS config files.
    type: str
  endpoint_url:
    description: RDS endpoint URL, for tests or private endpoints.
    type: str
  aws_access_key:
    description: AWS access key id; default from the environment, config files or instance role.
    type: str
  aws_secret_key:
    description: AWS secret access key, with I(aws_access_key).
    type: str
  tags:
    description:
      Tags added to the new instance on top of the source's (for example the knowngood run
      id).
    type: dict
    default: {}
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - knowngood.runbooks.attributes
attributes:
  check_mode:
    support: full
    details: The full preflight runs; C(would_create) holds the exact request, nothing is created.
  diff_mode:
    support: none
notes:
  - Tested against moto, not live AWS. moto ignores C(RestoreTime) (a restore is a copy of the
    current instance), reports C(LatestRestorableTime) as now, has no C(RestoreWindow) and
    ignores C(false) values in restore requests (C(DeletionProtection=false) is not applied).
  - Aurora and Multi-AZ DB cluster members are refused; they are restored per cluster.
author:
  - knowngood contributors (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Restore orders to just before the bad migration, next to the live instance
  knowngood.runbooks.rds_restore:
    source_instance: orders
    target_instance: orders-restore-20240501
    target_time: "2024-05-01T13:44:00+00:00"
    confirm: orders
    tags:
      knowngood_run_id: "{{ knowngood_run_id }}"
  register: __database_restore_result

- name: Restore the newest snapshot and point the app's endpoint at it
  knowngood.runbooks.rds_restore:
    source_instance: orders
    target_instance: orders-restored
    strategy: snapshot
    confirm: orders
    cutover: true
    wait_timeout: 5400
"""

RETURN = r"""
strategy:
  description: C(pitr) or C(snapshot).
  returned: always
  type: str
source_instance:
  description: The instance restored from.
  returned: always
  type: str
target_instance:
  description: The name the restore was created under (it carries the source's name after cutover).
  returned: always
  type: str
restore_time:
  description:
    - Time restored to, ISO-8601 UTC. For I(target_time), that time; for
      I(use_latest_restorable_time), the source's C(LatestRestorableTime) read just before the
      request; for a snapshot, its creation time. Null when the preflight failed before knowing.
  returned: always
  type: str
snapshot_id:
  description: Snapshot restored (C(strategy=snapshot)), null for pitr.
  returned: always
  type: str
endpoint:
  description:
    C(address) and C(port) of the restored instance (under the source's name after cutover);
    null values until known.
  returned: always
  type: dict
copied_settings:
  description: Settings copied from the source onto the restore request (API names).
  returned: always
  type: dict
cutover:
  description:
    C(done), C(renamed_from) (the restore's first name), C(renamed_to) (the source's name)
    and C(old_instance) (where the source went); null names without cutover.
  returned: always
  type: dict
would_create:
  description:
    C(operation) and C(parameters) of the restore request, secrets masked; in check mode
    what would be sent.
  returned: always
  type: dict
steps:
  description: Seconds each step took (preflight, restore, wait, cutover).
  returned: always
  type: dict
api_calls:
  description: AWS operations called, in order, for the audit.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.knowngood.runbooks.plugins.module_utils.rds import (
    BOTO3_IMPORT_ERROR,
    HAS_BOTO3,
    Api,
    RdsRestoreError,
    RestoreRequest,
    empty_result,
    rds_client,
    run,
)

ARGUMENT_SPEC = dict(
    source_instance=dict(type="str", required=True),
    target_instance=dict(type="str", required=True),
    strategy=dict(type="str", choices=["pitr", "snapshot"], default="pitr"),
    target_time=dict(type="str"),
    use_latest_restorable_time=dict(type="bool", default=False),
    snapshot_id=dict(type="str"),
    confirm=dict(type="str"),
    cutover=dict(type="bool", default=False),
    wait=dict(type="bool", default=True),
    wait_timeout=dict(type="int", default=3600),
    region=dict(type="str"),
    endpoint_url=dict(type="str"),
    aws_access_key=dict(type="str", no_log=False),
    aws_secret_key=dict(type="str", no_log=True),
    tags=dict(type="dict", default={}),
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = module.params
    request = RestoreRequest.from_params(params)
    result = empty_result(request)
    if not HAS_BOTO3:
        module.fail_json(msg=missing_required_lib("boto3"), exception=BOTO3_IMPORT_ERROR, **result)
    try:
        api = Api(
            rds_client(
                params["region"],
                params["endpoint_url"],
                params["aws_access_key"],
                params["aws_secret_key"],
            )
        )
        run(api, request, result, check_mode=module.check_mode)
    except RdsRestoreError as err:
        module.fail_json(msg=str(err), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
