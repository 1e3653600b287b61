# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action for knowngood.runbooks.role_inputs: every role's argument spec, every host, one task.

Ansible checks an imported role's argument spec with a task of its own, per role, per entry
point, per host: on a rollback, six of them stood between the approval gate and the switch. This
task does the same checks, with the same validator, once for the whole batch in the controller.
"""

from pathlib import Path

import yaml
from ansible.errors import AnsibleError
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase
from ansible.template import Templar

# plugins/action/role_inputs.py -> the collection's roles/
ROLES_DIR = Path(__file__).resolve().parents[2] / "roles"
ARGUMENT_SPEC = {
    "roles": {"type": "dict", "required": True},
    "hosts": {"type": "list", "elements": "str"},
    "set_by_play": {"type": "list", "elements": "str", "default": []},
}


def entry_point_options(role, entry_point, set_by_play=()):
    """The options of one entry point of one of this collection's roles.

    An option in set_by_play is a fact an earlier step of the play sets (the plan
    code_identify records, checked where it is made): not required yet, but checked if given.
    """
    path = ROLES_DIR / role / "meta" / "argument_specs.yml"
    if not path.is_file():
        raise AnsibleError(f"role {role} has no meta/argument_specs.yml under {ROLES_DIR}")
    specs = (yaml.safe_load(path.read_text()) or {}).get("argument_specs") or {}
    if entry_point not in specs:
        raise AnsibleError(f"role {role} has no argument spec for entry point {entry_point}")
    options = dict(specs[entry_point].get("options") or {})
    for name in set_by_play:
        if name in options:
            options[name] = {**options[name], "required": False}
    return options


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def host_values(self, host, names, task_vars):
        """The values a role of this play sees on host for the options in names.

        Role defaults and play variables are the same expressions on every host: they come
        from this task's variables. Inventory variables, facts and extra variables are the
        host's own. Every value is templated in the host's context, as the role would see it.
        """
        variables = dict(task_vars)
        if host != task_vars.get("inventory_hostname"):
            variables.update(task_vars["hostvars"].raw_get(host))
        templar = Templar(loader=self._loader, variables=variables)
        return {name: templar.template(variables[name]) for name in names if name in variables}

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        params = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)[1]
        task_vars = task_vars or {}
        hosts = (
            params["hosts"]
            or task_vars.get("ansible_play_batch")
            or [task_vars["inventory_hostname"]]
        )
        specs = {}
        for role, entry_points in params["roles"].items():
            for entry_point in entry_points or ["main"]:
                specs[(role, entry_point)] = entry_point_options(
                    role, entry_point, params["set_by_play"]
                )
        names = {name for options in specs.values() for name in options}
        errors = []
        for host in hosts:
            values = self.host_values(host, names, task_vars)
            for (role, entry_point), options in specs.items():
                provided = {name: values[name] for name in options if name in values}
                checked = ArgumentSpecValidator(options).validate(
                    provided, validate_role_argument_spec=True
                )
                errors += [
                    f"{host}: {role} ({entry_point}): {message}"
                    for message in checked.error_messages
                ]
        result.update(
            changed=False,
            hosts=len(hosts),
            checked=[f"{role} ({entry_point})" for role, entry_point in specs],
        )
        if errors:
            result.update(
                failed=True,
                argument_errors=errors,
                msg="Validation of arguments failed, nothing was changed:\n" + "\n".join(errors),
            )
        else:
            result["msg"] = (
                f"the inputs of {len(specs)} role entry points are valid on {len(hosts)} hosts"
            )
        return result
