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


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        if not can_run_in_process(self):
            result.update(
                self._execute_module(
                    module_name="knowngood.runbooks.release",
                    module_args=self._task.args,
                    task_vars=task_vars,
                )
            )
            return result
        params, errors = validate(
            self._task.args,
            release_ops.ARGUMENT_SPEC,
            required_if=release_ops.REQUIRED_IF,
            mutually_exclusive=release_ops.MUTUALLY_EXCLUSIVE,
        )
        if errors:
            result.update(failed=True, msg="; ".join(errors))
            return result
        module = InProcessModule(params, self._play_context.check_mode)
        failed, outcome = release_ops.run(module)
        result.update(outcome)
        if failed:
            result["failed"] = True
        if module.warnings:
            result["warnings"] = module.warnings
        return result
