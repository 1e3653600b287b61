# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action for knowngood.runbooks.release_info: in-process for local hosts, the module otherwise."""

from ansible_collections.knowngood.runbooks.plugins.action.release import InProcessAction
from ansible_collections.knowngood.runbooks.plugins.module_utils.release import (
    ReleaseError,
    describe,
)
from ansible_collections.knowngood.runbooks.plugins.modules.release_info import ARGUMENT_SPEC


class ActionModule(InProcessAction):
    MODULE = "knowngood.runbooks.release_info"
    ARGUMENT_SPEC = ARGUMENT_SPEC

    def run_here(self, module):
        try:
            state = describe(module.params["root"], module.params["release_id"])
        except (ReleaseError, OSError) as exc:
            return True, {"msg": str(exc)}
        return False, dict(state, changed=False)
