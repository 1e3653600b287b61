#!/usr/bin/python
# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: drill_scorecard
short_description: Record a drill's phases and sentinel rows, and score its RTO and RPO
version_added: "0.1.0"
description:
  - Bookkeeping for rollback drills (strategy section 8). A drill is C(started) in its prepare
    phase, C(marked) at each step (C(failure_injected), C(runbook_started), C(runbook_finished),
    C(recovered)), C(ticked) to commit sentinel rows into the database before the failure, and
    C(scored) in its verify phase.
  - RTO is the time from C(failure_injected) to C(recovered). RPO is the commit-time window of
    sentinel rows committed before the failure but missing after recovery, measured from the
    newest row that survived before the oldest lost one to the newest lost row; zero when none
    is missing.
  - When no sentinel row older than the lost ones survived, nothing bounds the loss; the RPO is
    unbounded (C(rpo_s) null, C(rpo_at_least_s) the span of the lost rows) and the drill misses
    its RPO objective. A drill that must survive a loss of its newest writes commits sentinel
    rows early enough (before its baseline backup) for some to survive.
  - The scorecard is compared with I(targets), written to the drill history
    (C(<drill_dir>/history.jsonl)) and returned; the module fails when a target is missed and
    I(fail_on_miss) is true.
  - Runs on the controller. State lives under I(drill_dir) between the phases' playbook runs.
options:
  name:
    description: Drill (scenario) name.
    type: str
    required: true
  state:
    description: What to record.
    type: str
    choices: [started, marked, ticked, scored]
    required: true
  drill_dir:
    description:
      - Where drills keep state and history. Default C($KNOWNGOOD_DRILL_DIR), else
        C($KNOWNGOOD_AUDIT_DIR/drills), else C(~/.local/state/knowngood/drills).
    type: path
  run_id:
    description: Id of this drill run (C(started)); default C(drill-<name>-<UTC time>).
    type: str
  targets:
    description: Objectives, C(rto_s) and C(rpo_s) in seconds (C(started)).
    type: dict
    default: {}
  label:
    description: Mark to set (C(marked)).
    type: str
  data:
    description: Facts to keep on the scorecard (C(marked)), for example the target chosen.
    type: dict
    default: {}
  dsn:
    description:
      - libpq connection string of the database holding the sentinel rows (C(ticked), and
        C(scored) to count survivors). Never logged.
    type: str
  dsn_candidates:
    description:
      - Instead of I(dsn) for C(scored), the databases where the sentinel rows may live now; the
        one accepting writes is counted (a failover moves the primary). Never logged.
    type: list
    elements: str
  count:
    description: Sentinel rows to commit (C(ticked)).
    type: int
    default: 20
  interval:
    description: Seconds between sentinel rows (C(ticked)).
    type: float
    default: 0.05
  fail_on_miss:
    description: Fail when the scorecard misses a target (C(scored)).
    type: bool
    default: true
requirements:
  - psycopg >= 3 (for I(dsn))
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - knowngood.runbooks.attributes
attributes:
  check_mode:
    support: partial
    details: C(scored) computes the scorecard without recording it; other states do nothing.
  diff_mode:
    support: none
author:
  - knowngood contributors (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Start the drill
  knowngood.runbooks.drill_scorecard:
    name: table_restore
    state: started
    targets: {rto_s: 120, rpo_s: 5}

- name: Commit sentinel rows before the failure
  knowngood.runbooks.drill_scorecard:
    name: table_restore
    state: ticked
    dsn: "{{ knowngood_app_dsn }}"
    count: 20

- name: Mark the failure
  knowngood.runbooks.drill_scorecard:
    name: table_restore
    state: marked
    label: failure_injected

- name: Score the drill
  knowngood.runbooks.drill_scorecard:
    name: table_restore
    state: scored
    dsn: "{{ knowngood_app_dsn }}"
"""

RETURN = r"""
run_id:
  description: Id of the drill run.
  returned: always
  type: str
scorecard:
  description:
    - C(scored) only. drill, run_id, rto_s, runbook_s, rpo_s (null when unbounded),
      rpo_at_least_s, rows_committed, rows_lost,
      steps (each mark with the seconds to the next), targets, misses, passed.
  returned: when state is scored
  type: dict
marks:
  description: Every step marked so far, ISO-8601 UTC (not C(scored)).
  returned: when state is not scored and not in check mode
  type: dict
marks_epoch:
  description: The same marks as UNIX timestamps, for arithmetic in playbooks.
  returned: when state is not scored and not in check mode
  type: dict
path:
  description: File the scorecard was written to (C(scored), not in check mode).
  returned: when state is scored
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.knowngood.runbooks.plugins.module_utils import drill


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            state=dict(
                type="str", required=True, choices=["started", "marked", "ticked", "scored"]
            ),
            drill_dir=dict(type="path"),
            run_id=dict(type="str"),
            targets=dict(type="dict", default={}),
            label=dict(type="str"),
            data=dict(type="dict", default={}),
            dsn=dict(type="str", no_log=True),
            dsn_candidates=dict(type="list", elements="str", no_log=True),
            count=dict(type="int", default=20),
            interval=dict(type="float", default=0.05),
            fail_on_miss=dict(type="bool", default=True),
        ),
        required_if=[("state", "marked", ["label"]), ("state", "ticked", ["dsn"])],
        supports_check_mode=True,
    )
    params = module.params
    drill_dir = params["drill_dir"] or drill.default_dir()
    name = params["name"]
    try:
        if params["state"] == "scored":
            state = drill.load(drill_dir, name)
            dsn = params["dsn"]
            if params["dsn_candidates"]:
                dsn = drill.writable(params["dsn_candidates"])
            surviving = drill.survivors(dsn, state["run_id"]) if dsn else None
            card = drill.score(state, surviving)
            path = "" if module.check_mode else drill.record(drill_dir, card)
            result = dict(
                changed=not module.check_mode, run_id=card["run_id"], scorecard=card, path=path
            )
            if params["fail_on_miss"] and not card["passed"]:
                module.fail_json(
                    msg="drill %s missed: %s" % (name, "; ".join(card["misses"])), **result
                )
            module.exit_json(**result)
        if module.check_mode:
            module.exit_json(changed=True, run_id=params["run_id"] or "")
        if params["state"] == "started":
            state = drill.start(drill_dir, name, params["run_id"], params["targets"])
        elif params["state"] == "marked":
            state = drill.mark(drill_dir, name, params["label"], params["data"])
        else:
            state = drill.tick(drill_dir, name, params["dsn"], params["count"], params["interval"])
    except drill.DrillError as exc:
        module.fail_json(msg=str(exc))
    except Exception as exc:  # psycopg errors name the server's reason
        module.fail_json(msg="drill %s: %s: %s" % (name, type(exc).__name__, exc))
    module.exit_json(
        changed=True, run_id=state["run_id"], marks=state["marks"], marks_epoch=drill.epochs(state)
    )


if __name__ == "__main__":
    main()
