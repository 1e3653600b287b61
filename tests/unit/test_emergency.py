"""The emergency runbook is generated from the runbooks and cannot drift from them.

The committed docs/emergency-runbook.md and .html must equal a fresh render; changes made to a
copy of the collection (a role's argument spec, a role's refusals, the playbook's order, the
contacts, the catalog's survey, the decision code's triggers as the facts file names them)
show up in, or stop, the render of that copy.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from knowngood import awx, emergency

REPO = Path(__file__).resolve().parents[2]
DOCS = {
    "md": REPO / "docs" / "emergency-runbook.md",
    "html": REPO / "docs" / "emergency-runbook.html",
}


@pytest.mark.parametrize("fmt", ["md", "html"])
def test_committed_emergency_runbook_is_current(fmt):
    fresh = emergency.generate(fmt, REPO)
    committed = DOCS[fmt].read_text() if DOCS[fmt].is_file() else ""
    assert committed == fresh, (
        f"{DOCS[fmt].relative_to(REPO)} is stale: run `make emergency-runbook`"
    )


def test_render_is_deterministic_and_has_no_timestamp():
    first, second = emergency.generate("md", REPO), emergency.generate("md", REPO)
    assert first == second
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert today not in first and "generated on" not in first.lower()


@pytest.fixture
def tree(tmp_path):
    """A copy of what the generator reads: playbooks, roles, catalog, facts, inventory, drills."""
    root = tmp_path / "collection"
    for name in ("playbooks", "roles", "awx", "molecule", "inventories/example"):
        shutil.copytree(REPO / name, root / name, symlinks=True)
    (root / "docs").mkdir()
    for name in ("emergency.yml", "runbooks"):
        src = REPO / "docs" / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / "docs" / name)
    return root


def _section(text: str, runbook: str) -> str:
    start = text.index(f"\n### {runbook}\n")
    end = text.find("\n### ", start + 1)
    return text[start : end if end > 0 else len(text)]


def _edit(path: Path, change) -> None:
    # The AWX catalog's `!unsafe` injector templates load as text (and are written back so).
    data = yaml.load(path.read_text(), Loader=awx._CatalogLoader)  # noqa: S506 - a SafeLoader
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_a_required_option_added_to_a_role_spec_appears_under_its_step(tree):
    before = _section(emergency.generate("md", tree), "rollback-code")
    assert "code_stop_break_glass_pager" not in before

    def add(data):
        data["argument_specs"]["main"]["options"]["code_stop_break_glass_pager"] = {
            "type": "str",
            "required": True,
            "description": "Pager to wake before the lock is taken.",
        }

    _edit(tree / "roles" / "code_stop" / "meta" / "argument_specs.yml", add)
    after = _section(emergency.generate("md", tree), "rollback-code")
    step = next(line for line in after.splitlines() if "`code_stop`." in line)
    assert "`code_stop_break_glass_pager` (Pager to wake before the lock is taken.)" in step
    # every runbook that runs code_stop's main entry point shows it, and only those
    deploy = _section(emergency.generate("md", tree), "deploy-code")
    assert "code_stop_break_glass_pager" in deploy
    assert "code_stop_break_glass_pager" not in _section(
        emergency.generate("md", tree), "rollback-flag"
    )


def test_a_new_assert_in_a_role_is_listed_as_a_refusal(tree):
    tasks = tree / "roles" / "code_flag" / "tasks" / "validate.yml"
    data = yaml.safe_load(tasks.read_text())
    data.append(
        {
            "name": "Refuse a flag the incident commander froze",
            "ansible.builtin.assert": {
                "that": ["code_flag_name not in ['frozen']"],
                "fail_msg": "flag is frozen by the incident commander",
            },
        }
    )
    tasks.write_text(yaml.safe_dump(data, sort_keys=False))
    section = _section(emergency.generate("md", tree), "rollback-flag")
    assert (
        "Refuse a flag the incident commander froze (`flag is frozen by the incident commander`)"
        in section
    )


def test_steps_follow_the_playbook_order_and_sections(tree):
    section = _section(emergency.generate("md", tree), "rollback-code")
    steps = [line for line in section.splitlines() if line[:1].isdigit()]
    roles = [line.split("`")[1] for line in steps]
    assert roles[:3] == ["approval_gate", "code_identify", "code_stop"]
    # step 5 (migrations) runs before step 3 (the switch), as the playbook orders them
    assert roles.index("code_migrations") < roles.index("code_restore")
    assert any("on failure only" in s and "`code_restore` (revert)" in s for s in steps)
    assert any("always, even on failure" in s and "`code_stop` (unlock)" in s for s in steps)

    playbook = tree / "playbooks" / "rollback-flag.yml"
    plays = yaml.safe_load(playbook.read_text())
    plays[0]["tasks"].append(
        {
            "name": "Step 9: take a configuration snapshot after the flag",
            "ansible.builtin.import_role": {"name": "knowngood.runbooks.config_take"},
        }
    )
    playbook.write_text(yaml.safe_dump(plays, sort_keys=False))
    flag = _section(emergency.generate("md", tree), "rollback-flag")
    last = [line for line in flag.splitlines() if line[:1].isdigit()][-1]
    assert last.startswith("3. **Step 9: take a configuration snapshot after the flag**")


def test_contacts_and_approvers_come_from_the_inventory_vars(tree):
    group_vars = tree / "inventories" / "example" / "group_vars" / "all.yml"

    def change(data):
        data["knowngood_contacts"]["primary_oncall"] = {
            "name": "Quinn Night",
            "email": "quinn@example.com",
            "phone": "+1-555-0199",
        }
        data["knowngood_approvers"]["zoe"] = {"roles": ["infra_lead"], "email": "zoe@example.com"}

    _edit(group_vars, change)
    text = emergency.generate("md", tree)
    assert "| `primary_oncall` | Quinn Night | +1-555-0199 | quinn@example.com |" in text
    assert "Pat Primary" not in text
    high = next(line for line in text.splitlines() if line.startswith("| high |"))
    assert "zoe (zoe@example.com)" in high and "irene (irene@example.com)" in high


def test_a_required_survey_input_enters_the_jump_host_command(tree):
    section = _section(emergency.generate("md", tree), "rollback-flag")
    assert (
        'ansible-playbook playbooks/rollback-flag.yml -i inventories/prod -e \'{"flag": "<flag>"'
        in section
    )
    assert 'knowngood run rollback-flag -i inventories/prod --reason "<rollback_reason>"' in section

    def require_ticket(data):
        template = next(t for t in data["job_templates"] if t["name"] == "rollback-code")
        template["survey"].append(
            {"variable": "code_flag_name", "from": "code_flag.code_flag_name", "question": "Flag"}
        )

    _edit(tree / "awx" / "catalog.yml", require_ticket)
    code = _section(emergency.generate("md", tree), "rollback-code")
    assert '"code_flag_name": "<code_flag_name>"' in code  # code_flag_name is required in its spec
    assert "| `code_flag_name` | Flag | str | required | `code_flag.code_flag_name` |" in code


def test_facts_naming_a_trigger_the_decision_code_lacks_are_refused(tree):
    facts = tree / "docs" / "emergency.yml"
    _edit(facts, lambda d: d["symptoms"][0]["triggers"].append("cpu_melting"))
    with pytest.raises(emergency.EmergencyError, match="cpu_melting.*decision code"):
        emergency.generate("md", tree)


def test_resume_notes_citing_a_missing_file_are_refused(tree):
    (tree / "roles" / "run_lock" / "tasks" / "main.yml").rename(
        tree / "roles" / "run_lock" / "tasks" / "lock.yml"
    )
    with pytest.raises(emergency.EmergencyError, match="roles/run_lock/tasks/main.yml"):
        emergency.generate("md", tree)


def test_triggers_and_matrix_come_from_the_decision_code(tree):
    text = emergency.generate("md", tree)
    for trigger in (
        "critical_errors",
        "error_rate",
        "latency_degradation",
        "throughput_degradation",
    ):
        assert f"| `{trigger}` | measured |" in text
    for trigger in ("security", "data_integrity", "ux_disruption"):
        assert f"| `{trigger}` | declared |" in text
    assert "error ratio >= 0.05: high" in text

    def loosen(data):
        data["knowngood_decision_matrix"]["low"] = {"action": "optional", "approvals": ["cto"]}

    _edit(tree / "inventories" / "example" / "group_vars" / "all.yml", loosen)
    low = next(
        line for line in emergency.generate("md", tree).splitlines() if line.startswith("| low |")
    )
    assert low.startswith("| low | optional | cto | cto: chris (chris@example.com) |")


def test_drills_name_what_breaks_and_the_runbook_they_run():
    text = emergency.generate("md", REPO)
    row = next(line for line in text.splitlines() if line.startswith("| `table_restore` |"))
    assert "DROP TABLE" in row and "[rollback-database](#rollback-database)" in row
    assert "`db_strategy=table`" in row and "rpo_s 5, rto_s 120" in row


def test_html_escapes_and_links(tree):
    out = emergency.generate("html", tree)
    assert out.startswith("<!doctype html>")
    assert "<script" not in out
    assert "<code>refused, nothing was changed: {{ __run_lock_refused }}</code>" in out
    assert '<a href="runbooks/rollback-code.md">' in out
    assert "&lt;rollback_reason&gt;" in out


def test_cli_check_reports_a_stale_file(tmp_path):
    out = tmp_path / "emergency-runbook.md"
    out.write_text("old\n")
    cmd = [sys.executable, "-m", "knowngood.cli", "emergency", "-o", str(out), "--check"]
    stale = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert stale.returncode == 1 and "is stale: run `make emergency-runbook`" in stale.stdout
    subprocess.run(cmd[:-1], capture_output=True, text=True, check=True)
    assert out.read_text() == DOCS["md"].read_text()
    assert subprocess.run(cmd, capture_output=True, text=True, check=False).returncode == 0


def test_every_link_in_the_page_resolves():
    text = DOCS["md"].read_text()
    anchors = {
        line.lstrip("#").strip().lower().replace(" ", "-").replace(".", "").replace("?", "")
        for line in text.splitlines()
        if line.startswith("#")
    }
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        if link.startswith("#"):
            assert link[1:] in anchors, link
        else:
            assert (DOCS["md"].parent / link).is_file(), link


def test_every_command_parses_with_the_real_cli_and_names_a_real_playbook():
    from knowngood.cli import build_parser

    lines = [
        line.strip()
        for line in DOCS["md"].read_text().splitlines()
        if line.startswith("    ") and not line.strip().startswith("#")
    ]
    knowngood = [shlex.split(line)[1:] for line in lines if line.strip().startswith("knowngood ")]
    playbooks = [shlex.split(line) for line in lines if line.startswith("ansible-playbook ")]
    assert len(knowngood) > 40 and len(playbooks) > 15
    parser = build_parser()
    for argv in knowngood:
        args = parser.parse_args(argv)  # exits (SystemExit) on a flag the CLI does not have
        if argv[0] in ("run", "request"):
            assert (REPO / "playbooks" / f"{args.runbook}.yml").is_file()
            for extra in args.extra_vars:  # every -e is the JSON the CLI and Ansible read
                assert isinstance(json.loads(extra), dict)
    for argv in playbooks:
        assert (REPO / argv[1]).is_file() and argv[2:4] == ["-i", "inventories/prod"]
        values = [argv[i + 1] for i, word in enumerate(argv) if word == "-e"]
        for value in values:
            assert isinstance(json.loads(value), dict) if value.startswith("{") else "=" in value
