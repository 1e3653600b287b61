"""Lint: no runbook hides a task's failure and then judges it by a key that cannot say so.

`failed_when: false` rewrites the registered result's `failed` to false, so a later
`result.failed` or `result is failed` can never be true; and a key our module returns on every
path (`returned: always`) is always defined, so `result.key is not defined` can never be true.
Either turns a refusal into a silent pass: rollback-database.yml once stopped writes and took a
safety backup for a target one day in the future because its preflight was judged this way.
This check runs over every role and playbook; the cases below prove it catches that pattern.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
# Keys Ansible itself sets on a registered result, whatever the module.
ANSIBLE_KEYS = {
    "failed", "changed", "msg", "skipped", "skip_reason", "results", "rc", "stdout", "stderr",
    "stdout_lines", "stderr_lines", "cmd", "start", "end", "delta", "attempts", "exception",
    "invocation", "false_condition", "unreachable", "warnings", "deprecations", "diff",
    "ansible_facts", "item", "ansible_loop_var", "failed_when_result",
}  # fmt: skip
JUDGED_AS_FAILED = r"(?:\.failed\b|\[['\"]failed['\"]\]|\s+is\s+(?:not\s+)?(?:failed|failure|success|succeeded|successful)\b)"  # noqa: E501


@dataclass
class Task:
    source: str
    name: str
    module: str
    register: str
    hides_failure: str  # "", "failed_when: false" or "ignore_errors"


def _module_of(task: dict) -> str:
    skip = {
        "name", "register", "when", "vars", "tags", "failed_when", "changed_when", "until",
        "retries", "delay", "loop", "loop_control", "check_mode", "diff", "delegate_to",
        "run_once", "ignore_errors", "no_log", "environment", "become", "become_user", "args",
        "notify", "listen", "block", "rescue", "always", "any_errors_fatal", "throttle",
        "timeout", "async", "poll", "with_items", "with_dict", "local_action", "connection",
    }  # fmt: skip
    return next((k for k in task if k not in skip), "")


def _hides(task: dict) -> str:
    if task.get("failed_when") in (False, "false", "False"):
        return "failed_when: false"
    if task.get("ignore_errors") in (True, "true", "yes", "True"):
        return "ignore_errors"
    return ""


def tasks_of(source: str, text: str) -> list[Task]:
    found: list[Task] = []

    def walk(items):
        for item in items or []:
            if not isinstance(item, dict):
                continue
            for key in ("block", "rescue", "always", "tasks", "pre_tasks", "post_tasks"):
                walk(item.get(key))
            if item.get("register"):
                found.append(
                    Task(
                        source,
                        str(item.get("name")),
                        _module_of(item),
                        item["register"],
                        _hides(item),
                    )
                )

    data = yaml.safe_load(text)
    walk(data if isinstance(data, list) else [])
    return found


def always_returned(module: str) -> set[str] | None:
    """Keys a module of ours returns on every path, failure included: documented as
    `returned: always` by a module whose fail_json passes its whole result. None otherwise."""
    prefix = "knowngood.runbooks."
    if not module.startswith(prefix):
        return None
    path = REPO / "plugins" / "modules" / f"{module[len(prefix) :]}.py"
    source = path.read_text()
    if not re.search(r"fail_json\(.*\*\*\w", source):
        return None
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "RETURN":
            doc = yaml.safe_load(node.value.value) or {}
            return {k for k, v in doc.items() if str(v.get("returned", "")).strip() == "always"}
    return set()


def findings(tasks: list[Task], texts: dict[str, str]) -> list[str]:
    everything = "\n".join(texts.values())
    out = []
    for task in tasks:
        if not task.hides_failure:
            continue
        reg = re.escape(task.register)
        where = f"{task.source}: {task.name!r} ({task.hides_failure}, register {task.register})"
        # The batch gate (filter batch_failures) judges the named result by its failed state.
        gated = rf"batch_failures\(\s*hostvars\s*,\s*['\"]{reg}['\"]"
        if task.hides_failure == "failed_when: false" and (
            re.search(rf"\b{reg}{JUDGED_AS_FAILED}", everything) or re.search(gated, everything)
        ):
            out.append(f"{where} is judged by its failed state, which failed_when: false erases")
        always = always_returned(task.module)
        if always is None:
            continue
        for key in sorted(
            set(re.findall(rf"\b{reg}\.(\w+)\s+is\s+(?:not\s+)?defined", everything))
        ):
            if key in always:
                out.append(f"{where} is judged by {key!r} being defined, which it always is")
    return out


def runbook_texts() -> dict[str, str]:
    files = sorted(REPO.glob("roles/*/tasks/*.yml")) + sorted(REPO.glob("playbooks/*.yml"))
    return {str(f.relative_to(REPO)): f.read_text() for f in files}


def test_no_runbook_judges_a_hidden_failure_by_a_key_that_cannot_say_so():
    texts = runbook_texts()
    tasks = [t for source, text in texts.items() for t in tasks_of(source, text)]
    assert len(tasks) > 50  # the scan reached the roles
    assert findings(tasks, texts) == []


OLD_PREFLIGHT = """
- name: Plan the recovery
  knowngood.runbooks.pg_pitr:
    state: planned
  register: db_preflight_plan
  failed_when: false
- name: Refuse when the plan cannot be proven
  ansible.builtin.fail:
    msg: refused
  when: db_preflight_plan.failed | default(false) or db_preflight_plan.plan is not defined
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (OLD_PREFLIGHT, ["failed_when: false erases", "'plan' being defined"]),
        (OLD_PREFLIGHT.replace("failed_when: false", "ignore_errors: true"), ["'plan' being"]),
        (OLD_PREFLIGHT.replace("db_preflight_plan.failed | default(false) or ", "")
         .replace(".plan is not defined", " is failed"), ["failed_when: false erases"]),
        (OLD_PREFLIGHT.replace("  failed_when: false\n", ""), []),
        # the batch gate judges the named result by its failed state
        ("- name: s\n  knowngood.runbooks.release:\n    state: current\n  register: r\n"
         "  failed_when: false\n- name: g\n  ansible.builtin.fail:\n    msg: x\n  when: >-\n"
         "    ansible_play_batch | knowngood.runbooks.batch_failures(hostvars, 'r') | length > 0\n",
         ["failed_when: false erases"]),
        # psql's rc is set whatever failed_when says: judging by it is sound
        ("- name: q\n  ansible.builtin.command: psql\n  register: r\n  failed_when: false\n"
         "- name: g\n  ansible.builtin.assert:\n    that: r.rc == 0\n", []),
    ],
)  # fmt: skip
def test_the_check_catches_the_preflight_that_let_a_refused_plan_through(text, expected):
    got = findings(tasks_of("case.yml", text), {"case.yml": text})
    assert len(got) == len(expected), got
    for message, part in zip(got, expected, strict=True):
        assert part in message
