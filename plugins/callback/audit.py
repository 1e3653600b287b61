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
  - Opens the record (who, what, request, approvals so far) with an C(open) index entry when the
    playbook starts and closes it at the end, so a run killed on the way leaves an open record
    that C(knowngood audit verify) reports. Under C(knowngood run) the wrapper opens it.
  - Refuses to run (exit 5, before any task) when C(KNOWNGOOD_RUN_ID) or C(KNOWNGOOD_USER) is not
    a safe name (they become parts of record paths).
  - Inside AWX (C(JOB_ID) set, as AWX sets it for every job) the execution environment and its
    audit directory are thrown away after the job, so the record, every signed index line and
    every checkpoint also go to the object-locked witness under C(awx/<AWX host>/job-<JOB_ID>/).
    Without a witness, a lock period or C(KNOWNGOOD_AUDIT_KEY) the job stops before any task
    (exit 5); a witness that cannot take the opening record stops it too, and one that cannot
    take the closing record fails the job (exit 5) after saying so.
options:
  audit_key:
    description:
      - SSH private key that signs each index line (namespace knowngood-audit); made on first
        use. Keep it, and the checkpoints written beside it, outside I(audit_dir).
      - Unset, the one resolution of the trail decides (the lab's
        C(governance/audit_key) when a lab is set up, else C(~/.config/knowngood/audit_key)).
    type: path
    env:
      - name: KNOWNGOOD_AUDIT_KEY
    ini:
      - section: callback_knowngood_audit
        key: audit_key
  audit_dir:
    description:
      - Directory for audit records. Unset, the lab's C(audit/) when a lab is set up
        (C(KNOWNGOOD_LAB_DIR)), else C(~/.local/state/knowngood/audit), the same trail
        C(knowngood run) and C(knowngood audit) use.
    type: path
    env:
      - name: KNOWNGOOD_AUDIT_DIR
    ini:
      - section: callback_knowngood_audit
        key: audit_dir
  prometheus_url:
    description:
      - Prometheus whose error rate and p95 latency around the run are captured into the record
        when the run ends (from two minutes before its start to its end), so the incident report
        draws its chart without Prometheus. Unset, the inventory's C(knowngood_prometheus_url);
        with neither, nothing is captured and the report says so.
    type: str
    env:
      - name: KNOWNGOOD_PROMETHEUS_URL
    ini:
      - section: callback_knowngood_audit
        key: prometheus_url
  metrics_after_s:
    description:
      - Seconds to wait after the run before capturing its metrics, so the record also holds
        the service after the rollback (at most 600). The default, 0, captures at once, so the
        chart ends with the run and the playbook ends no later.
    type: float
    default: 0
    env:
      - name: KNOWNGOOD_METRICS_AFTER_S
    ini:
      - section: callback_knowngood_audit
        key: metrics_after_s
"""

import getpass
import os
import time
import uuid

from ansible import context
from ansible.plugins.callback import CallbackBase
from ansible.template import Templar
from ansible_collections.knowngood.runbooks.plugins.module_utils import (
    audit_chain,
    audit_record,
    incident_metrics,
    notify,
)

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
    # a primary left without its synchronous standby (pg_synchronous): the risk, recorded
    "degraded",
    "warning",
    "severity",
    "action",
    "approvals_required",
    "triggers",
    "fired",
    "inconclusive",
    "baseline",
    # a probe's verdict: the measured latency, what it was judged against, the tolerance
    "latency",
    "breaches",
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
    # what a restore reached and what a drill counted: the report's data-loss sentence
    "reached_time",
    "reached_lsn",
    "tables",
    "rpo_s",
    "rows_committed",
    "rows_lost",
    # a long step's progress (backup, restore, replay): each phase's summary, the lines shown
    "progress",
)
mask = audit_record.mask
utcnow = audit_chain.utcnow


def _phase(task, play):
    role = getattr(task, "_role", None)
    if role is not None:
        try:
            return role.get_name(include_role_fqcn=False)
        except TypeError:
            return role.get_name()
    return play.get_name() if play is not None else ""


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
        try:
            audit_chain.check_name(self.run_id, "KNOWNGOOD_RUN_ID")
            audit_chain.check_name(os.environ.get("KNOWNGOOD_USER") or getpass.getuser(), "user")
        except audit_chain.AuditError as exc:
            # A callback's exception is only a warning to Ansible: stop before any task instead.
            # (SystemExit, raised in __init__, ends ansible-playbook with this status.)
            self._display.error("knowngood: %s" % exc)
            raise SystemExit(5) from exc
        try:
            self.awx = audit_chain.awx_job()
            if self.awx:
                # Fail closed before any task when the job's record could not outlive the EE.
                audit_chain.resolve_trail()
        except (audit_chain.AuditError, ValueError) as exc:
            self._display.error("knowngood: %s" % exc)
            raise SystemExit(5) from exc
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
        if self.awx:
            self.record["awx"] = dict(self.awx)
        self.started = time.time()
        self.task_started = {}
        self.play = None
        # The start notice's task and host: the end notice reuses its arguments.
        self.announced = None

    def _trail(self):
        return audit_chain.resolve_trail(self.get_option("audit_dir"), self.get_option("audit_key"))

    def v2_playbook_on_start(self, playbook):
        self.record["playbook"] = os.path.abspath(playbook._file_name)
        if os.environ.get("KNOWNGOOD_AUDIT_OPENED") == self.run_id:
            return  # knowngood run opened this record before starting us
        plays = playbook.get_plays()
        extra = {}
        if plays:
            extra = dict(getattr(plays[0].get_variable_manager(), "extra_vars", None) or {})
        opening = dict(
            (k, self.record[k])
            for k in ("run_id", "kind", "user", "os_user", "key_fingerprint", "inventory", "limit")
        )
        if self.awx:
            # Who launched the job in AWX (the EE's OS user is always the same).
            for field in ("user_name", "workflow_job_id", "job_template_name", "job_launch_type"):
                value = extra.get("awx_" + field, extra.get("tower_" + field))
                if value not in (None, ""):
                    self.record["awx"][field] = value
            opening["awx"] = self.record["awx"]
        opening.update(
            playbook=self.record["playbook"],
            started_at=self.record["started_at"],
            extra_vars=mask(extra),
            ticket=str(extra.get("ticket") or os.environ.get("KNOWNGOOD_TICKET", "")),
            reason=str(extra.get("rollback_reason") or os.environ.get("KNOWNGOOD_REASON", "")),
            request=str(extra.get("knowngood_request") or ""),
            break_glass=str(extra.get("knowngood_break_glass") or ""),
            check_mode=bool(context.CLIARGS.get("check", False)),
        )
        try:
            line = audit_chain.open_record(self._trail(), opening)
        except Exception as exc:  # the close still records the run; the gap is shown
            if self.awx:  # ... except in AWX, where nothing else would keep the record
                self._display.error(
                    "knowngood: AWX job %s not started: could not open its audit record: %s"
                    % (self.awx["job_id"], exc)
                )
                raise SystemExit(5) from exc
            self._display.warning("knowngood: could not open the audit record: %s" % exc)
            return
        if line.get("remote_checkpoint_error"):
            self._display.warning(
                "knowngood: the audit witness copy failed (%s)" % line["remote_checkpoint_error"]
            )

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
        if task.action.endswith("run_lock") and isinstance(raw.get("results"), list):
            # one line per host locked: taken, refused naming the holder, or a stale lock
            # taken over (the warning the run must keep)
            kept["locks"] = [
                dict((k, item[k]) for k in ("item", "msg", "failed", "changed") if k in item)
                for item in raw["results"]
                if isinstance(item, dict)
            ]
        if raw.get("censored"):
            kept = {"censored": True, "changed": raw.get("changed", False)}
        event = {
            "ts": utcnow(),
            "host": result._host.get_name(),
            "task": task.get_name(),
            # the phase the report groups tasks by: the role, else the play
            "phase": _phase(task, self.play),
            "action": task.action,
            "status": status,
            "changed": bool(raw.get("changed")),
            "duration_s": round(time.time() - self.task_started.get(task._uuid, time.time()), 3),
            "result": mask(kept),
        }
        self.record["events"].append(event)
        if task.action.endswith("notify") and isinstance(raw.get("results"), list):
            for item in raw["results"]:  # a loop (escalate.yml): each item's notices
                if isinstance(item, dict) and isinstance(item.get("notifications"), list):
                    self.record["notifications"].extend(mask(item["notifications"]))
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
        self._capture_metrics(hosts)
        self._write()

    def _prometheus_url(self, hosts):
        url = self.get_option("prometheus_url")
        if url or self.play is None:
            return url or ""
        try:  # the inventory's knowngood_prometheus_url, as the roles resolve it
            manager = self.play.get_variable_manager()
            for name in hosts[:1] or [None]:
                host = manager._inventory.get_host(name) if name else None
                variables = manager.get_vars(play=self.play, host=host)
                if variables.get("knowngood_prometheus_url"):
                    templar = Templar(loader=self.play._loader, variables=variables)
                    return str(templar.template(variables["knowngood_prometheus_url"]) or "")
        except Exception as exc:  # no URL costs the chart, never the record
            self._display.warning("knowngood: no Prometheus URL for the record: %s" % exc)
        return ""

    def _capture_metrics(self, hosts):
        """The metrics around the run, into the record before it is sealed (the report's
        chart then needs no Prometheus)."""
        url = self._prometheus_url(hosts)
        if not url:
            self.record["metrics"] = {"errors": {"all": "no Prometheus URL given"}}
            return
        after = min(max(float(self.get_option("metrics_after_s") or 0), 0), 600)
        if after and not self.record.get("check_mode"):
            time.sleep(after)
        self.record["metrics"] = incident_metrics.capture(
            url, self.started, self.started + self.record["duration_s"]
        )

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
        try:
            path, line = audit_chain.close_record(self._trail(), self.record)
        except audit_chain.AuditError as exc:
            if not self.awx:
                raise
            self._display.error(
                "knowngood: AWX job %s failed: its audit record did not reach the witness: %s"
                % (self.awx["job_id"], exc)
            )
            raise SystemExit(5) from exc
        if line.get("after_torn"):
            self._display.warning(
                "knowngood: the audit index ended in a torn line (an interrupted write); this "
                "record is chained after it; run `knowngood audit repair`"
            )
        if line.get("remote_checkpoint_error"):
            self._display.warning(
                "knowngood: the audit witness copy of the checkpoint failed (%s); the local chain "
                "and checkpoint are written" % line["remote_checkpoint_error"]
            )
        self._display.display("knowngood: audit record %s" % path)
        if self.awx:
            witness = self._trail()["witness"]
            self._display.display(
                "knowngood: AWX job %s recorded in the witness %s/%s/ (run %s)"
                % (self.awx["job_id"], witness["url"], witness["trail"], self.run_id)
            )
