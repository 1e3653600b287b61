# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Attributes every knowngood module shares: where it runs and the module_defaults group."""


class ModuleDocFragment:
    DOCUMENTATION = r"""
attributes:
  platform:
    platforms: posix
  action_group:
    description: Use C(group/knowngood.runbooks.runbooks) in C(module_defaults) to set
      defaults for every module of the group at once.
    support: full
    membership:
      - knowngood.runbooks.runbooks
"""
