# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action for knowngood.runbooks.release_info: in-process for local hosts, the module otherwise."""

from ansible.plugins.action import ActionBase
from ansible_collections.knowngood.runbooks.plugins.module_utils.local_exec import (
    can_run_in_process,
    validate,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils.release import (
    ReleaseError,
    describe,
)
from ansible_collections.knowngood.runbooks.plugins.modules.release_info import ARGUMENT_SPEC


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        if not can_run_in_process(self):
            result.update(
                self._execute_module(
                    module_name="knowngood.runbooks.release_info",
                    module_args=self._task.args,
                    task_vars=task_vars,
                )
            )
            return result
        params, errors = validate(self._task.args, ARGUMENT_SPEC)
        if errors:
            result.update(failed=True, msg="; ".join(errors))
            return result
        try:
            result.update(describe(params["root"], params["release_id"]), changed=False)
        except (ReleaseError, OSError) as exc:
            result.update(failed=True, msg=str(exc))
        return result
