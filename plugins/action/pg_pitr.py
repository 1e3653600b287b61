# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action for knowngood.runbooks.pg_pitr: a restore and its WAL replay run async and show
their progress; planning, promoting and releasing run as before."""

from ansible_collections.knowngood.runbooks.plugins.plugin_utils.progress_action import (
    ProgressAction,
)


class ActionModule(ProgressAction):
    MODULE = "knowngood.runbooks.pg_pitr"

    def is_long(self, args):
        return args.get("state", "planned") in ("recovered", "table_restored")
