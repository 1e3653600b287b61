# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters over releases, so playbooks judge ids with the same code as the modules."""

from ansible_collections.knowngood.runbooks.plugins.module_utils.release import (
    ReleaseError,
    validate_release_id,
)


def release_id_error(value):
    try:
        validate_release_id(value)
    except ReleaseError as exc:
        return str(exc)
    return ""


class FilterModule:
    def filters(self):
        return {"release_id_error": release_id_error}
