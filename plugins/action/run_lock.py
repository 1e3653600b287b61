# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action for knowngood.runbooks.run_lock: names the owner (runbook, controller pid and host,
user, host) and checks a holder's controller pid here, on the controller, where it ran."""

import getpass
import os
import socket

from ansible import context
from ansible_collections.knowngood.runbooks.plugins.module_utils import run_lock
from ansible_collections.knowngood.runbooks.plugins.plugin_utils.in_process import (
    InProcessAction,
)


def runbook_name():
    """The playbook's name as the docs use it (rollback_database.yml imports rollback-database)."""
    playbooks = context.CLIARGS.get("args") or ["unknown"]
    base = os.path.basename(str(playbooks[0]))
    return (base[:-4] if base.endswith(".yml") else base).replace("_", "-")


class ActionModule(InProcessAction):
    MODULE = "knowngood.runbooks.run_lock"
    ARGUMENT_SPEC = run_lock.ARGUMENT_SPEC

    def run_here(self, module):
        return run_lock.run(module)

    def run(self, tmp=None, task_vars=None):
        result = super(InProcessAction, self).run(tmp, task_vars)
        task_vars = task_vars or {}
        args = dict(self._task.args)
        controller = socket.gethostname()
        args.setdefault("runbook", runbook_name())
        args.setdefault("user", os.environ.get("KNOWNGOOD_USER") or getpass.getuser())
        args.setdefault(
            "controller_pid", int(os.environ.get("KNOWNGOOD_CONTROLLER_PID") or os.getppid())
        )
        args.setdefault("controller_host", controller)
        args.setdefault("host", task_vars.get("inventory_hostname"))
        outcome = self.run_module(args, task_vars)
        holder = outcome.get("holder") or {}
        if (
            outcome.get("failed")
            and args.get("state", "locked") == "locked"
            and holder.get("run_id")
            and run_lock.owner_gone(holder, controller)
        ):
            # The holder ran on this controller and its process is gone: a remote host's module
            # cannot see that, so say so, naming exactly that holder.
            outcome = self.run_module(dict(args, stale_holder=holder["run_id"]), task_vars)
        result.update(outcome)
        return result
