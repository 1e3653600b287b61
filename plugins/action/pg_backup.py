# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action for knowngood.runbooks.pg_backup: a backup runs async and shows its progress."""

from ansible_collections.knowngood.runbooks.plugins.plugin_utils.progress_action import (
    ProgressAction,
)


class ActionModule(ProgressAction):
    MODULE = "knowngood.runbooks.pg_backup"

    def is_long(self, args):
        return args.get("state", "present") == "present"
