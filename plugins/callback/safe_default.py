# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
name: safe_default
type: stdout
short_description: The default output, without the failure details of no_log tasks
version_added: "0.2.0"
description:
  - ansible-core 2.19 shows the error message of a failed task (C(fail), C(assert), a failing
    loop item) even when the task has C(no_log), once the default output is wrapped by another
    stdout callback, as ansible-runner's C(awx_display) does. Those messages carry the secrets
    no_log was meant to hide. This callback is the default one, except that a no_log task's
    exception is replaced by a fixed line.
  - C(knowngood run) selects it; ansible-runner's event display wraps it.
extends_documentation_fragment:
  - ansible.builtin.default_callback
  - ansible.builtin.result_format_callback
"""

from ansible.plugins.callback.default import CallbackModule as DefaultCallback


class CallbackModule(DefaultCallback):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "knowngood.runbooks.safe_default"

    def _handle_exception(self, result, use_stderr=False):
        current = getattr(self, "_current_task_result", None)
        task = getattr(current, "task", None) or getattr(current, "_task", None)
        if task is not None and getattr(task, "no_log", False):
            if result.pop("exception", None) is not None:
                self._display.display(
                    "task failed; its error is hidden because the task has no_log",
                    stderr=use_stderr,
                )
            return
        super()._handle_exception(result, use_stderr=use_stderr)
