# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run a long database step (backup, restore, WAL replay) with Ansible async and show its
progress, instead of one task silent for minutes.

The module is started with async (so no connection is held open for the whole step) and told
where to report (its progress_file option, beside Ansible's async job file on the host). Every
TICK seconds one shell command over the task's connection reads the progress file and the job
file together (an SSH host as well as a local one), so the end of the step is seen at once; a
line is printed through Display every `knowngood_progress_interval` seconds when the progress
moved, and when a phase ends. When the job is done its result is fetched with
async_status, as Ansible's own poll does, and carries the progress (`progress`: each phase's
summary and the lines printed) for the audit record. Check mode, a short step, a task that
sets `async:` itself and an interval of 0 run the module as before. A host on the local
connection without become (the controller itself, as in the lab) needs no async job: the module
runs from a thread of the worker while the worker reads the progress file from the disk, at no
cost beyond the step's own.

Controller-only: action plugins import this; modules never do.
"""

import json
import os
import shlex
import shutil
import tempfile
import threading
import time
import uuid

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display
from ansible_collections.knowngood.runbooks.plugins.module_utils.progress import describe
from ansible_collections.knowngood.runbooks.plugins.plugin_utils.in_process import (
    can_run_in_process,
)

display = Display()

DEFAULT_INTERVAL = 5.0
TICK = 0.5
# The async time limit: async_wrapper kills the step after it. Far above any restore's own
# timeouts, which fail the step properly first.
DEFAULT_LIMIT = 86400
KEPT_LINES = 200
_SPLIT = "--kg-progress-job--"
_ASYNC_KEYS = ("ansible_job_id", "finished", "started", "results_file")


def job_finished(job):
    """True when async_wrapper's job file holds the module's outcome (not 'started')."""
    return isinstance(job, dict) and ("started" not in job or bool(job.get("finished")))


def parse_peek(text):
    """(progress snapshot or None, job file document or None) from one peek's output."""
    progress_text, _split, job_text = text.partition(_SPLIT)
    return _json_or_none(progress_text), _json_or_none(job_text)


def _json_or_none(text):
    try:
        value = json.loads(text.strip())
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class ProgressLog:
    """What to print from successive snapshots: a line when a phase moved or ended, once."""

    def __init__(self, host):
        self.host = host
        self.lines = []
        self.printed = set()  # (phase, done, finished)
        self.ended = 0  # phases whose final line was printed

    def lines_for(self, snapshot, due=True):
        """The new lines a snapshot brings: each phase ended since, then the current one's
        when `due` (a poll interval has passed)."""
        if not snapshot:
            return []
        out = []
        phases = snapshot.get("phases") or []
        for summary in phases[self.ended :]:
            out += self._line(summary)
        self.ended = len(phases)
        if due and snapshot.get("phase") and not snapshot.get("finished"):
            out += self._line(snapshot)
        return out

    def _line(self, view):
        key = (view.get("phase"), view.get("done"), bool(view.get("finished")))
        if key in self.printed:
            return []
        self.printed.add(key)
        line = f"{self.host}: {describe(view)}"
        self.lines.append(line)
        return [line]

    def summary(self, snapshot):
        lines = self.lines
        if len(lines) > KEPT_LINES:
            half = KEPT_LINES // 2
            lines = lines[:half] + [f"... {len(lines) - KEPT_LINES} lines left out"] + lines[-half:]
        return {
            "phases": (snapshot or {}).get("phases") or [],
            "elapsed_s": (snapshot or {}).get("elapsed_s"),
            "lines": lines,
        }


class ProgressAction(ActionBase):
    """Subclasses name MODULE and say which args make a long step (is_long)."""

    MODULE = ""
    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_async = True

    def is_long(self, args):
        raise NotImplementedError

    def _setting(self, task_vars, name, default, kind):
        value = task_vars.get(name, default)
        try:
            return kind(self._templar.template(value))
        except (TypeError, ValueError) as err:
            raise AnsibleError(f"{name} must be a number, got {value!r}") from err

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        interval = self._setting(task_vars, "knowngood_progress_interval", DEFAULT_INTERVAL, float)
        wrap_async = bool(self._task.async_val) and not self._connection.has_native_async
        plain = (
            wrap_async
            or self._task.async_val
            or self._play_context.check_mode
            or interval <= 0
            or not self.is_long(self._task.args)
        )
        if plain:
            result.update(
                self._execute_module(
                    module_name=self.MODULE,
                    module_args=self._task.args,
                    task_vars=task_vars,
                    wrap_async=wrap_async,
                )
            )
            if not wrap_async:
                self._remove_tmp_path(self._connection._shell.tmpdir)
            return result
        if can_run_in_process(self):
            result.update(self._run_beside(task_vars, interval))
            return result
        limit = self._setting(task_vars, "knowngood_progress_async_limit", DEFAULT_LIMIT, int)
        result.update(self._run_watched(task_vars, interval, limit))
        return result

    def _run_beside(self, task_vars, interval):
        """A host on the local connection, no become (the controller is the host, as in the
        lab): the module runs as usual, from a thread of this worker, while this thread reads
        its progress file straight from the disk. No async job, no remote temporary directory,
        no async_status: the step costs what it costs without progress."""
        workdir = tempfile.mkdtemp(prefix="kg-progress-")
        args = dict(self._task.args, progress_file=os.path.join(workdir, "progress.json"))
        box = {}

        def work():
            try:
                box["result"] = self._execute_module(
                    module_name=self.MODULE, module_args=args, task_vars=task_vars
                )
            except BaseException as err:  # re-raised below, in the task's own thread
                box["error"] = err

        log = ProgressLog(self._task.delegate_to or task_vars.get("inventory_hostname") or "host")
        snapshot = None
        tick = min(interval, TICK)
        next_line = time.monotonic() + tick
        worker = threading.Thread(target=work, name="kg-progress-step", daemon=True)
        worker.start()
        try:
            while True:
                worker.join(tick)
                try:
                    with open(args["progress_file"], encoding="utf-8") as handle:
                        snapshot = _json_or_none(handle.read()) or snapshot
                except OSError:
                    pass  # not written yet
                due = time.monotonic() >= next_line
                if due:
                    next_line = time.monotonic() + interval
                for line in log.lines_for(snapshot, due=due):
                    display.display(line)
                if not worker.is_alive():
                    break
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        if "error" in box:
            raise box["error"]
        self._remove_tmp_path(self._connection._shell.tmpdir)
        outcome = box["result"]
        outcome["progress"] = log.summary(snapshot)
        return outcome

    def _run_watched(self, task_vars, interval, limit):
        async_dir = self._remote_expand_user(
            self.get_shell_option("async_dir", default="~/.ansible_async")
        )
        progress_path = self._connection._shell.join_path(
            async_dir, f"kg-progress-{uuid.uuid4().hex}.json"
        )
        args = dict(self._task.args, progress_file=progress_path)
        saved = self._task.async_val
        self._task.async_val = limit
        try:
            started = self._execute_module(
                module_name=self.MODULE, module_args=args, task_vars=task_vars, wrap_async=True
            )
        finally:
            self._task.async_val = saved
        if started.get("failed") or "ansible_job_id" not in started:
            return started
        jid, job_path = started["ansible_job_id"], started["results_file"]
        host = self._task.delegate_to or task_vars.get("inventory_hostname") or "host"
        log = ProgressLog(host)
        snapshot = None
        deadline = time.monotonic() + limit + 60
        peek = (
            f"cat {shlex.quote(progress_path)} 2>/dev/null; echo; echo {_SPLIT}; "
            f"cat {shlex.quote(job_path)} 2>/dev/null"
        )
        tick = min(interval, TICK)
        next_line = time.monotonic() + tick  # the first line early: what the step is doing
        while True:
            time.sleep(tick)
            res = self._low_level_execute_command(peek, sudoable=True)
            found, job = parse_peek(res.get("stdout", ""))
            snapshot = found or snapshot
            due = time.monotonic() >= next_line
            if due:
                next_line = time.monotonic() + interval
            for line in log.lines_for(snapshot, due=due):
                display.display(line)
            if job_finished(job) or time.monotonic() > deadline:
                break
        outcome = self._execute_module(
            module_name="ansible.legacy.async_status",
            module_args={"jid": jid, "_async_dir": async_dir},
            task_vars=task_vars,
        )
        self._low_level_execute_command(
            f"rm -f {shlex.quote(progress_path)} {shlex.quote(job_path)}", sudoable=True
        )
        self._remove_tmp_path(self._connection._shell.tmpdir)
        if not outcome.get("finished"):
            return {
                "failed": True,
                "msg": f"{self.MODULE} did not finish within the async limit of {limit}s "
                f"(knowngood_progress_async_limit); job {jid}",
                "progress": log.summary(snapshot),
            }
        for key in _ASYNC_KEYS:
            outcome.pop(key, None)
        outcome["progress"] = log.summary(snapshot)
        return outcome
