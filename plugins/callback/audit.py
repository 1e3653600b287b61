# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
name: audit
type: aggregate
short_description: Record every knowngood run as an audit record
version_added: "0.1.0"
description:
  - Writes one JSON record per playbook run (who, what, when, every task result that matters,
    the final stats) to I(audit_dir)/<run_id>.json, and appends a line to I(audit_dir)/index.jsonl
    whose C(prev) field is the sha256 of the previous line, so a removed or edited record breaks
    the chain.
  - Exports C(KNOWNGOOD_RUN_ID) before the first task so playbooks and this record share one run id.
  - Only whitelisted result keys are kept and results of C(no_log) tasks are already censored by
    Ansible; extra variables whose names look secret are masked.
options:
  audit_key:
    description:
      - SSH private key that signs each index line (namespace knowngood-audit); made on first
        use. Keep it, and the checkpoints written beside it, outside I(audit_dir).
      - Unset, with C(KNOWNGOOD_LAB_DIR) set, the lab's key,
        C($KNOWNGOOD_LAB_DIR/governance/audit_key).
    default: ~/.config/knowngood/audit_key
    type: path
    env:
      - name: KNOWNGOOD_AUDIT_KEY
    ini:
      - section: callback_knowngood_audit
        key: audit_key
  audit_dir:
    description: Directory for audit records.
    default: ~/.local/state/knowngood/audit
    type: path
    env:
      - name: KNOWNGOOD_AUDIT_DIR
    ini:
      - section: callback_knowngood_audit
        key: audit_dir
"""

import datetime
import getpass
import hashlib
import json
import os
import re
import tempfile
import time
import uuid

from ansible import context
from ansible.plugins.callback import CallbackBase
from ansible.template import Templar
from ansible_collections.knowngood.runbooks.plugins.module_utils import audit_chain, notify

KEPT_KEYS = (
    "msg",
    "changed",
    "failed",
    "skipped",
    "release_id",
    "previous_release_id",
    "live_release_id",
    "live_pool",
    "previous_pool",
    "pool",
    "actions",
    "plan",
    "events",
    "duration_ms",
    "switched_at",
    "live_revision",
    "revision_after",
    "queries",
    "enabled",
    "previous",
    "name",
    "current",
    "last_known_good",
    "removed_releases",
    "verdict",
    "severity",
    "action",
    "approvals_required",
    "triggers",
    "fired",
    "inconclusive",
    "baseline",
    "query_errors",
    "evaluated_at",
    "baseline_at",
    "window_s",
    "approved",
    "mode",
    "request_id",
    "request",
    "signers",
    "refused",
    "missing_roles",
    "break_glass_reason",
    "post_hoc_approval",
    "post_hoc_request_file",
    "snapshot_id",
    "safety_snapshot_id",
)
SECRET_RE = re.compile(r"pass|secret|token|key|dsn|credential|webhook|knowngood_notify", re.I)


def utcnow():
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def mask(value, name=""):
    if name and SECRET_RE.search(name):
        return "********"
    if isinstance(value, dict):
        return dict((k, mask(v, str(k))) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [mask(v) for v in value]
    return value


def new_run_id():
    return "kg-%s-%s" % (time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()), uuid.uuid4().hex[:6])


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "knowngood.runbooks.audit"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.run_id = os.environ.get("KNOWNGOOD_RUN_ID") or new_run_id()
        os.environ["KNOWNGOOD_RUN_ID"] = self.run_id
        # Locks record the controller's pid so a crashed run's lock is recognised as stale.
        os.environ["KNOWNGOOD_CONTROLLER_PID"] = str(os.getpid())
        self.record = {
            "run_id": self.run_id,
            "kind": "ansible-playbook",
            "user": os.environ.get("KNOWNGOOD_USER") or getpass.getuser(),
            "os_user": getpass.getuser(),
            "key_fingerprint": os.environ.get("KNOWNGOOD_KEY_FINGERPRINT", ""),
            "inventory": list(context.CLIARGS.get("inventory") or []),
            "limit": context.CLIARGS.get("subset") or "",
            "started_at": utcnow(),
            "events": [],
            "plays": [],
            "notifications": [],
        }
        self.started = time.time()
        self.task_started = {}
        self.play = None
        # The start notice's task and host: the end notice reuses its arguments.
        self.announced = None

    def v2_playbook_on_start(self, playbook):
        self.record["playbook"] = os.path.abspath(playbook._file_name)

    def v2_playbook_on_play_start(self, play):
        self.play = play
        self.record["plays"].append(play.get_name())
        manager = play.get_variable_manager()
        extra = getattr(manager, "extra_vars", None) or {}
        self.record["extra_vars"] = mask(dict(extra))
        for field, var in (("ticket", "ticket"), ("reason", "rollback_reason")):
            value = extra.get(var) or os.environ.get("KNOWNGOOD_" + field.upper(), "")
            self.record[field] = mask(value, var) if not isinstance(value, str) else value
        self.record["check_mode"] = bool(context.CLIARGS.get("check", False))

    def v2_playbook_on_task_start(self, task, is_conditional):
        self.task_started[task._uuid] = time.time()

    def _add(self, result, status):
        task = result._task
        raw = result._result or {}
        kept = dict((k, raw[k]) for k in KEPT_KEYS if k in raw)
        if raw.get("censored"):
            kept = {"censored": True, "changed": raw.get("changed", False)}
        event = {
            "ts": utcnow(),
            "host": result._host.get_name(),
            "task": task.get_name(),
            "action": task.action,
            "status": status,
            "changed": bool(raw.get("changed")),
            "duration_s": round(time.time() - self.task_started.get(task._uuid, time.time()), 3),
            "result": mask(kept),
        }
        self.record["events"].append(event)
        if task.action.endswith("notify") and isinstance(raw.get("notifications"), list):
            self.record["notifications"].extend(mask(raw["notifications"]))
            if raw.get("notifications") and raw["notifications"][0].get("event") in (
                "start",
                "break_glass",
            ):
                self.announced = (task, result._host)
        if task.action.endswith("approval_gate") and "mode" in raw:
            self.record["approvals"] = dict(
                (k, mask(raw.get(k)))
                for k in (
                    "mode",
                    "approved",
                    "request_id",
                    "severity",
                    "signers",
                    "refused",
                    "missing_roles",
                    "break_glass_reason",
                    "post_hoc_approval",
                    "post_hoc_request_file",
                    "break_glass_records",
                    "policy_path",
                    "policy_digest",
                    "executed_by",
                    "consumed",
                )
            )

    def v2_runner_on_ok(self, result):
        self._add(result, "changed" if result._result.get("changed") else "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._add(result, "ignored" if ignore_errors else "failed")

    def v2_runner_on_skipped(self, result):
        return  # skipped tasks say nothing an auditor needs

    def v2_runner_on_unreachable(self, result):
        self._add(result, "unreachable")

    def v2_playbook_on_stats(self, stats):
        hosts = sorted(stats.processed.keys())
        summary = dict((h, stats.summarize(h)) for h in hosts)
        failed = any(s["failures"] or s["unreachable"] for s in summary.values())
        self.record.update(
            {
                "finished_at": utcnow(),
                "duration_s": round(time.time() - self.started, 3),
                "stats": summary,
                "status": "failed" if failed else "successful",
            }
        )
        self._announce_end()
        self._write()

    def _announce_end(self):
        """Success or failure to those told of the start; never stops the record being written."""
        if not self.announced or self.record.get("check_mode"):
            return
        task, host = self.announced
        event = "failure" if self.record["status"] == "failed" else "success"
        try:
            manager = self.play.get_variable_manager()
            host = manager._inventory.get_host(host.get_name()) or host
            variables = manager.get_vars(play=self.play, host=host, task=task)
            args = Templar(loader=self.play._loader, variables=variables).template(task.args)
            broken = ("failed", "unreachable")
            failed_tasks = sorted(
                set(e["task"] for e in self.record["events"] if e["status"] in broken)
            )
            details = dict(
                (k, v)
                for k, v in (args.get("details") or {}).items()
                if k in ("request_id", "severity", "break_glass_reason", "post_hoc")
            )
            details.update(
                playbook=os.path.basename(self.record.get("playbook") or "?").rsplit(".", 1)[0],
                run_id=self.run_id,
                user=self.record.get("user"),
                ticket=self.record.get("ticket"),
                reason=self.record.get("reason"),
                status=self.record["status"],
                duration="%.1f s" % self.record["duration_s"],
                failed=failed_tasks,
            )
            subject, text = notify.compose(event, details)
            sent = notify.deliver(
                event,
                text,
                args.get("contacts") or {},
                args.get("channels") or {},
                smtp_password=args.get("smtp_password") or "",
                approvers=args.get("approvers") or {},
                subject=subject,
            )
        except Exception as exc:  # a notice must never cost the record
            sent = [
                {
                    "event": event,
                    "channel": "all",
                    "target": "-",
                    "outcome": "failed",
                    "attempts": 0,
                    "error": "could not send: %s" % type(exc).__name__,
                    "at": utcnow(),
                }
            ]
        self.record["notifications"].extend(mask(sent))
        for line in sent:
            if line["outcome"] != "delivered":
                self._display.warning(
                    "knowngood: %s notice to %s %s failed after %s attempt(s): %s"
                    % (event, line["channel"], line["target"], line["attempts"], line["error"])
                )

    def _write(self):
        audit_dir = os.path.expanduser(self.get_option("audit_dir"))
        if not os.path.isdir(audit_dir):
            os.makedirs(audit_dir, 0o750)
        body = json.dumps(self.record, indent=2, sort_keys=True, default=str)
        path = os.path.join(audit_dir, "%s.json" % self.run_id)
        fd, tmp = tempfile.mkstemp(dir=audit_dir, prefix=".rec-")
        with os.fdopen(fd, "w") as handle:
            handle.write(body)
        os.rename(tmp, path)
        key = self.get_option("audit_key")
        if not os.environ.get("KNOWNGOOD_AUDIT_KEY") and os.environ.get("KNOWNGOOD_LAB_DIR"):
            # A lab's runs sign with the lab's key, kept beside (not inside) its audit dir.
            key = os.path.join(os.environ["KNOWNGOOD_LAB_DIR"], "governance", "audit_key")
        line = audit_chain.append(
            audit_dir,
            {
                "kind": "record",
                "run_id": self.run_id,
                "record": "%s.json" % self.run_id,
                "playbook": self.record.get("playbook"),
                "status": self.record["status"],
                "finished_at": self.record["finished_at"],
                "sha256": hashlib.sha256(body.encode("utf-8")).hexdigest(),
            },
            os.path.expanduser(key) if key else None,
        )
        if line.get("remote_checkpoint_error"):
            self._display.warning(
                "knowngood: the S3 copy of the audit checkpoint failed (%s); the local chain "
                "and checkpoint are written" % line["remote_checkpoint_error"]
            )
        self._display.display("knowngood: audit record %s" % path)
