# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action for knowngood.runbooks.approval_gate: judges the run on the controller.

The run is rebuilt from what ansible-playbook itself received (context.CLIARGS and the parsed
extra variables), never from variables a playbook could set, so the request that was signed
has to be this run. The trust root (approvals required, matrix, allowed signers, approvers,
AWX host and teams) is the controller's policy file (module_utils/policy.py); variables can
only tighten it. Who executes the run is the OS user of this process, never a variable.
"""

import contextlib
import datetime
import os
import pwd

from ansible import context
from ansible.plugins.action import ActionBase
from ansible.utils.vars import load_extra_vars
from ansible_collections.knowngood.runbooks.plugins.module_utils import (
    approval,
    awx_approval,
    policy,
)


def executors():
    """(name, all names) of who executes this run: the process's OS user, whoever sudo'd.

    From the uid, not $USER or $KNOWNGOOD_USER, which the runner's caller sets."""
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = "uid-%d" % uid
    names = {name}
    if uid == 0 and os.environ.get("SUDO_USER"):
        names.add(os.environ["SUDO_USER"])
    with contextlib.suppress(OSError):  # no controlling terminal (ansible-runner, AWX, cron)
        names.add(os.getlogin())
    return name, names


def _nothing_decided(who):
    """What the gate reports before it has decided anything."""
    return {
        "changed": False,
        "approved": False,
        "mode": "refused",
        "request_id": "",
        "request": {},
        "severity": "",
        "signers": [],
        "refused": [],
        "missing_roles": [],
        "break_glass_reason": "",
        "post_hoc_approval": "",
        "post_hoc_request_file": "",
        "break_glass_records": [],
        "policy_path": "",
        "policy_digest": "",
        "executed_by": who,
        "consumed": "",
        "approvers": {},
    }


def _write_json(path, data):
    approval.write_request_file(path, data)
    os.chmod(path, 0o600)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def _this_run(self, extra, signed=None):
        public = approval.split_inputs(extra)[0]
        playbooks = context.CLIARGS.get("args") or ["unknown"]
        return {
            "playbook": approval.playbook_name(playbooks[0]),
            "inventory": approval.normalize_inventory(list(context.CLIARGS.get("inventory") or [])),
            "limit": context.CLIARGS.get("subset") or "",
            "public_inputs": public,
            "secret_inputs": approval.bind_secrets(extra, (signed or {}).get("secret_inputs")),
        }

    def _break_glass(self, params, extra, run, doc, trust, who):
        """Record a break-glass run where root keeps it, and the request to sign post hoc."""
        if doc is None:
            doc = approval.build_request(
                run["playbook"],
                [],
                run["limit"],
                extra,
                "high",
                who,
                str(extra.get("ticket") or "break-glass"),
                "break-glass: " + params["break_glass_reason"].strip(),
                7 * 86400,
            )
            doc["inventory"] = run["inventory"]
        rid = approval.request_id(doc)
        data = {
            "request": doc,
            "id": rid,
            "approvals": [],
            "break_glass": {
                "reason": params["break_glass_reason"].strip(),
                "executed_by": who,
                "at": approval.iso(approval.utcnow()),
                "run_id": os.environ.get("KNOWNGOOD_RUN_ID") or "manual",
                "policy_digest": (trust or {}).get("digest", ""),
            },
        }
        state = trust or {"state_dir": policy.DEFAULT_STATE_DIR}
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        kept = []
        try:
            directory = policy.ensure_state_dir(state, "break-glass")
            kept.append(os.path.join(directory, "%s-%s.json" % (stamp, rid[:12])))
            _write_json(kept[-1], data)
        except (OSError, policy.PolicyError) as exc:
            self._display.warning("BREAK-GLASS not recorded in the state directory: %s" % exc)
        if params["audit_dir"]:
            directory = os.path.join(params["audit_dir"], "requests")
            if not os.path.isdir(directory):
                os.makedirs(directory, 0o750)
            path = os.path.join(directory, "%s.json" % rid)
            if not os.path.exists(path):
                approval.write_request_file(path, data)
            kept.insert(0, path)
        return doc, kept

    def _awx(self, result, params, extra, effective):
        """Inside AWX: the workflow's approval nodes, judged through AWX's API."""
        conf = dict(params["awx"], **effective["awx"])
        severity = conf.get("severity") or ""
        result["severity"] = severity
        try:
            if "knowngood_awx" in extra:
                raise awx_approval.AwxApprovalError(
                    "knowngood_awx cannot be given with -e: the AWX host comes from the policy"
                )
            for key in ("job_id", "host", "token", "role_teams"):
                if not conf.get(key):
                    raise awx_approval.AwxApprovalError("AWX mode needs awx.%s" % key)
            roles = (effective["matrix"].get(severity) or {}).get("approvals")
            if roles is None:
                raise awx_approval.AwxApprovalError(
                    "severity %r is not in the decision matrix" % severity
                )
            get = awx_approval.api_client(
                conf["host"], conf["token"], validate_certs=conf["validate_certs"]
            )
            verdict = awx_approval.judge(
                get, conf["job_id"], conf["workflow_job_id"], list(roles), conf["role_teams"]
            )
        except Exception as exc:  # HTTP and JSON errors refuse like a missing approval
            result["refused"].append(str(exc))
            result.update(failed=not self._task.check_mode, msg="approval refused (AWX): %s" % exc)
            return result
        result.update(
            approved=True,
            mode="awx_approved",
            executed_by=verdict["launcher"],
            signers=[
                {"principal": a["principal"], "roles": [a["role"]]} for a in verdict["approvers"]
            ],
            msg="approved in AWX by %s; launched by %s"
            % (
                ", ".join("%s as %s" % (a["principal"], a["role"]) for a in verdict["approvers"])
                or "nobody (no roles required)",
                verdict["launcher"],
            ),
        )
        return result

    def _refuse(self, result, msg):
        result.update(failed=not self._task.check_mode, msg=msg)
        return result

    def _policy(self, result, params, reason):
        """(trust, effective, refusal): the controller's policy, tightened by the task's args.

        A policy that cannot be loaded leaves only break-glass; a variable that tries to loosen
        it refuses outright."""
        trust, effective = None, None
        try:
            trust = policy.load()
            result.update(policy_path=trust["path"], policy_digest=trust["digest"])
            effective = policy.tighten(
                trust,
                required=params["required"],
                matrix=params["matrix"],
                approvers=params["approvers"],
                allowed_signers_file=params["allowed_signers_file"] or "",
                awx=params["awx"],
            )
            result["approvers"] = effective["approvers"]
        except policy.PolicyError as exc:
            if trust is not None:  # a variable tried to loosen it: no break-glass around that
                result["refused"].append(str(exc))
                return trust, effective, self._refuse(result, "approval %s" % exc)
            result["refused"].append(str(exc))
            if not approval.break_glass_ok(reason):
                return (
                    trust,
                    effective,
                    self._refuse(
                        result,
                        "approval refused: %s; a destructive runbook needs the governance policy "
                        "(README, governance) or break-glass" % exc,
                    ),
                )
        return trust, effective, None

    def _signed(self, result, data, extra, trust, effective, who, names):
        """The verdict on the signed request (data) for this run; consumes it when approved."""
        doc = data["request"]
        run = self._this_run(extra, doc)
        differ = approval.compare_run(doc, run)
        if differ:
            shown = [f for f in differ if f != "secret_inputs"]
            raise approval.ApprovalError(
                "request %s is not this run: %s differ (request %s, run %s)"
                % (
                    approval.request_id(doc)[:12],
                    ", ".join(differ),
                    dict((f, doc.get(f)) for f in shown),
                    dict((f, run[f]) for f in shown),
                )
            )
        verdict = approval.check(
            doc,
            data["approvals"],
            effective["allowed_signers_file"],
            effective["approvers"],
            effective["matrix"],
            executors=names,
        )
        result.update(
            request_id=verdict["request_id"],
            request=doc,
            severity=doc["severity"],
            signers=verdict["signers"],
            refused=result["refused"] + verdict["refused"],
            missing_roles=verdict["missing_roles"],
        )
        if verdict["approved"]:
            entry = {
                "consumed_at": approval.iso(approval.utcnow()),
                "executed_by": who,
                "run_id": os.environ.get("KNOWNGOOD_RUN_ID") or "manual",
                "playbook": run["playbook"],
                "policy_digest": trust["digest"],
            }
            if self._task.check_mode:
                policy.check_unused(trust, verdict["request_id"])
            else:
                result["consumed"] = policy.consume(trust, verdict["request_id"], entry)
        return verdict

    def _go_break_glass(self, result, params, extra, doc, trust, who, reason):
        """Proceed without approvals, loudly, with a stated reason; refuse without one."""
        if not approval.break_glass_ok(reason):
            return self._refuse(
                result,
                "break-glass needs a stated reason of at least %d characters"
                % approval.MIN_BREAK_GLASS_REASON,
            )
        doc, kept = self._break_glass(params, extra, self._this_run(extra), doc, trust, who)
        where = ", ".join(kept) or "NOWHERE but this run's output (no audit dir, no state dir)"
        self._display.warning(
            "BREAK-GLASS by %s: proceeding without approvals (%s); recorded in %s"
            % (who, reason.strip(), where)
        )
        result.update(
            approved=True,
            mode="break_glass",
            break_glass_reason=reason.strip(),
            post_hoc_approval="open",
            post_hoc_request_file=kept[0] if kept else "",
            break_glass_records=kept,
            request_id=approval.request_id(doc),
            request=doc,
            severity=doc["severity"],
            msg="BREAK-GLASS by %s: proceeding without approvals (%s); recorded in %s; "
            "post-hoc approval open: knowngood approve %s"
            % (who, reason.strip(), where, kept[0] if kept else "<request>"),
        )
        return result

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        valid, params = self.validate_argument_spec(argument_spec=approval.GATE_ARGUMENT_SPEC)
        extra = load_extra_vars(self._loader)
        who, names = executors()
        result.update(_nothing_decided(who))
        reason = params["break_glass_reason"] or ""
        trust, effective, refusal = self._policy(result, params, reason)
        if refusal is not None:
            return refusal
        if effective and params["awx"] and params["awx"].get("workflow_job_id"):
            return self._awx(result, params, extra, effective)
        doc, verdict = None, None
        try:
            if params["request"] and effective:
                data = approval.load_request_file(params["request"])
                doc = data["request"]  # kept when refused: break-glass records this request
                verdict = self._signed(result, data, extra, trust, effective, who, names)
        except (approval.ApprovalError, policy.PolicyError) as exc:
            result["refused"].append(str(exc))
            verdict = None

        if verdict and verdict["approved"]:
            result.update(
                approved=True,
                mode="approved",
                msg="approved by %s; executed by %s; request %s used once"
                % (
                    ", ".join(
                        "%s as %s" % (who_, role)
                        for role, who_ in sorted(verdict["assignment"].items())
                    )
                    or "nobody (no roles required for %s)" % doc["severity"],
                    who,
                    verdict["request_id"][:12],
                ),
            )
            return result
        if effective and not effective["required"] and not params["request"]:
            result.update(
                approved=True,
                mode="not_required",
                msg="approval not required by the policy %s" % trust["path"],
            )
            return result
        if reason:
            return self._go_break_glass(result, params, extra, doc, trust, who, reason)
        why = "; ".join(result["refused"]) or "no approved request (pass one with --request)"
        return self._refuse(result, "approval refused: %s" % why)
