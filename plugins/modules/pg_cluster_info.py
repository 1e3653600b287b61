#!/usr/bin/python
# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: pg_cluster_info
short_description: Read a PostgreSQL cluster's identity, recovery state and data checks
version_added: "0.1.0"
description:
  - The one read-only view the database runbooks decide on. Connects (waiting up to I(wait)
    seconds for the cluster to answer) and returns its identity (system identifier, timeline,
    cluster_name, version), its recovery state (in recovery, pause state, replayed LSN), the
    databases that take connections and, when asked, what pg_amcheck finds, a full read of
    every table where amcheck is not installed, and the operator's checks run read-only.
  - Never changes anything and never fails on a finding; it fails only on bad input. A cluster
    that does not answer is returned as C(reachable=false) with the reason, for the runbook's
    gate to word its refusal.
options:
  host:
    description: Host or socket directory of the cluster.
    type: str
    default: 127.0.0.1
  port:
    description: Port of the cluster.
    type: int
    default: 5432
  user:
    description: Role to connect as.
    type: str
    default: postgres
  password:
    description: Password of I(user) (never logged).
    type: str
  dbname:
    description: Database for the identity and recovery queries (the maintenance database).
    type: str
    default: postgres
  bin_dir:
    description: Directory of the PostgreSQL client binaries (pg_amcheck).
    type: path
    default: /usr/lib/postgresql/15/bin
  wait:
    description: Seconds to keep trying to connect before reporting C(reachable=false).
    type: int
    default: 0
  amcheck:
    description: Run pg_amcheck (heap and all indexes) on every database that has the amcheck
      extension.
    type: bool
    default: false
  full_read:
    description: Read every table of each database pg_amcheck did not check (every page's
      checksum is verified).
    type: bool
    default: false
  exclude_tables:
    description: Tables (schema.table) the data checks leave out, with their indexes and TOAST.
    type: list
    elements: str
    default: []
  queries:
    description:
      - The operator's checks, each an SQL string or C({name, sql, database}), run in a
        read-only transaction with a 60 s statement timeout; a check passes when its first
        value is true.
    type: list
    elements: raw
    default: []
  query_database:
    description: Database of a check that names none.
    type: str
    default: postgres
  settings:
    description: Settings to return from pg_settings, with the file that sets each.
    type: list
    elements: str
    default: []
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - knowngood.runbooks.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
author:
  - knowngood contributors (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Ask the restored instance where it stopped
  knowngood.runbooks.pg_cluster_info:
    port: 5432
    wait: 60
  register: restored

- name: Check the data before promoting
  knowngood.runbooks.pg_cluster_info:
    port: 5432
    amcheck: true
    exclude_tables: [public.orders__pre_restore_20261128]
    queries:
      - {name: orders present, sql: "SELECT count(*) > 0 FROM orders", database: app}
  register: checked
"""

RETURN = r"""
reachable:
  description: The cluster answered within I(wait) seconds.
  returned: always
  type: bool
error:
  description: Why the cluster did not answer (empty when it did).
  returned: always
  type: str
identity:
  description: system_identifier, timeline, server_version_num, cluster_name, data_directory,
    in_recovery.
  returned: when reachable
  type: dict
recovery:
  description: in_recovery, pause_state (C(not paused), C(pause requested), C(paused)),
    replay_lsn, receive_lsn (WAL a standby received, streamed or not) and
    last_replay_timestamp.
  returned: when reachable
  type: dict
wal:
  description:
    - C(lsn) and C(timeline) of the instance's WAL; on a primary the current LSN and the
      timeline of its WAL file (it moves at promotion, the last checkpoint's may lag); on a
      standby the replayed LSN and the timeline its WAL receiver streams (C(streaming)).
  returned: when reachable
  type: dict
settings:
  description: Per name in I(settings), C(value) and C(sourcefile).
  returned: when reachable
  type: dict
databases:
  description: Databases that take connections, templates left out.
  returned: when reachable
  type: list
  elements: str
checks:
  description:
    - C(amcheck) (databases pg_amcheck checked, with C(corrupt) and C(findings)),
      C(full_read) (databases read in full, with C(error)), C(queries) (each check's
      C(name), C(database), C(ok), C(value), C(error)) and C(problems), one sentence per
      failed check.
  returned: always
  type: dict
"""

from ansible_collections.knowngood.runbooks.plugins.module_utils import module_main
from ansible_collections.knowngood.runbooks.plugins.module_utils.cluster_info import (
    ARGUMENT_SPEC,
    run,
)


def main():
    module_main.main(run, ARGUMENT_SPEC, pass_params=True)


if __name__ == "__main__":
    main()
