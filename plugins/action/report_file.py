# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action for knowngood.runbooks.report_file: in-process for local hosts (the controller,
where the runbooks write their reports), the module otherwise."""

from ansible_collections.knowngood.runbooks.plugins.module_utils import report_file
from ansible_collections.knowngood.runbooks.plugins.plugin_utils.in_process import (
    InProcessAction,
)


class ActionModule(InProcessAction):
    MODULE = "knowngood.runbooks.report_file"
    ARGUMENT_SPEC = report_file.ARGUMENT_SPEC

    def run_here(self, module):
        return report_file.run(module)
