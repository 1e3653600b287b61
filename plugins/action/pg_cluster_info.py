# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action for knowngood.runbooks.pg_cluster_info: in-process for local hosts, the module otherwise.

The database and recovery runbooks read their clusters a dozen times per run, several of them
in polling loops: an interpreter start and a psycopg import per read was most of each read's
cost."""

from ansible_collections.knowngood.runbooks.plugins.module_utils import cluster_info
from ansible_collections.knowngood.runbooks.plugins.plugin_utils.in_process import (
    InProcessAction,
)


class ActionModule(InProcessAction):
    MODULE = "knowngood.runbooks.pg_cluster_info"
    ARGUMENT_SPEC = cluster_info.ARGUMENT_SPEC

    def run_here(self, module):
        return cluster_info.run(module.params)
