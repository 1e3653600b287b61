# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action for knowngood.runbooks.release: in-process for local hosts, the module otherwise."""

from ansible_collections.knowngood.runbooks.plugins.module_utils import release_ops
from ansible_collections.knowngood.runbooks.plugins.plugin_utils.in_process import (
    InProcessAction,
)


class ActionModule(InProcessAction):
    MODULE = "knowngood.runbooks.release"
    ARGUMENT_SPEC = release_ops.ARGUMENT_SPEC
    CONSTRAINTS = {
        "required_if": release_ops.REQUIRED_IF,
        "mutually_exclusive": release_ops.MUTUALLY_EXCLUSIVE,
    }

    def run_here(self, module):
        return release_ops.run(module)
