#!/usr/bin/python
# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: pg_synchronous
short_description: Keep a primary's synchronous replication settings naming the standbys that remain
version_added: "0.1.0"
description:
  - Sets C(synchronous_standby_names) and C(synchronous_commit) (ALTER SYSTEM, then a reload)
    from the cluster's declaration (I(synchronous), the inventory's C(knowngood_db_synchronous)),
    rewritten for I(primary) - the other nodes' application names, minus I(exclude). It never
    names the primary itself.
  - When fewer standbys stream than the declaration waits for, the declaration's
    C(without_standby) decides. C(async) (the default) sets no synchronous standby, so the
    primary never blocks a commit, and returns C(degraded=true) with a warning. C(refuse) fails
    before anything is written when too few standbys remain to wait for.
  - On a hot standby about to be promoted the settings are written all the same (ALTER SYSTEM
    writes no WAL); the node takes its first commit as a primary with the right ones.
  - With I(wait), waits until the named standbys are synchronous (C(pg_stat_replication.sync_state)
    C(sync) or C(quorum)).
  - A declaration that is not enabled changes nothing.
options:
  host:
    description: Host or socket directory of the node.
    type: str
    default: 127.0.0.1
  port:
    description: Port of the node.
    type: int
    default: 5432
  user:
    description: Superuser to connect as.
    type: str
    default: postgres
  password:
    description: Password of I(user).
    type: str
  synchronous:
    description:
      - The declaration (C(enabled), C(method) ANY or FIRST, C(num_sync), C(commit),
        C(names) mapping every database host to its standby's application_name,
        C(without_standby) async or refuse).
    type: dict
    required: true
  primary:
    description: Inventory name of the node that is (or is about to be) the primary.
    type: str
    required: true
  exclude:
    description: Inventory names not to wait for (fenced nodes that are not standbys yet).
    type: list
    elements: str
    default: []
  wait:
    description: Seconds to wait until the named standbys are synchronous; 0 does not wait.
    type: int
    default: 0
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - knowngood.runbooks.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
requirements:
  - psycopg
author:
  - knowngood contributors (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Settings for the promoted node, without the fenced old primary
  knowngood.runbooks.pg_synchronous:
    port: 5433
    synchronous: "{{ knowngood_db_synchronous }}"
    primary: db2
    exclude: [db1]
  register: sync_at_promotion

- name: Synchronous again once the old primary streams as a standby
  knowngood.runbooks.pg_synchronous:
    port: 5433
    synchronous: "{{ knowngood_db_synchronous }}"
    primary: db2
    wait: 60
"""

RETURN = r"""
managed:
  description: The declaration is enabled (false - nothing was read or changed).
  returned: always
  type: bool
settings:
  description: The two settings as the node runs with them now.
  returned: always
  type: dict
before:
  description: The two settings before this task.
  returned: always
  type: dict
standbys:
  description: Application names the primary waits for.
  returned: always
  type: list
streaming:
  description: Declared application names streaming from the node when it was read.
  returned: always
  type: list
degraded:
  description: Fewer standbys stream than the declaration waits for; the node runs asynchronous.
  returned: always
  type: bool
warning:
  description: What the degraded state risks (empty when not degraded).
  returned: always
  type: str
sync_states:
  description: application_name to sync_state from pg_stat_replication after the change.
  returned: always
  type: dict
queries:
  description: The statements run.
  returned: always
  type: list
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.knowngood.runbooks.plugins.module_utils import postgres, replication


def _wait_synchronous(conn, names, need, timeout):
    deadline = time.monotonic() + timeout
    states = postgres.streaming_standbys(conn)
    while time.monotonic() < deadline:
        if sum(1 for n in names if states.get(n) in ("sync", "quorum")) >= need:
            return states, True
        time.sleep(0.2)
        states = postgres.streaming_standbys(conn)
    return states, False


def main():
    module = AnsibleModule(
        argument_spec=dict(
            host=dict(type="str", default="127.0.0.1"),
            port=dict(type="int", default=5432),
            user=dict(type="str", default="postgres"),
            password=dict(type="str", no_log=True),
            synchronous=dict(type="dict", required=True),
            primary=dict(type="str", required=True),
            exclude=dict(type="list", elements="str", default=[]),
            wait=dict(type="int", default=0),
        ),
        supports_check_mode=True,
    )
    p = module.params
    result = dict(
        changed=False,
        managed=False,
        settings={},
        before={},
        standbys=[],
        streaming=[],
        degraded=False,
        warning="",
        sync_states={},
        queries=[],
    )
    try:
        spec = replication.validate(p["synchronous"])
        if not spec["enabled"]:
            module.exit_json(**result)
        conn = postgres.connect(postgres.Target.from_params(p))
        streaming = postgres.streaming_standbys(conn)
        planned = replication.plan(spec, p["primary"], p["exclude"], list(streaming))
    except (replication.ReplicationError, postgres.PgError) as err:
        module.fail_json(msg=str(err), **result)
    with conn:
        desired = planned["settings"]
        before = postgres.settings(conn, replication.SETTINGS)
        changes = [k for k in replication.SETTINGS if before.get(k) != desired[k]]
        result.update(
            managed=True,
            before=before,
            settings=before,
            changed=bool(changes),
            **{k: planned[k] for k in ("standbys", "streaming", "degraded", "warning")},
        )
        if module._diff:
            result["diff"] = postgres.settings_diff(before, desired, changes)
        if planned["degraded"]:
            module.warn(planned["warning"])
        if module.check_mode:
            module.exit_json(**result)
        result["queries"] += postgres.alter_system(conn, {k: desired[k] for k in changes})
        if changes:
            deadline = time.monotonic() + 10
            while postgres.settings(conn, replication.SETTINGS) != desired:
                if time.monotonic() > deadline:
                    module.fail_json(msg="the reload did not apply %s" % desired, **result)
                time.sleep(0.1)
        result["settings"] = postgres.settings(conn, replication.SETTINGS)
        states = postgres.streaming_standbys(conn)
        if p["wait"] > 0 and planned["standbys"]:
            states, ok = _wait_synchronous(conn, planned["standbys"], spec["num_sync"], p["wait"])
            if not ok:
                result["sync_states"] = states
                module.fail_json(
                    msg="no %d of %s synchronous after %d s (pg_stat_replication: %s)"
                    % (spec["num_sync"], planned["standbys"], p["wait"], states or "empty"),
                    **result,
                )
        result["sync_states"] = states
    module.exit_json(**result)


if __name__ == "__main__":
    main()
