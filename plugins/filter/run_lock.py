# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""run_lock_path: where a host's run lock lives, from its inventory variables."""

from ansible_collections.knowngood.runbooks.plugins.module_utils.run_lock import lock_path


def run_lock_path(hostvars):
    return lock_path(hostvars)


class FilterModule:
    def filters(self):
        return {"run_lock_path": run_lock_path}
