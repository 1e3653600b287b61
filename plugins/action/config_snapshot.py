# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action for knowngood.runbooks.config_snapshot: in-process for local hosts, the module otherwise.

Every code and configuration rollback snapshots each host's managed configuration at least
once: an interpreter start per host per snapshot was most of the snapshot's cost."""

from ansible_collections.knowngood.runbooks.plugins.module_utils import config_snapshot_task
from ansible_collections.knowngood.runbooks.plugins.plugin_utils.in_process import (
    InProcessAction,
)


class ActionModule(InProcessAction):
    MODULE = "knowngood.runbooks.config_snapshot"
    ARGUMENT_SPEC = config_snapshot_task.ARGUMENT_SPEC

    def run_here(self, module):
        return config_snapshot_task.run(module)
