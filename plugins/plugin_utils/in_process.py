# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run one of our modules' logic in the controller's worker, for local-connection hosts.

Each module task otherwise starts a Python interpreter per host; on a rollback's critical path
for a fleet reached over the local connection (the controller is the host, as in the lab) that
start-up is most of the time to mitigate. Everything else - SSH hosts, become, delegation to a
remote host - goes through the module as usual.

Controller-only: action plugins import this; modules never do.
"""

import os
import subprocess

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase


class InProcessModule:
    """The slice of AnsibleModule our shared code uses: params, check_mode, _diff, run_command,
    warn."""

    def __init__(self, params, check_mode, diff=False):
        self.params = params
        self.check_mode = check_mode
        self._diff = diff
        self.warnings = []

    def run_command(self, argv, environ_update=None):
        env = dict(os.environ, **environ_update) if environ_update else None
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
        return proc.returncode, proc.stdout, proc.stderr

    def warn(self, message):
        self.warnings.append(message)


def can_run_in_process(action):
    """True when the task's host is this machine and needs no privilege change."""
    connection = getattr(action._connection, "_load_name", "") or ""
    return connection.split(".")[-1] == "local" and not action._play_context.become


def validate(args, argument_spec, **constraints):
    """Validate task args exactly as AnsibleModule would; returns (params, errors)."""
    result = ArgumentSpecValidator(argument_spec, **constraints).validate(args)
    return result.validated_parameters, [str(e) for e in result.error_messages]


class InProcessAction(ActionBase):
    """Validate the args like the module would, then run its logic here or ship the module.

    Subclasses name the module, give its argument spec and implement run_here().
    """

    TRANSFERS_FILES = False
    MODULE = ""
    ARGUMENT_SPEC = {}
    CONSTRAINTS = {}

    def run_here(self, module):
        """Return (failed, result) for an InProcessModule."""
        raise NotImplementedError

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        result.update(self.run_module(self._task.args, task_vars))
        return result

    def run_module(self, args, task_vars):
        """The module's result for args: computed here for a local host, shipped otherwise."""
        if not can_run_in_process(self):
            return self._execute_module(
                module_name=self.MODULE, module_args=args, task_vars=task_vars
            )
        result = {}
        params, errors = validate(args, self.ARGUMENT_SPEC, **self.CONSTRAINTS)
        if errors:
            result.update(failed=True, msg="; ".join(errors))
            return result
        module = InProcessModule(params, self._play_context.check_mode, self._play_context.diff)
        failed, outcome = self.run_here(module)
        result.update(outcome)
        if failed:
            result["failed"] = True
        if module.warnings:
            result["warnings"] = module.warnings
        return result
