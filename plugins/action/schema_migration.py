# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action for knowngood.runbooks.schema_migration: in-process for local hosts, the module otherwise.

Every code rollback and deploy plans the schema change on each host and then applies it: two
interpreter starts and psycopg imports per host before the switch."""

from ansible_collections.knowngood.runbooks.plugins.module_utils import schema_migration
from ansible_collections.knowngood.runbooks.plugins.plugin_utils.in_process import (
    InProcessAction,
)


class ActionModule(InProcessAction):
    MODULE = "knowngood.runbooks.schema_migration"
    ARGUMENT_SPEC = schema_migration.ARGUMENT_SPEC
    CONSTRAINTS = {"required_if": schema_migration.REQUIRED_IF}

    def run_here(self, module):
        return schema_migration.run(module)
