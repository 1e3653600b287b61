# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action for knowngood.runbooks.release: in-process for local hosts, the module otherwise."""

from ansible.plugins.action import ActionBase
from ansible_collections.knowngood.runbooks.plugins.module_utils import release_ops
from ansible_collections.knowngood.runbooks.plugins.module_utils.local_exec import (
    InProcessModule,
    can_run_in_process,
    validate,
)


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
        if not can_run_in_process(self):
            result.update(
                self._execute_module(
                    module_name=self.MODULE, module_args=self._task.args, task_vars=task_vars
                )
            )
            return result
        params, errors = validate(self._task.args, self.ARGUMENT_SPEC, **self.CONSTRAINTS)
        if errors:
            result.update(failed=True, msg="; ".join(errors))
            return result
        module = InProcessModule(params, self._play_context.check_mode)
        failed, outcome = self.run_here(module)
        result.update(outcome)
        if failed:
            result["failed"] = True
        if module.warnings:
            result["warnings"] = module.warnings
        return result


class ActionModule(InProcessAction):
    MODULE = "knowngood.runbooks.release"
    ARGUMENT_SPEC = release_ops.ARGUMENT_SPEC
    CONSTRAINTS = {
        "required_if": release_ops.REQUIRED_IF,
        "mutually_exclusive": release_ops.MUTUALLY_EXCLUSIVE,
    }

    def run_here(self, module):
        return release_ops.run(module)
