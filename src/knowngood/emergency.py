"""`knowngood emergency`: the strategy's Appendix "Emergency Runbook", generated so it never drifts.

Every fact comes from what runs: the triggers, thresholds and severities from the decision code
(module_utils decision), the matrix, approvers, contacts and drill objectives from the
inventory's group_vars, each runbook's ordered roles from its playbook, their purpose and
required options from meta/argument_specs.yml, their refusals from the `fail`/`assert` tasks of
the task files they run, the AWX templates and surveys from awx/catalog.yml (through
knowngood.awx), the rehearsed symptoms from the molecule drills. The few hand-kept facts (which
runbook for which symptom, how each resumes) sit in docs/emergency.yml and are refused when
they name something that does not exist.

The output is deterministic: no timestamps, order from the playbooks and the catalog, sorted
where order means nothing. One document model renders to Markdown and to HTML.
"""

from __future__ import annotations

import argparse
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from knowngood import awx, collection
from knowngood.errors import KnowngoodError

ROLE_MODULES = ("ansible.builtin.import_role", "ansible.builtin.include_role")
TASK_FILE_MODULES = ("ansible.builtin.import_tasks", "ansible.builtin.include_tasks")
PLAYBOOK_IMPORT = "ansible.builtin.import_playbook"
REFUSAL_MODULES = {"ansible.builtin.fail": ("msg",), "ansible.builtin.assert": ("fail_msg", "msg")}
DEFAULT_INVENTORY = "inventories/prod"
DEFAULT_VARS = Path("inventories") / "example" / "group_vars" / "all.yml"
FACTS = Path("docs") / "emergency.yml"
GATE_ROLE = "approval_gate"
VAR_IN_DEFAULT = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\|")


class EmergencyError(KnowngoodError):
    """The sources disagree: the facts file names what the code does not have."""


# --- the model ---------------------------------------------------------------------------


@dataclass
class Refusal:
    task: str
    message: str


@dataclass
class Step:
    section: str  # main, rescue (on failure), always
    task: str
    role: str
    entry: str
    when: str
    summary: str
    description: str
    required: list[tuple[str, str]]
    refusals: list[Refusal]


@dataclass
class Input:
    variable: str
    feeds: str
    type: str
    choices: list[str]
    required: bool
    default: Any
    question: str


@dataclass
class Runbook:
    name: str
    playbook: str
    description: str
    destructive: bool
    gated: bool
    gate_when: str
    inputs: list[Input]
    steps: list[Step]
    survey: list[dict[str, Any]]
    workflows: list[tuple[str, list[str]]] = field(default_factory=list)
    resume: list[tuple[str, str]] = field(default_factory=list)

    @property
    def stem(self) -> str:
        """The name `knowngood run` and the pages use (the AWX template's may differ)."""
        return Path(self.playbook).stem


@dataclass
class Drill:
    name: str
    breakage: list[str]
    runbook: str
    passes: dict[str, Any]
    objective: dict[str, Any]
    awx_template: str


# --- reading the sources -----------------------------------------------------------------


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the same documents, 5x faster


def _load(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=_LOADER)  # noqa: S506 - a safe loader


_DOC_CODE = re.compile(r"\b[CV]\(([^()]*)\)")  # ansible-doc markup: C(value), V(value)
_DOC_PLAIN = re.compile(r"\b[IO]\(([^()]*)\)")  # I(option), O(option)


def _text(value: Any) -> str:
    if isinstance(value, list):
        value = " ".join(str(v) for v in value)
    text = " ".join(str(value or "").split())
    return _DOC_PLAIN.sub(r"\1", _DOC_CODE.sub(r"`\1`", text))


def _when(value: Any) -> str:
    if isinstance(value, list):
        return " and ".join(str(v) for v in value)
    return str(value) if value is not None else ""


def role_imports(tasks: list[dict[str, Any]], section: str = "main", when: str = ""):
    """(section, task name, role, entry point, condition) in play order, blocks flattened."""
    for task in tasks or []:
        cond = " and ".join(c for c in (when, _when(task.get("when"))) if c)
        if "block" in task:
            yield from role_imports(task["block"], section, cond)
            yield from role_imports(task.get("rescue", []), "rescue", cond)
            yield from role_imports(task.get("always", []), "always", cond)
        for module in ROLE_MODULES:
            if module in task:
                spec = task[module]
                role = spec["name"].rsplit(".", 1)[-1]
                yield section, task.get("name", ""), role, spec.get("tasks_from", "main"), cond


def refusals(role_dir: Path, entry: str) -> list[Refusal]:
    """The fail/assert tasks an entry point runs, following its imported task files."""
    found: list[Refusal] = []
    seen: set[Path] = set()

    def walk(path: Path) -> None:
        if path not in seen and path.is_file():
            seen.add(path)
            walk_tasks(_load(path) or [])

    def walk_tasks(tasks: list[dict[str, Any]]) -> None:
        for task in tasks:
            for key in ("block", "rescue", "always"):
                walk_tasks(task.get(key) or [])
            visit(task)

    def visit(task: dict[str, Any]) -> None:
        for module in TASK_FILE_MODULES:
            if module in task:
                target = task[module]
                target = target.get("file", "") if isinstance(target, dict) else target
                walk(role_dir / "tasks" / str(target))
        for module, keys in REFUSAL_MODULES.items():
            if module in task:
                args = task[module] or {}
                message = next((args[k] for k in keys if args.get(k)), "")
                if not message and module.endswith("assert"):
                    message = "refused unless: " + "; ".join(
                        str(c) for c in _as_list(args.get("that"))
                    )
                found.append(Refusal(_text(task.get("name", "")), _text(message)))

    walk(role_dir / "tasks" / f"{entry}.yml")
    return found


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def role_spec(root: Path, role: str, entry: str) -> dict[str, Any]:
    try:
        specs = awx.role_argument_specs(role, root)  # parsed once per file version
    except awx.AwxError as exc:
        raise EmergencyError(str(exc)) from None
    if entry in specs:
        return specs[entry] or {}
    # A tasks_from without an entry point of its own: Ansible checks no inputs for it, so no
    # option is required; its purpose is the role's.
    main = specs.get("main") or {}
    return {"short_description": f"{_text(main.get('short_description'))} ({entry} tasks)"}


def playbook_steps(root: Path, playbook: Path) -> list[Step]:
    steps = []
    for play in _load(playbook) or []:
        tasks = play.get("pre_tasks", []) + play.get("tasks", []) + play.get("post_tasks", [])
        for section, task, role, entry, when in role_imports(tasks):
            spec = role_spec(root, role, entry)
            options = spec.get("options") or {}
            steps.append(
                Step(
                    section=section,
                    task=task,
                    role=role,
                    entry=entry,
                    when=when,
                    summary=_text(spec.get("short_description")),
                    description=_text(spec.get("description")),
                    required=sorted(
                        (name, _text(opt.get("description")))
                        for name, opt in options.items()
                        if opt.get("required")
                    ),
                    refusals=refusals(root / "roles" / role, entry),
                )
            )
    return steps


def survey_inputs(template: awx.Template, root: Path) -> list[Input]:
    out = []
    for inp in template.inputs:
        spec = awx.role_options(inp.role, root).get(inp.option)
        if spec is None:
            raise EmergencyError(
                f"awx/catalog.yml: {template.name}.{inp.variable} feeds {inp.role}.{inp.option}, "
                "which its argument spec does not declare"
            )
        kind = spec.get("type", "str")
        needed = bool(spec.get("required")) or (kind == "str" and (inp.min or 0) >= 1)
        out.append(
            Input(
                variable=inp.variable,
                feeds=f"{inp.role}.{inp.option}",
                type=kind,
                choices=[str(c) for c in spec.get("choices") or []],
                required=needed,
                default=awx._literal_default(spec),
                question=inp.question or inp.variable,
            )
        )
    return out


def load_facts(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise EmergencyError(f"{path} is missing: the symptoms and resume notes live there")
    return _load(path) or {}


def triggers() -> list[dict[str, Any]]:
    """The decision code's triggers: measured ones (evaluated on no data, which names them
    without judging anything) then the declared ones, with their thresholds."""
    from knowngood.modutils import module_utils

    decision = module_utils("decision")
    th = decision.DEFAULT_THRESHOLDS
    out = []
    for trig in decision.evaluate({}, {}, {}):
        name = trig["trigger"]
        if name == "critical_errors":
            fires = f"scrape targets down >= {th['targets_down']['high']}: high"
        elif name == "error_rate":
            fires = ", ".join(
                f"error ratio >= {th['error_ratio'][s]:g}: {s}" for s in ("low", "medium", "high")
            )
        elif name in ("latency_degradation", "throughput_degradation"):
            what = "p95 latency rise" if name.startswith("latency") else "throughput drop"
            fires = f"{what} >= {th['degradation_pct']['high']:g} % against the baseline: high"
            if name.startswith("latency"):
                fires += f" (and at least {th['min_latency_delta_ms']:g} ms)"
            else:
                fires += f" (baseline at least {th['min_baseline_rps']:g} req/s)"
        else:
            fires = trig["detail"]
        out.append({"trigger": name, "kind": "measured", "fires": fires})
    for name in decision.DECLARED_TRIGGERS:
        severity = decision.DECLARED_DEFAULT_SEVERITY[name]
        out.append(
            {
                "trigger": name,
                "kind": "declared",
                "fires": f"declared by the operator; {severity} unless the declaration says "
                "otherwise",
            }
        )
    return out


def matrix(group_vars: dict[str, Any]) -> dict[str, Any]:
    from knowngood.modutils import module_utils

    decision = module_utils("decision")
    return decision.validate_matrix(group_vars.get("knowngood_decision_matrix") or {})


def drills(root: Path, catalog: dict[str, Any], group_vars: dict[str, Any]) -> list[Drill]:
    """Each molecule drill: what it breaks (side_effect's plays) and the runbook it runs."""
    base = root / "molecule"
    if not base.is_dir():
        return []  # an installed collection ships no drills
    templates = {t["playbook"]: t["name"] for t in catalog["job_templates"]}
    objectives = group_vars.get("knowngood_drill_targets") or {}
    out = []
    for scenario in sorted(p.parent for p in base.glob("*/molecule.yml")):
        side = scenario / "side_effect.yml"
        breakage = [p.get("name", "") for p in (_load(side) if side.is_file() else []) or []]
        runbook, passes = _imported_runbook(root, scenario / "converge.yml")
        if not runbook:
            continue
        out.append(
            Drill(
                name=scenario.name,
                breakage=[b for b in breakage if b],
                runbook=runbook,
                passes=passes,
                objective=objectives.get(scenario.name, {}),
                awx_template=templates.get(f"molecule/{scenario.name}/drill.yml", ""),
            )
        )
    return out


def _imported_runbook(root: Path, playbook: Path, passed: dict | None = None) -> tuple[str, dict]:
    """The playbooks/ runbook a drill's converge imports (through shared plays) and its vars."""
    if not playbook.is_file():
        return "", {}
    for play in _load(playbook) or []:
        target = play.get(PLAYBOOK_IMPORT)
        if not target:
            continue
        path = (playbook.parent / target).resolve()
        merged = {**(passed or {}), **(play.get("vars") or {})}
        if path.parent == (root / "playbooks").resolve():
            return path.stem, merged
        name, found = _imported_runbook(root, path, merged)
        if name:
            return name, found
    return "", {}


def build(root: Path | None = None, group_vars_path: Path | None = None) -> dict[str, Any]:
    """The whole document as data; render_markdown and render_html only lay it out."""
    root = (root or collection.root()).resolve()
    vars_path = group_vars_path or root / DEFAULT_VARS
    group_vars = _load(vars_path) or {} if vars_path.is_file() else {}
    catalog = awx.load_catalog(root / "awx" / "catalog.yml")
    facts = load_facts(root / FACTS)
    playbooks = collection.playbooks(root)
    workflows: dict[str, list[tuple[str, list[str]]]] = {}
    for wf in awx.workflows(catalog, root):
        job = wf["workflow_nodes"][-1]["unified_job_template"]["name"]
        teams = [
            n["unified_job_template"]["name"]
            for n in wf["workflow_nodes"]
            if n["unified_job_template"]["type"] == "workflow_approval"
        ]
        workflows.setdefault(job, []).append((wf["name"], teams))
    runbooks = []
    for template in awx.templates(catalog):
        if not template.playbook.startswith("playbooks/"):
            continue  # drills: listed with the symptoms they rehearse
        stem = Path(template.playbook).stem
        if stem not in playbooks:
            raise EmergencyError(f"awx/catalog.yml: {template.playbook} does not exist")
        steps = playbook_steps(root, playbooks[stem])
        runbooks.append(
            Runbook(
                name=template.name,
                playbook=template.playbook,
                description=template.description,
                destructive=template.destructive,
                gated=any(s.role == GATE_ROLE for s in steps),
                gate_when=next((s.when for s in steps if s.role == GATE_ROLE), ""),
                inputs=survey_inputs(template, root),
                steps=steps,
                survey=awx.survey(template, root)["spec"] if template.inputs else [],
                workflows=workflows.get(template.name, []),
            )
        )
    # The runbooks that change production first, each group in the catalog's order.
    runbooks.sort(key=lambda r: not r.destructive)
    by_name = {r.name: r for r in runbooks}
    by_stem = {Path(r.playbook).stem: r for r in runbooks}
    trigger_list = triggers()
    known = {t["trigger"] for t in trigger_list}
    for item in facts.get("symptoms", []):
        runbook = by_name.get(item["runbook"])
        if runbook is None:
            raise EmergencyError(f"{FACTS}: symptom names runbook {item['runbook']!r}, unknown")
        for trig in item.get("triggers", []):
            if trig not in known:
                raise EmergencyError(
                    f"{FACTS}: symptom names trigger {trig!r}, which the decision code does "
                    f"not evaluate (it has {', '.join(sorted(known))})"
                )
        variables = {i.variable for i in runbook.inputs}
        for name in item.get("inputs", []):
            if name not in variables:
                raise EmergencyError(
                    f"{FACTS}: symptom names input {name!r}, not in {runbook.name}'s survey"
                )
    for name, notes in (facts.get("resume") or {}).items():
        if name not in by_name:
            raise EmergencyError(f"{FACTS}: resume notes for {name!r}, which is no runbook")
        for note in notes:
            if not (root / note["see"]).exists():
                raise EmergencyError(f"{FACTS}: {name} resume note cites {note['see']}, missing")
            by_name[name].resume.append((_text(note["text"]), note["see"]))
    gate = role_spec(root, GATE_ROLE, "main").get("options") or {}
    return {
        "vars_file": _relative(vars_path, root),
        "triggers": trigger_list,
        "matrix": matrix(group_vars),
        "approvers": group_vars.get("knowngood_approvers") or {},
        "contacts": group_vars.get("knowngood_contacts") or {},
        "notify": group_vars.get("knowngood_notify") or {},
        "symptoms": facts.get("symptoms", []),
        "drills": [d for d in drills(root, catalog, group_vars) if d.runbook in by_stem],
        "runbooks": runbooks,
        "request_var": _gate_var(gate, "approval_gate_request", "knowngood_request"),
        "break_glass_var": _gate_var(
            gate, "approval_gate_break_glass_reason", "knowngood_break_glass"
        ),
    }


def _gate_var(options: dict[str, Any], option: str, fallback: str) -> str:
    """The play variable the approval gate's option reads (its default names it)."""
    found = VAR_IN_DEFAULT.search(str((options.get(option) or {}).get("default", "")))
    return found.group(1) if found else fallback


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path)


# --- commands ----------------------------------------------------------------------------


def _placeholder(inp: Input) -> Any:
    if inp.type == "list":
        return [f"<{inp.variable}>"]
    if inp.type in ("bool", "int", "float") and inp.default is not None:
        return inp.default
    return f"<{inp.variable}>"


def _extra(values: dict[str, Any]) -> str:
    return f" -e '{json.dumps(values)}'" if values else ""


def commands(runbook: Runbook, inventory: str, doc: dict[str, Any]) -> dict[str, list[str]]:
    """The jump host's ansible-playbook, `knowngood run` and request lines for one runbook."""
    from knowngood.cli import GOVERNED_FLAGS

    governed = {variable: flag for flag, variable in GOVERNED_FLAGS.items()}
    chosen = [i for i in runbook.inputs if i.required or i.variable in governed]
    every = {i.variable: _placeholder(i) for i in chosen}
    rest = {i.variable: _placeholder(i) for i in chosen if i.variable not in governed}
    flags = "".join(
        f' --{governed[i.variable]} "<{i.variable}>"' for i in chosen if i.variable in governed
    )
    playbook = f"ansible-playbook {runbook.playbook} -i {inventory}{_extra(every)}"
    run = f"knowngood run {runbook.stem} -i {inventory}{flags}{_extra(rest)}"
    out: dict[str, list[str]] = {"plan": [f"{run} --check"]}
    if runbook.gate_when:
        out["jump_host"] = [playbook]
    if runbook.gated:
        request_var, glass_var = doc["request_var"], doc["break_glass_var"]
        if runbook.gate_when:
            out["jump_host"].append(f"# when {runbook.gate_when}, approved or break-glass:")
        else:
            out["jump_host"] = []
        out["jump_host"] += [
            f'{playbook} -e {request_var}="<approved-request.json>"',
            f"{playbook} -e '{json.dumps({glass_var: '<why approval cannot wait>'})}'",
        ]
        ticket = '--ticket "<ticket>" --reason "<rollback_reason>"'
        out["request"] = [
            f'knowngood request {runbook.stem} -i {inventory} --decision "<decide-run-id>" '
            f"{ticket}{_extra(rest)}",
            'knowngood approve "<request.json>" --key ~/.ssh/id_ed25519',
        ]
        out["run"] = [run] if runbook.gate_when else []
        out["run"] += [
            f'{run} --request "<request.json>"',
            f'{run} --break-glass "<why approval cannot wait>"',
        ]
    else:
        out["jump_host"] = [playbook]
        out["run"] = [run]
    return out


# --- the document ------------------------------------------------------------------------

Block = tuple  # ("h", level, text) ("p", text) ("ul", items) ("table", head, rows) ("code", text)


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None or value == "":
        return ""
    if isinstance(value, (list, dict)):
        return f"`{json.dumps(value)}`"
    return str(value)


def _input_default(inp: Input) -> str:
    if inp.required:
        return "required"
    if inp.default is None:
        return "set by the play"
    return _cell(inp.default if inp.default != "" else '""')


def document(doc: dict[str, Any], inventory: str = DEFAULT_INVENTORY) -> list[Block]:
    blocks: list[Block] = [
        ("h", 1, "Emergency runbook"),
        (
            "p",
            "Generated by `knowngood emergency` from the runbooks themselves (the decision code, "
            "the playbooks, the roles' argument specs and tasks, `awx/catalog.yml`, the drills and "
            f"`{doc['vars_file']}`); the hand-kept symptoms and resume notes come from "
            "`docs/emergency.yml`. Do not edit: run `make emergency-runbook`. Commands use the "
            f"inventory `{inventory}` (`knowngood emergency --inventory`), shaped like "
            "`inventories/example`.",
        ),
        ("h", 2, "1. Whom to call"),
        *_contacts(doc),
        ("h", 2, "2. Is it a rollback? Decide"),
        (
            "p",
            "Run the decide runbook (read-only). A verdict `rollback` names the severity, the "
            "action and the approvals; `inconclusive` means missing data: notify, don't act.",
        ),
    ]
    decide = next((r for r in doc["runbooks"] if r.name == "decide"), None)
    if decide:
        blocks.append(("code", "\n".join(commands(decide, inventory, doc)["run"])))
    blocks.append(
        (
            "table",
            ["trigger", "kind", "fires at (severity)"],
            [[f"`{t['trigger']}`", t["kind"], t["fires"]] for t in doc["triggers"]],
        )
    )
    people: dict[str, list[str]] = {}
    for name, who in sorted(doc["approvers"].items()):
        for role in who.get("roles", []):
            people.setdefault(role, []).append(f"{name} ({who.get('email', '')})")
    blocks.append(
        (
            "table",
            ["severity", "action", "approvals, in order", "who holds them"],
            [
                [
                    sev,
                    row["action"],
                    ", ".join(row["approvals"]),
                    "; ".join(
                        f"{role}: {', '.join(people.get(role, ['nobody in the inventory']))}"
                        for role in row["approvals"]
                    ),
                ]
                for sev, row in doc["matrix"].items()
            ],
        )
    )
    blocks += [("h", 2, "3. Which runbook"), ("h", 3, "By symptom")]
    blocks.append(
        (
            "table",
            ["symptom", "triggers", "runbook", "inputs it calls for"],
            [
                [
                    s["symptom"],
                    ", ".join(f"`{t}`" for t in s.get("triggers", [])),
                    f"[{s['runbook']}](#{s['runbook']})",
                    ", ".join(f"`{i}`" for i in s.get("inputs", [])),
                ]
                for s in doc["symptoms"]
            ],
        )
    )
    if doc["drills"]:
        blocks += [
            ("h", 3, "Rehearsed by the drills"),
            (
                "p",
                "Each drill breaks the lab this way and runs this runbook with these inputs "
                "(`knowngood drill run <drill>`); the objectives are the inventory's "
                "`knowngood_drill_targets`.",
            ),
            (
                "table",
                ["drill", "what breaks", "runbook", "inputs the drill gives", "objective", "AWX"],
                [
                    [
                        f"`{d.name}`",
                        "; ".join(d.breakage),
                        f"[{d.runbook}](#{d.runbook})",
                        _drill_inputs(d.passes),
                        ", ".join(f"{k} {v}" for k, v in sorted(d.objective.items())),
                        f"`{d.awx_template}`" if d.awx_template else "",
                    ]
                    for d in doc["drills"]
                ],
            ),
        ]
    blocks += [("h", 2, "4. The runbooks")]
    for runbook in doc["runbooks"]:
        blocks += _runbook(runbook, inventory, doc)
    return blocks


def _drill_inputs(passed: dict[str, Any]) -> str:
    """The runbook inputs a drill sets: literal values shown, computed ones named."""
    shown = []
    for key, value in passed.items():
        if isinstance(value, str) and ("{{" in value or key == "rollback_reason"):
            shown.append(f"`{key}`")
        else:
            shown.append(f"`{key}={_cell(value).strip('`')}`")
    return ", ".join(shown)


def _contacts(doc: dict[str, Any]) -> list[Block]:
    from knowngood.modutils import module_utils

    notify = module_utils("notify")
    contacts = doc["contacts"]
    blocks: list[Block] = []
    if not contacts:
        return [("p", f"No `knowngood_contacts` in `{doc['vars_file']}`: nobody is told.")]
    told = {
        role: [event for event, roles in notify.ROUTES.items() if role in roles]
        for role in notify.CONTACT_ROLES
    }
    blocks.append(
        (
            "table",
            ["contact", "name", "phone", "email", "e-mailed on"],
            [
                [
                    f"`{role}`",
                    (contacts.get(role) or {}).get("name", "missing"),
                    (contacts.get(role) or {}).get("phone", ""),
                    (contacts.get(role) or {}).get("email", ""),
                    ", ".join(told[role]),
                ]
                for role in notify.CONTACT_ROLES
            ],
        )
    )
    channels = doc["notify"]
    webhooks = len(channels.get("webhooks") or [])
    smtp = (channels.get("smtp") or {}).get("host", "")
    blocks.append(
        (
            "p",
            f"Channels (`knowngood_notify`): {webhooks} webhook(s), which hear every event; "
            f"SMTP {('via `' + smtp + '`') if smtp else 'not configured'}. Approvers of a "
            "request are told when their approval is needed (`approval_needed`). From "
            f"`{doc['vars_file']}`.",
        )
    )
    return blocks


def _run_lines(runbook: Runbook, cmds: dict[str, list[str]]) -> list[str]:
    """Plan, then (a conditional gate's) plain run, then request, approve, run approved."""
    plain = cmds["run"][:1] if runbook.gate_when else []
    return cmds["plan"] + plain + cmds.get("request", []) + cmds["run"][len(plain) :]


def _runbook(runbook: Runbook, inventory: str, doc: dict[str, Any]) -> list[Block]:
    cmds = commands(runbook, inventory, doc)
    gate = "no approval gate"
    if runbook.gated:
        gate = "behind the approval gate" + (
            f" when `{runbook.gate_when}`" if runbook.gate_when else ""
        )
    kind = (
        "in AWX it runs through an approval workflow"
        if runbook.destructive
        else "in AWX its job template runs without an approval workflow"
    )
    blocks: list[Block] = [
        ("h", 3, runbook.name),
        (
            "p",
            f"{runbook.description}. `{runbook.playbook}`; {gate}; {kind}. "
            f"Page: [docs/runbooks/{runbook.stem}.md](runbooks/{runbook.stem}.md).",
        ),
        ("p", "Jump host:"),
        ("code", "\n".join(cmds["jump_host"])),
        ("p", "With the audit record (`knowngood run`), after a plan-only `--check`:"),
        ("code", "\n".join(_run_lines(runbook, cmds))),
    ]
    awx_line = f"AWX job template `{runbook.name}`"
    if runbook.workflows:
        awx_line += "; with approvals, the workflow for the severity: " + "; ".join(
            f"`{name}` ({' then '.join(teams)})" for name, teams in runbook.workflows
        )
    blocks.append(("p", awx_line + "."))
    if runbook.inputs:
        blocks.append(
            (
                "table",
                ["input", "AWX question", "type", "default", "feeds"],
                [
                    [
                        f"`{i.variable}`",
                        i.question,
                        i.type + (f": {', '.join(i.choices)}" if i.choices else ""),
                        _input_default(i),
                        f"`{i.feeds}`",
                    ]
                    for i in runbook.inputs
                ],
            )
        )
    blocks.append(("p", "What each step checks, in the playbook's order:"))
    rows = []
    for step in runbook.steps:
        parts = [
            f"**{step.task}**: `{step.role}`" + (f" ({step.entry})" if step.entry != "main" else "")
        ]
        if step.section != "main":
            parts.append(
                {"rescue": "on failure only", "always": "always, even on failure"}[step.section]
            )
        if step.when:
            parts.append(f"when `{step.when}`")
        text = " - ".join(parts) + f". {step.summary}."
        if step.description:
            text += f" {step.description}"
        if step.required:
            needed = ", ".join(f"`{name}` ({why})" for name, why in step.required)
            text += f" Needs set (inventory or play): {needed}."
        refused = []
        for r in step.refusals:
            line = r.task + (f" (`{r.message}`)" if r.message else "")
            if line not in refused:
                refused.append(line)
        if refused:
            text += " Refuses: " + "; ".join(refused) + "."
        rows.append(text)
    blocks.append(("ol", rows))
    resume = [f"{text} (`{see}`)" for text, see in runbook.resume]
    undo = [s for s in runbook.steps if s.section == "rescue"]
    always = [s for s in runbook.steps if s.section == "always"]
    if undo:
        resume.append(
            "On a failure the run itself does: "
            + "; ".join(f"{s.task} (`{s.role}`)" for s in undo)
            + "."
        )
    if always:
        resume.append(
            "Whatever happens it does: " + "; ".join(f"{s.task} (`{s.role}`)" for s in always) + "."
        )
    blocks.append(("p", "After a failure:"))
    blocks.append(
        (
            "ul",
            resume
            or [f"No resume behaviour is recorded for {runbook.name} in `{FACTS}`: see its page."],
        )
    )
    return blocks


# --- rendering ---------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            out.append("#" * block[1] + " " + block[2])
        elif kind == "p":
            out.append(block[1])
        elif kind == "code":
            out.append("\n".join("    " + line for line in block[1].splitlines()))
        elif kind in ("ul", "ol"):
            out.append(
                "\n".join(
                    (f"{n}. " if kind == "ol" else "- ") + item
                    for n, item in enumerate(block[1], 1)
                )
            )
        elif kind == "table":
            head, rows = block[1], block[2]
            lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


_CODE = re.compile(r"`([^`]+)`")
_STRONG = re.compile(r"\*\*([^*]+)\*\*")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def _inline(text: str) -> str:
    """Markdown's inline code, bold and links as HTML, everything else escaped."""
    parts = []
    for index, piece in enumerate(_CODE.split(text)):
        if index % 2:
            parts.append(f"<code>{html.escape(piece)}</code>")
            continue
        piece = html.escape(piece, quote=False)
        piece = _STRONG.sub(r"<strong>\1</strong>", piece)
        piece = _LINK.sub(lambda m: f'<a href="{_href(m.group(2))}">{m.group(1)}</a>', piece)
        parts.append(piece)
    return "".join(parts)


def _href(target: str) -> str:
    if target.endswith(".md"):
        target = target[: -len(".md")] + ".md"  # the pages stay Markdown
    return html.escape(target)


def _anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9-]", "", text.lower().replace(" ", "-"))


def render_html(blocks: list[Block]) -> str:
    body: list[str] = []
    title = "Emergency runbook"
    for block in blocks:
        kind = block[0]
        if kind == "h":
            level, text = block[1], block[2]
            body.append(f'<h{level} id="{_anchor(text)}">{_inline(text)}</h{level}>')
        elif kind == "p":
            body.append(f"<p>{_inline(block[1])}</p>")
        elif kind == "code":
            body.append(f"<pre><code>{html.escape(block[1])}</code></pre>")
        elif kind in ("ul", "ol"):
            items = "".join(f"<li>{_inline(item)}</li>" for item in block[1])
            body.append(f"<{kind}>{items}</{kind}>")
        elif kind == "table":
            head = "".join(f"<th>{_inline(h)}</th>" for h in block[1])
            rows = "".join(
                "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>"
                for row in block[2]
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    style = (
        "body{font-family:sans-serif;max-width:70em;margin:auto;padding:1em;line-height:1.4}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:.3em;"
        "vertical-align:top;text-align:left}pre{background:#f4f4f4;padding:.6em;overflow-x:auto}"
        "code{font-size:90%}"
    )
    return (
        f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def generate(
    fmt: str = "md",
    root: Path | None = None,
    group_vars: Path | None = None,
    inventory: str = DEFAULT_INVENTORY,
) -> str:
    blocks = document(build(root, group_vars), inventory)
    return render_html(blocks) if fmt == "html" else render_markdown(blocks)


def cmd_emergency(args: argparse.Namespace) -> int:
    text = generate(
        args.format,
        Path(args.collection) if args.collection else None,
        Path(args.vars) if args.vars else None,
        args.inventory,
    )
    if not args.output:
        print(text, end="")
        return 0
    out = Path(args.output)
    if args.check:
        if not out.is_file() or out.read_text() != text:
            print(f"{out} is stale: run `make emergency-runbook`")
            return 1
        print(f"{out} is up to date")
        return 0
    out.write_text(text)
    print(f"wrote {out}")
    return 0


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "emergency",
        help="the emergency runbook, generated from the runbooks (strategy Appendix)",
        description=(
            "Render the emergency runbook (which runbook for which symptom, the commands, what "
            "each step checks, how to resume, whom to call) from the playbooks, roles, AWX "
            "catalog, drills and inventory variables."
        ),
    )
    parser.add_argument("--format", choices=["md", "html"], default="md")
    parser.add_argument("-o", "--output", default="", help="file to write (default: stdout)")
    parser.add_argument("--check", action="store_true", help="exit 1 when --output is stale")
    parser.add_argument(
        "--inventory", default=DEFAULT_INVENTORY, help="inventory the commands name"
    )
    parser.add_argument(
        "--vars",
        default="",
        help=f"group_vars file with contacts, approvers, matrix (default: {DEFAULT_VARS})",
    )
    parser.add_argument("--collection", default="", help="collection directory (default: this one)")
    parser.set_defaults(func=cmd_emergency)
