# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action for knowngood.runbooks.http_probe: in-process for local hosts, the module otherwise.

A probe runs after every switch and before some: an interpreter start per host per probe was
most of its cost (and a CPU the probe's own timing then competed for)."""

from ansible_collections.knowngood.runbooks.plugins.module_utils import http_probe
from ansible_collections.knowngood.runbooks.plugins.plugin_utils.in_process import (
    InProcessAction,
)


class ActionModule(InProcessAction):
    MODULE = "knowngood.runbooks.http_probe"
    ARGUMENT_SPEC = http_probe.ARGUMENT_SPEC

    def run_here(self, module):
        return http_probe.run(module.params)
