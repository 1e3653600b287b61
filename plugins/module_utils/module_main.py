# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The main() of a module whose logic lives in module_utils as run() -> (failed, result).

Those modules also run in-process through their action plugins (plugin_utils/in_process.py),
which call the same run(); this is the other path, on the managed host.
"""

from ansible.module_utils.basic import AnsibleModule


def main(run, argument_spec, pass_params=False, **constraints):
    """Build the AnsibleModule (check mode supported), run, exit or fail with the result.

    run gets the module, or its params when pass_params is set."""
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True, **constraints)
    failed, result = run(module.params if pass_params else module)
    if failed:
        module.fail_json(**result)
    module.exit_json(**result)
