# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action for knowngood.runbooks.release_info: in-process for local hosts, the module otherwise."""

from ansible_collections.knowngood.runbooks.plugins.module_utils import release_ops
from ansible_collections.knowngood.runbooks.plugins.plugin_utils.in_process import (
    InProcessAction,
)


class ActionModule(InProcessAction):
    MODULE = "knowngood.runbooks.release_info"
    ARGUMENT_SPEC = release_ops.INFO_ARGUMENT_SPEC

    def run_here(self, module):
        return release_ops.info(module.params)
