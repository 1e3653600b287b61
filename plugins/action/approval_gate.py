# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action for knowngood.runbooks.approval_gate: judges the run on the controller.

The run is rebuilt from what ansible-playbook itself received (context.CLIARGS and the parsed
extra variables), never from variables a playbook could set, so the request that was signed
has to be this run.
"""

import getpass
import os

from ansible import context
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase
from ansible.utils.vars import load_extra_vars
from ansible_collections.knowngood.runbooks.plugins.module_utils import approval, awx_approval
from ansible_collections.knowngood.runbooks.plugins.modules.approval_gate import ARGUMENT_SPEC


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def _this_run(self):
        extra = load_extra_vars(self._loader)
        public, secret = approval.split_inputs(extra)
        playbooks = context.CLIARGS.get("args") or ["unknown"]
        return extra, {
            "playbook": approval.playbook_name(playbooks[0]),
            "inventory": approval.normalize_inventory(list(context.CLIARGS.get("inventory") or [])),
            "limit": context.CLIARGS.get("subset") or "",
            "public_inputs": public,
            "secret_inputs": secret,
        }

    def _post_hoc(self, params, extra, run, doc):
        """The request a break-glass run leaves to be signed afterwards."""
        if doc is None:
            user = os.environ.get("KNOWNGOOD_USER") or getpass.getuser()
            doc = approval.build_request(
                run["playbook"],
                [],
                run["limit"],
                extra,
                "high",
                user,
                str(extra.get("ticket") or "break-glass"),
                "break-glass: " + params["break_glass_reason"].strip(),
                7 * 86400,
            )
            doc["inventory"] = run["inventory"]
        path = ""
        if params["audit_dir"]:
            directory = os.path.join(params["audit_dir"], "requests")
            if not os.path.isdir(directory):
                os.makedirs(directory, 0o750)
            path = os.path.join(directory, "%s.json" % approval.request_id(doc))
            if not os.path.exists(path):
                approval.write_request_file(
                    path, {"request": doc, "id": approval.request_id(doc), "approvals": []}
                )
        return doc, path

    def _awx(self, result, params, extra):
        """Inside AWX: the workflow's approval nodes, judged through AWX's API."""
        conf = params["awx"]
        severity = conf.get("severity") or ""
        result["severity"] = severity
        try:
            if "knowngood_awx" in extra:
                raise awx_approval.AwxApprovalError(
                    "knowngood_awx cannot be given with -e: the AWX host comes from the inventory"
                )
            for key in ("job_id", "host", "token", "role_teams"):
                if not conf.get(key):
                    raise awx_approval.AwxApprovalError("AWX mode needs awx.%s" % key)
            roles = (params["matrix"].get(severity) or {}).get("approvals")
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

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        valid, params = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        extra, run = self._this_run()
        out = {
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
        }
        result.update(out)
        lowered = "knowngood_approval_required" in extra and not boolean(
            extra["knowngood_approval_required"], strict=False
        )
        if lowered:
            result.update(failed=True, msg="approval requirements cannot be lowered with -e")
            return result
        if params["awx"] and params["awx"].get("workflow_job_id"):
            return self._awx(result, params, extra)
        reason = params["break_glass_reason"] or ""
        doc, verdict = None, None
        try:
            if params["request"]:
                data = approval.load_request_file(params["request"])
                doc = data["request"]
                differ = approval.compare_run(doc, run)
                if differ:
                    raise approval.ApprovalError(
                        "request %s is not this run: %s differ (request %s, run %s)"
                        % (
                            approval.request_id(doc)[:12],
                            ", ".join(differ),
                            dict((f, doc.get(f)) for f in differ),
                            dict((f, run[f]) for f in differ),
                        )
                    )
                verdict = approval.check(
                    doc,
                    data["approvals"],
                    params["allowed_signers_file"],
                    params["approvers"],
                    params["matrix"],
                )
                result.update(
                    request_id=verdict["request_id"],
                    request=doc,
                    severity=doc["severity"],
                    signers=verdict["signers"],
                    refused=verdict["refused"],
                    missing_roles=verdict["missing_roles"],
                )
        except approval.ApprovalError as exc:
            result["refused"].append(str(exc))

        if verdict and verdict["approved"]:
            result.update(
                approved=True,
                mode="approved",
                msg="approved by %s"
                % ", ".join(
                    "%s as %s" % (who, role) for role, who in sorted(verdict["assignment"].items())
                )
                or "approved (no roles required for %s)" % doc["severity"],
            )
            return result
        if not params["required"] and not params["request"]:
            result.update(
                approved=True, mode="not_required", msg="approval not required in this environment"
            )
            return result
        if reason:
            if not approval.break_glass_ok(reason):
                result.update(
                    failed=not self._task.check_mode,
                    msg=(
                        "break-glass needs a stated reason of at least %d characters"
                        % approval.MIN_BREAK_GLASS_REASON
                    ),
                )
                return result
            doc, path = self._post_hoc(params, extra, run, doc)
            result.update(
                approved=True,
                mode="break_glass",
                break_glass_reason=reason.strip(),
                post_hoc_approval="open",
                post_hoc_request_file=path,
                request_id=approval.request_id(doc),
                request=doc,
                severity=doc["severity"],
                msg="BREAK-GLASS: proceeding without approvals (%s); post-hoc approval open: "
                "knowngood approve %s" % (reason.strip(), path or "<request>"),
            )
            return result
        why = "; ".join(result["refused"]) or "no approved request (pass one with --request)"
        result.update(
            failed=not self._task.check_mode,
            msg="approval refused: %s" % why,
        )
        return result
