# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run one of our modules' logic in the controller's worker, for local-connection hosts.

Each module task otherwise starts a Python interpreter per host; on a rollback's critical path
for a fleet reached over the local connection (the controller is the host, as in the lab) that
start-up is most of the time to mitigate. Everything else - SSH hosts, become, delegation to a
remote host - goes through the module as usual.
"""

import subprocess

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator


class InProcessModule:
    """The slice of AnsibleModule our shared code uses: params, check_mode, run_command, warn."""

    def __init__(self, params, check_mode):
        self.params = params
        self.check_mode = check_mode
        self.warnings = []

    def run_command(self, argv):
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        return proc.returncode, proc.stdout, proc.stderr

    def warn(self, message):
        self.warnings.append(message)


def can_run_in_process(action):
    """True when the task's host is this machine and needs no privilege change."""
    connection = getattr(action._connection, "_load_name", "") or ""
    return connection.split(".")[-1] == "local" and not action._play_context.become


def validate(args, argument_spec, **constraints):
    """Validate task args exactly as AnsibleModule would; returns (params, errors)."""
    result = ArgumentSpecValidator(argument_spec, **constraints).validate(args)
    return result.validated_parameters, [str(e) for e in result.error_messages]
