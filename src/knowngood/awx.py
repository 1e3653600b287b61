"""AWX as code: surveys generated from the roles' argument specs, and their checks.

awx/catalog.yml names, for every job template, the playbook and its public inputs; each input
points at the role option that consumes it (`role.option`). Types, required, choices, defaults
and descriptions come from that option's entry in roles/<role>/meta/argument_specs.yml, so a
survey cannot drift from what the role validates. AWX-only details (question text, min/max:
ansible-lint's schema forbids extra keys in argument specs) sit beside the input in the
catalog and are checked against the option's type.

`knowngood awx surveys --write` renders awx/surveys/<template>.json; `--check` (and the tests)
fail when the committed surveys, the catalog, the argument specs and the playbooks disagree.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from knowngood import collection
from knowngood.errors import AwxError

REPO = Path(__file__).resolve().parents[2]
CATALOG = REPO / "awx" / "catalog.yml"
SURVEY_DIR = REPO / "awx" / "surveys"
WORKFLOWS = REPO / "awx" / "workflows.json"

# What AWX's survey endpoint accepts as a default for each question type
# (awx/api/views JobTemplateSurveySpec.ALLOWED_TYPES).
ALLOWED_TYPES: dict[str, tuple[type, ...]] = {
    "text": (str,),
    "textarea": (str,),
    "password": (str,),
    "multiplechoice": (str,),
    "multiselect": (str, list),
    "integer": (int,),
    "float": (float, int),
}


@dataclass
class Input:
    variable: str
    role: str
    option: str
    question: str = ""
    min: int | None = None
    max: int | None = None


@dataclass
class Template:
    name: str
    playbook: str
    description: str
    inputs: list[Input] = field(default_factory=list)
    destructive: bool = False


class _CatalogLoader(yaml.SafeLoader):
    """The catalog as Ansible reads it: `!unsafe` strings (AWX's injector templates) are text."""


_CatalogLoader.add_constructor(
    "!unsafe",
    lambda loader, node: loader.construct_scalar(node),  # type: ignore[arg-type]
)


def load_catalog(path: Path = CATALOG) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=_CatalogLoader)  # noqa: S506 - a SafeLoader


DRILL_DIR = "molecule/"
# Input ids that hold secrets: AWX must store them encrypted (`secret: true`).
SECRET_INPUT = re.compile(r"token|key|secret|pass", re.IGNORECASE)
CODE = ("plugins", "roles", "src")
TEMPLATE_REF = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(?:\|[^}]*)?\}\}")


def is_drill(entry: dict[str, Any]) -> bool:
    return str(entry["playbook"]).startswith(DRILL_DIR)


def _inventory_hosts(path: Path) -> set[str]:
    def walk(node: dict[str, Any]) -> set[str]:
        found = set((node.get("hosts") or {}).keys())
        for child in (node.get("children") or {}).values():
            found |= walk(child or {})
        return found

    return walk((yaml.safe_load(path.read_text()) or {}).get("all") or {})


def check_drills(catalog: dict[str, Any], repo: Path = REPO) -> list[str]:
    """Drills run on the staging inventory with staging's credentials, never production's."""
    errors = []
    staging = catalog.get("drill_inventory") or {}
    name = staging.get("name", "")
    production = catalog["inventory"]
    if not name or name == production or "prod" in name.lower():
        errors.append(
            f"drill_inventory {name!r} is no staging inventory (production: {production})"
        )
    source = repo / staging.get("source_path", "")
    if not staging.get("source_path") or not source.is_file():
        errors.append(f"drill_inventory source {staging.get('source_path')!r} does not exist")
    else:
        example = repo / "inventories" / "example" / "hosts.yml"
        shared = _inventory_hosts(source) & (
            _inventory_hosts(example) if example.is_file() else set()
        )
        if shared:
            errors.append(f"{source.relative_to(repo)} names production hosts: {sorted(shared)}")
        if any("prod" in h for h in _inventory_hosts(source)):
            errors.append(f"{source.relative_to(repo)} names a production host")
    for credential in catalog.get("drill_credentials") or []:
        if "prod" in credential.lower():
            errors.append(f"drill_credentials names {credential}, a production credential")
    for entry in catalog["job_templates"]:
        if is_drill(entry) and entry.get("inventory", name) != name:
            errors.append(
                f"{entry['name']}: a drill runs on {name}, not on {entry.get('inventory')}"
            )
        if not is_drill(entry) and entry["name"].startswith("drill-"):
            errors.append(f"{entry['name']}: a drill template must run a molecule/ playbook")
    lab_only = {
        e["name"] for e in catalog["job_templates"] if is_drill(e) and lab_only_drill(e, repo)
    }
    for schedule in catalog.get("schedules", []):
        if schedule["unified_job_template"] in lab_only:
            errors.append(
                f"schedule {schedule['name']!r} runs {schedule['unified_job_template']}, which "
                f"breaks the lab itself and refuses {name}: it would fail every time"
            )
    return errors


def lab_only_drill(entry: dict[str, Any], repo: Path = REPO) -> bool:
    """A drill whose failure is injected through the lab: it refuses any other inventory."""
    playbook = repo / entry["playbook"]
    return playbook.is_file() and "shared/lab_only.yml" in playbook.read_text()


def _consumed(name: str, repo: Path, parts: tuple[str, ...]) -> bool:
    for part in parts:
        for path in (repo / part).rglob("*"):
            wanted = path.suffix in (".py", ".yml", ".yaml") and path.is_file()
            if wanted and name in path.read_text(errors="replace"):
                return True
    return False


def check_credential_types(catalog: dict[str, Any], repo: Path = REPO) -> list[str]:
    """Each injector uses only inputs its type declares, secrets are marked secret, and the
    code reads every variable injected (AWS_* are boto3's own)."""
    errors = []
    declared = {}
    for ctype in catalog.get("credential_types") or []:
        where = f"credential type {ctype['name']!r}"
        declared[ctype["name"]] = ctype
        fields = (ctype.get("inputs") or {}).get("fields") or []
        ids = {f["id"] for f in fields}
        for missing in set((ctype.get("inputs") or {}).get("required") or []) - ids:
            errors.append(f"{where}: requires {missing}, which it does not declare")
        for field_ in fields:
            secret_like = SECRET_INPUT.search(field_["id"]) and not field_["id"].endswith("_id")
            if secret_like and not field_.get("secret"):
                errors.append(f"{where}: input {field_['id']} holds a secret: mark it secret")
        injectors = ctype.get("injectors") or {}
        files = {k.partition(".")[2] or "" for k in (injectors.get("file") or {})}
        for bad in set(injectors) - {"env", "extra_vars", "file"}:
            errors.append(f"{where}: unknown injector kind {bad}")
        for kind, mapping in injectors.items():
            for target, template in (mapping or {}).items():
                refs = TEMPLATE_REF.findall(str(template))
                if not refs:
                    errors.append(f"{where}: {kind} {target} injects no input")
                for ref in refs:
                    if ref.startswith(("tower.filename", "awx.filename")):
                        name = ref.split(".", 2)[2] if ref.count(".") >= 2 else ""
                        if name not in files:
                            errors.append(
                                f"{where}: {kind} {target} names file {ref}, not declared"
                            )
                    elif ref.split(".")[0] not in ids:
                        errors.append(
                            f"{where}: {kind} {target} uses {ref}, which is no input it declares"
                        )
                boto3 = target.startswith("AWS_")  # boto3's own variables
                if kind == "env" and not boto3 and not _consumed(target, repo, CODE):
                    errors.append(f"{where}: env {target} is read by nothing in the code")
                if kind == "extra_vars" and not _consumed(target, repo, ("roles", "playbooks")):
                    errors.append(f"{where}: extra var {target} is read by no role or playbook")
    as_code = {c["name"]: c["credential_type"] for c in catalog.get("credentials_as_code") or []}
    for name, ctype in as_code.items():
        if ctype not in declared:
            errors.append(f"credential {name}: type {ctype!r} is not declared")
    for unused in set(declared) - set(as_code.values()):
        errors.append(f"credential type {unused!r} is used by no credential")
    for key in ("credentials", "drill_credentials"):
        types = [as_code[c] for c in catalog.get(key) or [] if c in as_code]
        for dup in {t for t in types if types.count(t) > 1}:
            errors.append(f"{key}: two credentials of type {dup!r} (AWX allows one per job)")
    for needed in ("knowngood-audit",):
        for key in ("credentials", "drill_credentials"):
            if needed in as_code and needed not in (catalog.get(key) or []):
                errors.append(f"{key} lacks {needed}: AWX jobs would refuse to start")
    return errors


def templates(catalog: dict[str, Any]) -> list[Template]:
    out = []
    for entry in catalog["job_templates"]:
        inputs = []
        for item in entry.get("survey", []):
            role, _, option = item["from"].partition(".")
            inputs.append(
                Input(
                    variable=item["variable"],
                    role=role,
                    option=option,
                    question=item.get("question", ""),
                    min=item.get("min"),
                    max=item.get("max"),
                )
            )
        out.append(
            Template(
                name=entry["name"],
                playbook=entry["playbook"],
                description=entry.get("description", ""),
                inputs=inputs,
                destructive=bool(entry.get("destructive", False)),
            )
        )
    return out


@functools.lru_cache(maxsize=256)
def _argument_specs(path: Path, mtime_ns: int, size: int) -> dict[str, Any]:
    # Keyed on the file's mtime and size: a spec edited in place is read again. libyaml when
    # present: rendering every survey reads the same specs about a hundred times.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(path.read_text(), Loader=loader)["argument_specs"]  # noqa: S506 - safe


def role_argument_specs(role: str, repo: Path = REPO) -> dict[str, Any]:
    """Every entry point's argument spec of a role (a copy: callers may change it)."""
    path = repo / "roles" / role / "meta" / "argument_specs.yml"
    if not path.is_file():
        raise AwxError(f"role {role} has no meta/argument_specs.yml")
    stat = path.stat()
    return copy.deepcopy(_argument_specs(path, stat.st_mtime_ns, stat.st_size))


def role_options(role: str, repo: Path = REPO) -> dict[str, dict[str, Any]]:
    return (role_argument_specs(role, repo).get("main") or {}).get("options") or {}


def _literal_default(spec: dict[str, Any]) -> Any:
    default = spec.get("default")
    if isinstance(default, str) and "{{" in default:
        return None  # computed by the play: the survey leaves it to the playbook
    return default


def question(inp: Input, spec: dict[str, Any]) -> dict[str, Any]:
    """One AWX survey item for a public input, typed by the role option it feeds."""
    kind = spec.get("type", "str")
    choices = spec.get("choices")
    if spec.get("no_log"):
        qtype = "password"
    elif choices and kind == "list":
        qtype = "multiselect"
    elif choices:
        qtype = "multiplechoice"
    elif kind == "bool":
        qtype, choices = "multiplechoice", ["true", "false"]
    elif kind == "int":
        qtype = "integer"
    elif kind == "float":
        qtype = "float"
    else:
        qtype = "text"
    description = spec.get("description", "")
    if isinstance(description, list):
        description = " ".join(description)
    if kind == "list" and not choices:
        description += " (comma-separated)"
    item: dict[str, Any] = {
        "question_name": inp.question or inp.variable.replace("_", " ").capitalize(),
        "question_description": description.strip(),
        "variable": inp.variable,
        "type": qtype,
        "required": bool(spec.get("required", False)),
        "min": inp.min,
        "max": inp.max,
        "choices": [str(c) for c in choices] if choices else "",
    }
    default = _literal_default(spec)
    if default is None or qtype == "password":
        item["default"] = ""
    elif kind == "bool":
        item["default"] = "true" if default else "false"
    elif qtype == "multiselect":
        item["default"] = "\n".join(str(d) for d in default)
    elif kind == "list":
        item["default"] = ",".join(str(d) for d in default)
    else:
        item["default"] = default
    return item


def survey(template: Template, repo: Path = REPO) -> dict[str, Any]:
    spec = []
    for inp in template.inputs:
        options = role_options(inp.role, repo)
        if inp.option not in options:
            raise AwxError(
                f"{template.name}: input {inp.variable} points at {inp.role}.{inp.option}, "
                f"which roles/{inp.role}/meta/argument_specs.yml does not declare"
            )
        spec.append(question(inp, options[inp.option]))
    return {"name": template.name, "description": template.description, "spec": spec}


def validate_survey(survey_spec: dict[str, Any]) -> list[str]:
    """The checks AWX's survey_spec endpoint makes, so a bad survey fails here, not at apply."""
    errors = []
    for key, kind in (("name", str), ("description", str), ("spec", list)):
        if not isinstance(survey_spec.get(key), kind):
            errors.append(f"survey field {key!r} missing or not a {kind.__name__}")
    if errors:
        return errors
    if not survey_spec["spec"]:
        errors.append("'spec' doesn't contain any items")
    seen = set()
    for idx, item in enumerate(survey_spec["spec"]):
        where = f"question {idx} ({item.get('variable', '?')})"
        for key, kind in (
            ("type", str),
            ("question_name", str),
            ("variable", str),
            ("required", bool),
        ):
            if not isinstance(item.get(key), kind):
                errors.append(f"{where}: {key!r} missing or not a {kind.__name__}")
        if errors:
            continue
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", item["variable"]):
            errors.append(f"{where}: variable is not a valid Ansible variable name")
        if item["variable"] in seen:
            errors.append(f"{where}: variable duplicated")
        seen.add(item["variable"])
        qtype = item["type"]
        if qtype not in ALLOWED_TYPES:
            errors.append(f"{where}: type {qtype!r} is not one of {sorted(ALLOWED_TYPES)}")
            continue
        default = item.get("default", "")
        if default != "" and not isinstance(default, ALLOWED_TYPES[qtype]):
            errors.append(f"{where}: default {default!r} is not valid for type {qtype}")
        for key in ("min", "max"):
            if item.get(key) is not None and not isinstance(item[key], int):
                errors.append(f"{where}: {key} must be an integer")
        if qtype in ("multiplechoice", "multiselect"):
            choices = item.get("choices")
            if not choices:
                errors.append(f"{where}: type {qtype} must specify choices")
                continue
            if isinstance(choices, str):
                choices = [c for c in choices.splitlines() if c.strip()]
            defaults = default.splitlines() if isinstance(default, str) else list(default)
            if qtype == "multiplechoice" and len(defaults) > 1:
                errors.append(f"{where}: multiple choice can only have one default")
            if any(d not in choices for d in defaults):
                errors.append(f"{where}: default must be one of the choices")
        if isinstance(default, str) and default.startswith("$encrypted$"):
            errors.append(f"{where}: $encrypted$ is reserved for AWX")
        if qtype in ("integer", "float") and default != "":
            low, high = item.get("min"), item.get("max")
            if (low is not None and default < low) or (high is not None and default > high):
                errors.append(f"{where}: default {default} outside [{low}, {high}]")
    return errors


def _feeds(text: str, option: str, variable: str) -> bool:
    pattern = rf"^\s*{re.escape(option)}:\s*[\"']?\{{\{{[^\n]*\b{re.escape(variable)}\b"
    return re.search(pattern, text, re.MULTILINE) is not None


def cross_check(template: Template, repo: Path = REPO) -> list[str]:
    """The playbook must run the role and hand the public input to that very option."""
    errors = []
    playbook = repo / template.playbook
    if not playbook.is_file():
        return [f"{template.name}: playbook {template.playbook} does not exist"]
    text = playbook.read_text()
    for inp in template.inputs:
        if f"knowngood.runbooks.{inp.role}" not in text:
            errors.append(f"{template.name}: {template.playbook} does not run role {inp.role}")
            continue
        defaults = repo / "roles" / inp.role / "defaults" / "main.yml"
        role_text = defaults.read_text() if defaults.is_file() else ""
        direct = inp.variable == inp.option  # the public input is the role option itself
        fed = _feeds(text, inp.option, inp.variable) or _feeds(role_text, inp.option, inp.variable)
        if not (direct or fed):
            errors.append(
                f"{template.name}: neither {template.playbook} nor {inp.role}'s defaults set "
                f"{inp.option} from {inp.variable}: the survey would ask for a variable "
                f"nothing reads"
            )
        kind = role_options(inp.role, repo).get(inp.option, {}).get("type", "str")
        if (inp.min is not None or inp.max is not None) and kind not in ("int", "float", "str"):
            errors.append(f"{template.name}: min/max given for {inp.variable} of type {kind}")
    return errors


def survey_path(name: str, survey_dir: Path = SURVEY_DIR) -> Path:
    return survey_dir / f"{name}.json"


def render(catalog: dict[str, Any], repo: Path = REPO) -> dict[str, dict[str, Any]]:
    return {t.name: survey(t, repo) for t in templates(catalog) if t.inputs}


def check(catalog: dict[str, Any], repo: Path = REPO, survey_dir: Path = SURVEY_DIR) -> list[str]:
    """Everything that would make AWX disagree with the roles; empty means consistent."""
    errors = []
    names = [t.name for t in templates(catalog)]
    playbooks = {t.playbook for t in templates(catalog)}
    for dup in {n for n in names if names.count(n) > 1}:
        errors.append(f"job template {dup} defined twice")
    for path in sorted((repo / "playbooks").glob("*.yml")):
        rel = str(path.relative_to(repo))
        if collection.alias_target(path):
            continue  # an FQCN alias: AWX runs the playbook it imports, which has the template
        if rel not in playbooks:
            errors.append(f"{rel} has no job template in awx/catalog.yml")
    for template in templates(catalog):
        errors += cross_check(template, repo)
    errors += check_drills(catalog, repo)
    errors += check_credential_types(catalog, repo)
    try:
        rendered = render(catalog, repo)
    except AwxError as exc:
        return errors + [str(exc)]
    for name, spec in rendered.items():
        errors += [f"{name}: {e}" for e in validate_survey(spec)]
        path = survey_path(name, survey_dir)
        if not path.is_file():
            errors.append(f"{path.relative_to(repo)} missing: run `knowngood awx surveys --write`")
        elif json.loads(path.read_text()) != spec:
            errors.append(
                f"{path.relative_to(repo)} differs from the argument specs: "
                "run `knowngood awx surveys --write` and review the diff"
            )
    for path in sorted(survey_dir.glob("*.json")) if survey_dir.is_dir() else []:
        if path.stem not in rendered:
            errors.append(f"{path.relative_to(repo)} belongs to no job template")
    flows = survey_dir.parent / WORKFLOWS.name
    if not flows.is_file() or json.loads(flows.read_text()) != workflows(catalog, repo):
        errors.append(f"{flows.relative_to(repo)} is stale: run `knowngood awx surveys --write`")
    roles = {t.get("approves") for t in catalog["teams"]} - {None}
    for severity, needed in catalog["severities"].items():
        if set(needed) - roles:
            errors.append(f"severity {severity} needs {sorted(set(needed) - roles)}: no team")
    known = set(names)
    for schedule in catalog.get("schedules", []):
        if schedule["unified_job_template"] not in known:
            errors.append(
                f"schedule {schedule['name']!r} runs {schedule['unified_job_template']}, "
                "which is no job template"
            )
    return errors


def workflows(catalog: dict[str, Any], repo: Path = REPO) -> list[dict[str, Any]]:
    """One workflow per destructive runbook and severity: approvals in order, then the job.

    The job receives knowngood_severity and the approval roles in order, so the gate inside
    it can match each approval node to the team that must have approved it.
    """
    org = catalog["organization"]
    approvers = {t["approves"]: t["name"] for t in catalog["teams"] if t.get("approves")}
    surveys = render(catalog, repo)
    out = []
    for template in templates(catalog):
        if not template.destructive:
            continue
        for severity, roles in catalog["severities"].items():
            nodes = []
            for index, role in enumerate(roles):
                following = f"approve-{index + 1}" if index + 1 < len(roles) else "run"
                nodes.append(
                    {
                        "identifier": f"approve-{index}",
                        "unified_job_template": {
                            "name": f"Approval by {approvers[role]} ({role})",
                            "description": f"{severity} severity: {role} approves {template.name}",
                            "type": "workflow_approval",
                            "timeout": catalog["approval_timeout_s"],
                        },
                        "related": {"success_nodes": [{"identifier": following}]},
                    }
                )
            nodes.append(
                {
                    "identifier": "run",
                    "unified_job_template": {
                        "name": template.name,
                        "type": "job_template",
                        "organization": {"name": org},
                    },
                }
            )
            out.append(
                {
                    "name": f"{template.name} ({severity})",
                    "description": f"{template.description}; {severity} severity",
                    "organization": org,
                    "extra_vars": {
                        "knowngood_severity": severity,
                        "knowngood_awx_approval_roles": list(roles),
                    },
                    "survey_enabled": template.name in surveys,
                    "survey_spec": surveys.get(template.name, {}),
                    "workflow_nodes": nodes,
                    "approval_teams": sorted({approvers[r] for r in roles}),
                }
            )
    return out


def _dump(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


def write(catalog: dict[str, Any], repo: Path = REPO, survey_dir: Path = SURVEY_DIR) -> list[Path]:
    survey_dir.mkdir(parents=True, exist_ok=True)
    wanted = {survey_path(n, survey_dir): s for n, s in render(catalog, repo).items()}
    wanted[survey_dir.parent / WORKFLOWS.name] = workflows(catalog, repo)
    written = []
    for path, value in wanted.items():
        if not path.is_file() or path.read_text() != _dump(value):
            path.write_text(_dump(value))
            written.append(path)
    return written


def cmd_awx(args: Any) -> int:
    catalog = load_catalog()
    if args.write:
        for path in write(catalog):
            print(f"wrote {path.relative_to(REPO)}")
    errors = check(catalog)
    for error in errors:
        print(f"awx: {error}")
    if not errors:
        count = len(render(catalog))
        print(f"awx: {count} surveys agree with the argument specs and the playbooks")
    return 1 if errors else 0


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "awx",
        help="AWX as code: surveys from the roles' argument specs",
        description="knowngood awx surveys [--write]: check (or regenerate) awx/surveys/*.json",
    )
    parser.add_argument("awx_command", choices=["surveys"])
    parser.add_argument("--write", action="store_true", help="regenerate, then check")
    parser.set_defaults(func=cmd_awx)
