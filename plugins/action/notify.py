# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action for knowngood.runbooks.notify: validates contacts and channels, sends on the controller.

The message's facts (playbook, run id, operator, ticket, reason) come from the run itself; a
request file adds its id, severity and the roles it needs. Delivery failures are results,
never task failures.
"""

import getpass
import os

from ansible import context
from ansible.plugins.action import ActionBase
from ansible.utils.vars import load_extra_vars
from ansible_collections.knowngood.runbooks.plugins.module_utils import approval, notify


def run_details(extra, details):
    playbooks = context.CLIARGS.get("args") or ["unknown"]
    facts = {
        "playbook": approval.playbook_name(playbooks[0]),
        "run_id": os.environ.get("KNOWNGOOD_RUN_ID", ""),
        "user": os.environ.get("KNOWNGOOD_USER") or getpass.getuser(),
        "ticket": str(extra.get("ticket") or ""),
        "reason": str(extra.get("rollback_reason") or ""),
    }
    facts.update(dict((k, v) for k, v in (details or {}).items() if v not in (None, "")))
    return facts


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        valid, params = self.validate_argument_spec(argument_spec=notify.ARGUMENT_SPEC)
        result.update(changed=False, notifications=[], delivered=0)
        event = params["event"]
        wanted = notify.configured(params["channels"])
        try:
            if params["contacts"] or wanted:
                notify.validate_contacts(params["contacts"])
            notify.validate_channels(params["channels"])
        except notify.NotifyError as exc:
            result.update(failed=True, msg="%s (fix the inventory before any rollback)" % exc)
            return result
        if event == "validate":
            result["msg"] = (
                "contacts and channels valid" if wanted else "no notification channel configured"
            )
            return result
        if not wanted:
            result["msg"] = "no notification channel configured; %s not sent" % event
            return result

        details = run_details(load_extra_vars(self._loader), params["details"])
        required = []
        if params["request"]:
            try:
                doc = approval.load_request_file(params["request"])["request"]
            except approval.ApprovalError as exc:
                result.update(failed=True, msg=str(exc))
                return result
            row = (params["matrix"] or {}).get(doc.get("severity")) or {}
            required = list(row.get("approvals") or [])
            details.update(
                playbook=doc.get("playbook"),
                request_id=approval.request_id(doc)[:12],
                severity=doc.get("severity"),
                user=doc.get("requester"),
                ticket=doc.get("ticket"),
                reason=doc.get("reason"),
                roles=required,
                sign_with="knowngood approve %s --key <your key>" % params["request"],
            )
            # what the caller says wins (an overdue break-glass names its own run and command)
            details.update((k, v) for k, v in params["details"].items() if v not in (None, ""))
            if event == "break_glass_overdue" and params["details"].get("missing_roles"):
                required = list(params["details"]["missing_roles"])  # who is still to sign
        subject, text = notify.compose(event, details)
        if self._task.check_mode:
            hooks = params["channels"].get("webhooks") or []
            targets = [("webhook", notify.mask_url(u)) for u in hooks]
            if params["channels"].get("smtp"):
                contacts = notify.validate_contacts(params["contacts"])
                for address in notify.recipients(
                    event, contacts, params["approvers"], required, params["owners"]
                ):
                    targets.append(("email", address))
            result["notifications"] = [
                {
                    "event": event,
                    "channel": channel,
                    "target": target,
                    "outcome": "skipped",
                    "attempts": 0,
                    "error": "check mode",
                }
                for channel, target in targets
            ]
            result["msg"] = "check mode: %s not sent to %d target(s)" % (event, len(targets))
            return result
        sent = notify.deliver(
            event,
            text,
            params["contacts"],
            params["channels"],
            smtp_password=params["smtp_password"],
            approvers=params["approvers"],
            required_roles=required,
            subject=subject,
            owners=params["owners"],
        )
        delivered = sum(1 for n in sent if n["outcome"] == "delivered")
        result.update(
            notifications=sent,
            delivered=delivered,
            msg="%s: %d of %d notification(s) delivered%s"
            % (
                event,
                delivered,
                len(sent),
                "" if delivered == len(sent) else " (the run goes on; failures are recorded)",
            ),
        )
        return result
