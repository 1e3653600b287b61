#!/usr/bin/python
# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: pg_pitr
short_description: Roll a PostgreSQL cluster or some tables back to a point in time, failing closed
version_added: "0.3.0"
description:
  - Every state first runs the read-only preflight (C(state=planned)), and refuses before
    anything is touched when it fails. Exactly one target; a committed backup that ended
    before the target on the timeline being recovered (the newest such backup chain); WAL
    continuous from that backup's start segment to the target (the first missing segment is
    named); an archive that reaches past the target.
  - Time targets. PostgreSQL ends a time recovery at the first commit or abort record stamped
    after the target, so the archive must hold one. The preflight decodes the newest archived
    segments with pg_waldump, newest first, until it finds the last archived commit. A target
    at or after that commit is refused ("target after the end of the archive"). Continuity is
    proved up to the segment that holds it.
  - LSN targets need the segment that holds the LSN archived. For xid and name targets the
    preflight takes the newest backup and proves continuity to the newest archived segment.
    Replay then confirms the target. PostgreSQL pauses only on reaching it and otherwise
    stops with C(recovery ended before configured recovery target was reached), which this
    module reports as a failure, with the cluster stopped and the aside copy kept.
  - C(recovered) checks the live cluster's identity (system identifier, cluster_name equal to
    C(confirm), the data directory in postmaster.pid, not in recovery). It then stops the
    cluster, renames the data directory to C(aside_dir), restores the backup chain, and
    replays WAL to the target with C(recovery_target_action=pause). The cluster stays
    paused and read-only; it is not promoted.
  - C(promoted) ends recovery of the paused cluster with C(pg_promote()) and reports the new
    timeline.
  - C(table_restored) restores a scratch cluster to the target and pauses it. Each table is
    dumped from it. In one transaction on the live database, the current table is renamed to
    C(<table>__pre_restore_<run_id>) (with its indexes and owned sequences) and the dump is
    loaded. A table dropped since the target is just created. Nothing else in the database
    changes, and the scratch cluster is always removed. Foreign keys and views that point at a
    restored table follow the renamed-aside copy (PostgreSQL tracks them by OID). They are
    listed in C(tables[].referenced_by) and have to be re-pointed by hand. Foreign keys
    defined on the restored table are re-created by the dump, and the transaction fails
    (changing nothing) if the rows they need are gone.
  - C(released) deletes what a rollback kept, only on request. That is the named C(aside_dir)
    (only a copy this cluster's own restore recorded in C(<data_dir>.kg-pitr.json), never a
    symlink, the live data directory or another system's data directory),
    or with C(strategy=table) the renamed-aside tables of C(run_id).
  - C(mode=delta) (state C(recovered), native engine) restores in place instead of moving
    the data directory aside, the idea of pgBackRest's C(--delta). After the same identity
    checks, and before the cluster is stopped, it refuses a data directory holding a symlink
    (a linked pg_wal or tablespace) and an aside directory on another file system. Each file
    of the backup's manifest whose size differs, or whose sha256 differs when the size is
    the same, is rewritten. Files the backup does not have are removed; that includes pg_wal
    segments, postmaster.pid and the signal files, as a full restore leaves them out too.
    Modification times are never trusted. Every file replaced or removed is first hard-linked
    into C(aside_dir) (the delta snapshot, no data copied), with C(kg-delta.json) listing the
    files created, replaced and removed. The new content is written beside the file and
    renamed over it, so the old bytes stay in the snapshot. There is no pg_verifybackup pass
    afterwards (every kept file was compared by sha256, every written file verified). Check
    mode computes the same
    comparison read-only and reports it in RV(delta) and as a diff.
  - Kill safety. A marker C(<data_dir>.kg-pitr-restoring) is written before the data
    directory moves and removed once the restore is complete. A re-run of a killed run finds
    it, discards the half-restored directory and restores again. A killed delta run is
    re-run in delta mode (its marker says so); the comparison converges, and a file the
    snapshot already keeps is not linked again. The aside directory is never
    overwritten or deleted, except by C(released).
  - Engine C(pgbackrest) plans from C(pgbackrest info) and a posix repository's archive, and
    restores with C(pgbackrest restore --type=... --target-action=pause).
options:
  state:
    description: The end state; C(planned) is the read-only preflight.
    type: str
    choices: [planned, recovered, promoted, table_restored, released]
    default: planned
  strategy:
    description: C(pitr) to a target, C(snapshot) (a backup exactly as taken), C(table).
    type: str
    choices: [pitr, snapshot, table]
    default: pitr
  target_time:
    description: ISO-8601 time with a UTC offset (C(2026-01-31T12:00:00+00:00)); not in the future.
    type: str
  target_lsn:
    description: WAL location, like C(0/3000060).
    type: str
  target_xid:
    description: Transaction id.
    type: str
  target_name:
    description: Restore point made with C(pg_create_restore_point()).
    type: str
  target_immediate:
    description: Stop as soon as the backup is consistent (its end).
    type: bool
    default: false
  target_latest:
    description: The end of the archive, pinned to the last archived record when planned.
      Never implied.
    type: bool
    default: false
  target_inclusive:
    description: Stop just after (true) or just before (false) the target.
    type: bool
    default: true
  target_timeline:
    description: C(latest) or a timeline number.
    type: str
    default: latest
  backup_label:
    description: The backup to restore (snapshot); with C(pitr) forces the base backup.
    type: str
  tables:
    description: C(schema.table) or C(schema.*) (strategy table; released).
    type: list
    elements: str
    default: []
  confirm:
    description: Must equal C(config.cluster) and the live cluster's C(cluster_name) for every
      destructive state. With C(state=planned) it also proves the live cluster answers as that
      name and is a primary, and returns its identity in RV(cluster).
    type: str
  data_dir:
    description: Live data directory (default C(config.pg.data_dir)).
    type: path
  port:
    description: Live port (default C(config.pg.port)).
    type: int
  aside_dir:
    description: Where the live data directory is kept (default
      C(<data_dir>.pre-restore-<run_id or stamp>)); with C(released), the directory to delete.
    type: path
  scratch_dir:
    description: Scratch cluster directory (strategy table), default under the spool.
    type: path
  scratch_port:
    description: Scratch cluster port (strategy table), default a free port.
    type: int
  run_id:
    description: Names this rollback (aside names, re-runs); required for strategy table.
    type: str
  timeout:
    description: Seconds to wait for a stop, replay to the target or promotion.
    type: int
    default: 1800
  mode:
    description: C(full) moves the data directory aside and restores every file; C(delta)
      rewrites in place only the files that differ from the backup (state C(recovered),
      native engine, not strategy C(table)).
    type: str
    choices: [full, delta]
    default: full
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - knowngood.runbooks.backup
  - knowngood.runbooks.attributes
attributes:
  check_mode:
    support: full
    details: Every state runs the preflight only and reports whether it would change.
  diff_mode:
    support: partial
    details: With C(mode=delta), check mode lists the files a delta restore would create,
      rewrite and remove.
author:
  - knowngood contributors (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Recover the cluster to just before the bad deploy, paused for inspection
  knowngood.runbooks.pg_pitr:
    config: "{{ knowngood_backup }}"
    encryption_key: "{{ knowngood_backup_encryption_key }}"
    state: recovered
    target_time: "2026-01-31T12:00:00+00:00"
    confirm: "{{ knowngood_backup.cluster }}"
    run_id: "{{ __rollback_run_id }}"
  register: __pg_pitr_recovered

- name: The same, in place, rewriting only the files that differ from the backup
  knowngood.runbooks.pg_pitr:
    config: "{{ knowngood_backup }}"
    encryption_key: "{{ knowngood_backup_encryption_key }}"
    state: recovered
    mode: delta
    target_time: "2026-01-31T12:00:00+00:00"
    confirm: "{{ knowngood_backup.cluster }}"
    run_id: "{{ __rollback_run_id }}"

- name: Promote it
  knowngood.runbooks.pg_pitr:
    config: "{{ knowngood_backup }}"
    state: promoted
    target_time: "2026-01-31T12:00:00+00:00"
    confirm: "{{ knowngood_backup.cluster }}"
    run_id: "{{ __rollback_run_id }}"

- name: Bring back one table as it was
  knowngood.runbooks.pg_pitr:
    config: "{{ knowngood_backup }}"
    state: table_restored
    strategy: table
    tables: [public.orders]
    target_time: "2026-01-31T12:00:00+00:00"
    confirm: "{{ knowngood_backup.cluster }}"
    run_id: "{{ __rollback_run_id }}"
"""

RETURN = r"""
strategy:
  description: The strategy used.
  returned: always
  type: str
plan:
  description: backup, chain, target, wal_from, wal_to, reasons, timeline_path, recovery_target.
  returned: always
  type: dict
backup_id:
  description: Label of the backup restored (or planned).
  returned: always
  type: str
timeline:
  description: Timeline after promotion (while paused, that of the last restartpoint).
  returned: always
  type: int
reached_lsn:
  description: Last replayed LSN.
  returned: always
  type: str
reached_time:
  description: Commit time of the last replayed transaction.
  returned: always
  type: str
wal_bytes_replayed:
  description: Reached LSN minus the backup's start LSN.
  returned: always
  type: int
paused:
  description: Recovery is paused at the target.
  returned: always
  type: bool
promoted:
  description: The cluster was promoted.
  returned: always
  type: bool
aside_dir:
  description: The kept pre-restore data directory.
  returned: always
  type: str
tables:
  description: Per table (strategy table), existed, rows_before, rows_after, renamed_to, and
    referenced_by.
  returned: always
  type: list
  elements: dict
steps:
  description: Seconds per step (plan, identity, stop, move_aside, restore, replay, promote, total).
  returned: always
  type: dict
first_read_seconds:
  description: Seconds from the start of recovery to the first consistent read-only query.
  returned: always
  type: float
queries:
  description: SQL executed, in order (audit).
  returned: always
  type: list
  elements: str
request:
  description: With C(state=planned), the request as every later step must carry it, checked
    in one place (the target in canonical form, the backup label, the tables); empty otherwise.
  returned: always
  type: dict
  sample: {"strategy": "pitr", "target": {"kind": "time", "value": "2026-11-28T14:05:00+00:00",
           "inclusive": true}, "backup_label": "", "tables": []}
cluster:
  description: With C(state=planned) and I(confirm), the live primary's identity (name,
    system_identifier, timeline, lsn, server_version_num) after proving it is the named
    cluster's primary; empty otherwise.
  returned: always
  type: dict
mode:
  description: The restore mode used (a killed run is finished in the mode it started).
  returned: always
  type: str
delta:
  description: With C(mode=delta), files_checked, files_checksummed, files_created,
    files_rewritten, files_removed, bytes_checksummed, bytes_to_write, bytes_removed and
    (when not in check mode) bytes_written and seconds; empty otherwise.
  returned: always
  type: dict
refused:
  description: The read-only preflight (C(state=planned)) refused; nothing was changed.
    The message starts with C(refused, nothing was changed) and names the reason.
  returned: always
  type: bool
"""

import dataclasses

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import pitr
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (
    BackupError,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.module import (
    argument_spec,
    config_from_params,
)

_REQUEST_FIELDS = [f.name for f in dataclasses.fields(pitr.Request)]


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            state={"type": "str", "choices": list(pitr.STATES), "default": "planned"},
            strategy={"type": "str", "choices": list(pitr.STRATEGIES), "default": "pitr"},
            target_time={"type": "str"},
            target_lsn={"type": "str"},
            target_xid={"type": "str"},
            target_name={"type": "str"},
            target_immediate={"type": "bool", "default": False},
            target_latest={"type": "bool", "default": False},
            target_inclusive={"type": "bool", "default": True},
            target_timeline={"type": "str", "default": "latest"},
            backup_label={"type": "str"},
            tables={"type": "list", "elements": "str", "default": []},
            confirm={"type": "str"},
            data_dir={"type": "path"},
            port={"type": "int"},
            aside_dir={"type": "path"},
            scratch_dir={"type": "path"},
            scratch_port={"type": "int"},
            run_id={"type": "str"},
            timeout={"type": "int", "default": 1800},
            mode={"type": "str", "choices": list(pitr.MODES), "default": "full"},
        ),
        supports_check_mode=True,
    )
    params = module.params
    req = pitr.Request(**{k: params[k] for k in _REQUEST_FIELDS if k in params})
    result = pitr.empty_result(req)
    try:
        cfg = config_from_params(params)
        pitr.run(cfg, req, check_mode=module.check_mode, result=result)
    except BackupError as err:
        # The read-only preflight refuses before the runbook changes anything: say so.
        prefix = "refused, nothing was changed: " if params["state"] == "planned" else ""
        result["refused"] = bool(prefix)
        module.fail_json(msg=prefix + str(err), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
