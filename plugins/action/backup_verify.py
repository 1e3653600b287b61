# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action for knowngood.runbooks.backup_verify: with the restore tier (a full restore into a
scratch cluster) it runs async and shows its progress."""

from ansible_collections.knowngood.runbooks.plugins.plugin_utils.progress_action import (
    ProgressAction,
)


class ActionModule(ProgressAction):
    MODULE = "knowngood.runbooks.backup_verify"

    def is_long(self, args):
        return "restore" in (args.get("tiers") or ["restore"])
