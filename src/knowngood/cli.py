"""knowngood: run runbooks with an audit trail, and manage the embedded lab.

knowngood lab up [--hosts N] [--ssh]      build the lab (idempotent)
knowngood lab status [--json]             where everything is
knowngood lab down                        stop it and remove it
knowngood run rollback-code --ticket T --reason R [--request FILE] [--check]
knowngood request rollback-code --decision RUN_ID --ticket T --reason R  -> request file
knowngood approve REQUEST --key ~/.ssh/id_ed25519                        (sign it)
knowngood breakglass list [--json] | sign RUN_ID --key K --signer NAME | escalate [--after H]
knowngood review open RUN_ID --by NAME | finding | action --owner X --due D | done --link | close
knowngood review list [--open] [--json] | nag                            (post-incident review)
knowngood audit list | show RUN_ID | verify | repair
knowngood report RUN_ID --format md|html
knowngood drill run NAME | list | report [--html FILE]
knowngood awx surveys [--write]
knowngood lab break app-host NAME | db-primary | nginx-config | lb | region-a | everything ;
    knowngood lab heal
knowngood --version

Runbooks come from this checkout, or (a pip-installed CLI) from the knowngood.runbooks
collection installed with ansible-galaxy (docs/setup.md). --json on run, audit list|show|verify
and drill report prints one JSON document on stdout instead of the text.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from knowngood import runner
from knowngood.collection import CHECKOUT
from knowngood.errors import KnowngoodError
from knowngood.lab.config import DEFAULT_BASE_PORT, DEFAULT_ROOT, LabConfig

EXIT_CODES = """exit codes:
  0  success (audit verify: the trail is intact)
  1  knowngood refused or could not start: no lab or inventory, no such runbook or record,
     collection not installed, bad input (the message says which; never a traceback)
  2  the runbook failed (a task or a gate stopped it), or the command line is wrong (usage)
  3  run: timed out; audit verify: signs of tampering
  4  run: cancelled; audit verify: findings (no tampering)
"""


def _lab_config(args: argparse.Namespace) -> LabConfig:
    root = Path(args.root)
    if args.command == "up":
        extra = {"synchronous": True} if args.synchronous else {}
        return LabConfig(
            root=root, hosts=args.hosts, ssh=args.ssh, base_port=args.base_port, extra=extra
        )
    if not (root / "lab.json").exists():
        raise KnowngoodError(f"no lab at {root}: run `knowngood lab up` first")
    return LabConfig.load(root)


def cmd_lab(args: argparse.Namespace) -> int:
    from knowngood.lab import core

    if args.command == "up" and not 1 <= args.hosts <= 100:
        raise KnowngoodError("--hosts must be between 1 and 100")
    cfg = _lab_config(args)
    if args.command == "up":
        if (cfg.root / "lab.json").exists():
            old = LabConfig.load(cfg.root)
            if (old.ssh, old.base_port) != (cfg.ssh, cfg.base_port) or old.hosts > cfg.hosts:
                raise KnowngoodError(
                    f"a lab with hosts={old.hosts} ssh={old.ssh} base_port={old.base_port} "
                    f"runs at {cfg.root}; run `knowngood lab down` first to change its shape"
                )
        core.up(cfg, progress=lambda m: print(m, flush=True))
    elif args.command == "down":
        core.down(cfg)
    elif args.command in ("break", "heal"):
        from knowngood.lab import faults

        if args.command == "heal":
            faults.heal(cfg, progress=lambda m: print(m, flush=True))
        elif args.fault == "app-host":
            print(f"killed {args.target}: {faults.break_app_host(cfg, args.target or '')}")
        elif args.fault == "nginx-config":
            print(f"pushed a bad upstream into {faults.break_nginx_config(cfg)}")
        elif args.fault == "db-primary":
            print(f"killed the primary in {faults.break_db_primary(cfg)}")
        elif args.fault == "lb":
            print(f"killed the load balancer (pid {faults.break_lb(cfg)})")
        elif args.fault == "everything":
            print(f"complete outage: {faults.break_everything(cfg)}")
        else:
            print(f"region A lost: {faults.break_region_a(cfg)}")
    else:
        if args.json:
            print(core.status_json(cfg))
        else:
            status = core.status(cfg)
            print(
                f"lab at {status['root']} ({len(status['hosts'])} hosts, "
                f"{'ssh' if status['ssh'] else 'local'})"
            )
            print(f"  load balancer  {status['lb_url']}")
            for host in status["hosts"]:
                print(f"  {host['name']:<6} {host['address']:<11} {host['app_urls']}")
            print(f"  postgres       {status['postgres'].get('primary_dsn')}")
            print(f"  prometheus     {status['prometheus_url']}")
            print(f"  inventory      {status['inventory']}")
    return 0


def _parse_extravars(pairs: list[str]) -> dict:
    extravars: dict = {}
    for pair in pairs:
        if pair.startswith("@"):
            extravars.update(json.loads(Path(pair[1:]).read_text()))
            continue
        if pair.startswith("{"):  # -e '{"k": "two words"}', as ansible-playbook takes it
            try:
                extravars.update(json.loads(pair))
            except ValueError as exc:
                raise KnowngoodError(f"-e JSON is not valid: {exc}") from None
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise KnowngoodError(f"-e expects key=value, got {pair!r}")
        extravars[key] = value
    return extravars


def _trail(args: argparse.Namespace) -> dict:
    """{audit_dir, key, witness}: the same resolution the callback uses (audit_chain)."""
    from knowngood.modutils import module_utils

    chain = module_utils("audit_chain")
    try:
        return chain.resolve_trail(getattr(args, "audit_dir", "") or None, None, args.root)
    except (ValueError, chain.AuditError) as exc:
        raise KnowngoodError(str(exc)) from None


def _run_target(args: argparse.Namespace) -> tuple[str, Path, Path]:
    """(inventory, audit dir, key): without -i the runbook runs on the lab. Either way it
    records in the one trail `knowngood audit` reads."""
    inventory = args.inventory
    if not inventory:
        if not (Path(args.root) / "lab.json").exists():
            raise KnowngoodError(
                f"no inventory: give -i INVENTORY, or start the lab (`knowngood lab up`; "
                f"looked for one at {args.root}, set --root or KNOWNGOOD_LAB_DIR)"
            )
        inventory = str(LabConfig.load(Path(args.root)).inventory_path)
    trail = _trail(args)
    return inventory, Path(trail["audit_dir"]), Path(trail["key"])


# `knowngood run --ticket/--reason` and the runbooks' public inputs they set (the emergency
# runbook writes its commands with them).
GOVERNED_FLAGS = {"ticket": "ticket", "reason": "rollback_reason"}


def _governed_extravars(args: argparse.Namespace) -> dict:
    extravars = _parse_extravars(args.extra_vars)
    for flag, variable in GOVERNED_FLAGS.items():
        if getattr(args, flag):
            extravars.setdefault(variable, getattr(args, flag))
    return extravars


def cmd_run(args: argparse.Namespace) -> int:
    inventory, audit_dir, audit_key = _run_target(args)
    if args.request:
        from knowngood import governance

        # The approved request says why; the run carries the same ticket and reason.
        doc = governance.read_request(Path(args.request))
        args.ticket, args.reason = args.ticket or doc["ticket"], args.reason or doc["reason"]
    extravars = _governed_extravars(args)
    if args.request:
        extravars["knowngood_request"] = str(Path(args.request).resolve())
    if args.break_glass:
        extravars["knowngood_break_glass"] = args.break_glass
    request = runner.RunRequest(
        runbook=args.runbook,
        inventory=inventory,
        extravars=extravars,
        check=args.check,
        limit=args.limit or "",
        audit_dir=audit_dir,
        quiet=args.quiet or args.json,  # --json: stdout is the JSON document alone
        ticket=args.ticket,
        reason=args.reason,
        audit_key=audit_key,
        lab_root=str(Path(args.root).resolve()) if (Path(args.root) / "lab.json").exists() else "",
        verbosity=args.verbose,
        diff=args.diff,
        vault_password_file=args.vault_password_file,
    )
    result = runner.run(request)
    if args.json:
        print(
            json.dumps(
                {
                    "run_id": result.run_id,
                    "status": result.status,
                    "exit_code": result.exit_code,
                    "duration_s": round(result.duration_s, 3),
                    "record_path": str(result.record_path),
                    "summary": runner.summarize(result.record) if result.record else [],
                    "record": result.record,
                },
                indent=2,
            )
        )
        return result.exit_code
    print()
    for line in runner.summarize(result.record) if result.record else []:
        print(line)
    print(f"audit record: {result.record_path}")
    return result.exit_code


def cmd_request(args: argparse.Namespace) -> int:
    from knowngood import governance

    inventory, audit_dir, audit_key = _run_target(args)
    extravars = _governed_extravars(args)
    decision = governance.read_decision(args.decision, audit_dir) if args.decision else None
    path = governance.create_request(
        runbook=args.runbook,
        inventory=inventory,
        limit=args.limit or "",
        extravars=extravars,
        severity=args.severity,
        requester=args.requester,
        ticket=args.ticket,
        reason=args.reason,
        ttl_s=args.expires,
        out=Path(args.output) if args.output else audit_dir / "requests",
        decision=decision,
    )
    print(path)
    if not args.no_notify:
        for line in governance.notify_request(path, inventory, audit_dir, audit_key, extravars):
            print(line, file=sys.stderr)
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    from knowngood import governance

    print(governance.approve(Path(args.request), Path(args.key).expanduser(), args.signer))
    return 0


def load_record(audit_dir: Path, run_id: str) -> dict:
    """The run's audit record (audit_record.read), or the error the CLI shows."""
    from knowngood.modutils import module_utils

    record = module_utils("audit_record").read(audit_dir, run_id)
    if record is None:
        raise KnowngoodError(f"no audit record {run_id} in {audit_dir}")
    return record


def cmd_audit(args: argparse.Namespace) -> int:
    trail = _trail(args)
    audit_dir = Path(trail["audit_dir"])
    from knowngood.modutils import module_utils

    chain = module_utils("audit_chain")
    if args.command == "verify" and args.awx_job:
        return _verify_awx(chain, trail, args)
    if args.command == "verify":
        return _verify(chain, trail, args.json)
    if args.command == "repair":
        import getpass

        try:
            lines = chain.repair(str(audit_dir), trail["key"], getpass.getuser(), trail["witness"])
        except chain.AuditError as exc:
            raise KnowngoodError(str(exc)) from None
        for line in lines:
            runner._warn_witness(line)
            if line["kind"] == "repair":
                removed = ", ".join(f"{r['bytes']} bytes" for r in line["removed"])
                print(f"seq {line['seq']}: removed torn line(s) ({removed})")
            else:
                print(f"seq {line['seq']}: closed abandoned run {line['run_id']}")
        print(f"audit trail {audit_dir}: {len(lines) or 'nothing'} repaired")
        return 0
    if args.command == "list":
        recorded = (audit_dir / "index.jsonl").exists()
        entries = chain.entries(str(audit_dir)) if recorded else []
        if args.json:
            runs = module_utils("audit_record").runs(entries)
            print(json.dumps({"audit_dir": str(audit_dir), "runs": runs}, indent=2))
            return 0
        if not recorded:
            print(f"no runs recorded in {audit_dir}")
            return 0
        for line in module_utils("audit_record").run_lines(entries):
            print(line)
        return 0
    record = load_record(audit_dir, args.run_id)
    print(json.dumps(record, indent=2) if args.json else "\n".join(runner.summarize(record)))
    return 0


def _verify_awx(chain, trail: dict, args: argparse.Namespace) -> int:
    """An AWX job's trail, rebuilt from the witness alone (the job's EE is gone) and checked:
    chain, signatures against the audit key's public half, records, witness checkpoints."""
    import shutil
    import tempfile

    if not trail["witness"]:
        raise KnowngoodError(
            "no witness configured: set KNOWNGOOD_AUDIT_S3_URL (and _ENDPOINT, _REGION, AWS_*) "
            "to the bucket the AWX jobs write to"
        )
    pub = Path(args.public_key)
    if not pub.is_file():
        raise KnowngoodError(f"--public-key {pub}: no such file (the audit key's public half)")
    remote = dict(trail["witness"], trail=chain.awx_trail_id(args.awx_host, args.awx_job))
    where = f"{remote['url']}/{remote['trail']}/"
    with tempfile.TemporaryDirectory(prefix="knowngood-awx-") as tmp:
        rebuilt = Path(tmp) / "trail"
        try:
            fetched = chain.fetch_trail(remote, str(rebuilt))
            checkpoint = chain.read_remote_checkpoint(remote, str(rebuilt))
        except Exception as exc:  # an unreachable witness vouches for nothing
            raise KnowngoodError(f"witness {where} unreadable: {type(exc).__name__}") from None
        key = Path(tmp) / "audit_key"
        shutil.copy(pub, f"{key}.pub")
        result = chain.check(str(rebuilt), str(key), checkpoint or None, remote)
        tampered = [f"witness object {k} was rewritten" for k in fetched["rewritten"]]
        tampered += result["tampered"]
        findings = list(result["findings"])
        if not fetched["lines"]:
            findings.append(f"no record of AWX job {args.awx_job} in {where}")
        runs = []
        for name in fetched["records"]:
            record = json.loads((rebuilt / name).read_text())
            if name.endswith(".open.json"):
                continue
            awx = record.get("awx") or {}
            if awx.get("job_id") != args.awx_job:
                tampered.append(f"record {name} names AWX job {awx.get('job_id')}")
            runs.append(
                {
                    "run_id": record.get("run_id"),
                    "status": record.get("status"),
                    "playbook": Path(str(record.get("playbook") or "?")).name,
                    "launched_by": awx.get("user_name", ""),
                    "started_at": record.get("started_at"),
                    "finished_at": record.get("finished_at"),
                    "events": len(record.get("events") or []),
                    "approvals": (record.get("approvals") or {}).get("mode", ""),
                }
            )
    code = 3 if tampered else 4 if findings else 0
    if args.json:
        doc = {
            "awx_job": args.awx_job,
            "witness": where,
            "intact": code == 0,
            "exit_code": code,
            "entries": result["entries"],
            "runs": runs,
            "tampered": tampered,
            "findings": findings,
        }
        print(json.dumps(doc, indent=2))
        return code
    for problem in tampered:
        print(f"TAMPERED  {problem}")
    for finding in findings:
        print(f"FINDING   {finding}")
    for run in runs:
        print(
            f"run {run['run_id']}: {run['playbook']} {run['status']}, launched by "
            f"{run['launched_by'] or '?'}, {run['started_at']} to {run['finished_at']}, "
            f"{run['events']} task events"
        )
    state = "intact" if code == 0 else "NOT intact"
    print(
        f"AWX job {args.awx_job}: {result['entries']} entries rebuilt from the witness {where}; "
        f"chain, signatures (by {pub.name}), records and checkpoints {state}"
    )
    return code


def _verify(chain, trail: dict, as_json: bool = False) -> int:
    """TAMPERED lines (exit 3), FINDING lines (exit 4), or one line saying what was checked."""
    audit_dir, witness = trail["audit_dir"], trail["witness"]
    result = chain.check(audit_dir, trail["key"], witness=witness)
    code = 3 if result["tampered"] else 4 if result["findings"] else 0
    if as_json:
        doc = {
            "audit_dir": str(audit_dir),
            "intact": code == 0,
            "exit_code": code,
            "entries": result["entries"],
            "empty": bool(result["empty"]),
            "tampered": list(result["tampered"]),
            "findings": list(result["findings"]),
            "witness": witness["url"] if witness else None,
        }
        print(json.dumps(doc, indent=2))
        return code
    for problem in result["tampered"]:
        print(f"TAMPERED  {problem}")
    for finding in result["findings"]:
        print(f"FINDING   {finding}")
    where = f"witness {witness['url']}" if witness else "no witness configured"
    if result["tampered"] or result["findings"]:
        print(
            f"audit trail {audit_dir}: {len(result['tampered'])} sign(s) of tampering, "
            f"{len(result['findings'])} finding(s) in {result['entries']} entries ({where})"
        )
        return code
    if result["empty"]:
        print(f"audit trail {audit_dir}: empty, nothing recorded yet ({where})")
        return 0
    what = "chain, signatures and checkpoint"
    if witness:
        what += f", and the witness in {witness['url']}"
    else:
        what += " (no witness configured: a cut tail with the checkpoint rolled back is not seen)"
    print(f"audit trail {audit_dir}: {result['entries']} entries, {what} intact")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from knowngood import report

    audit_dir = Path(_trail(args)["audit_dir"])
    record = load_record(audit_dir, args.run_id)
    prometheus = args.prometheus
    if not prometheus and (Path(args.root) / "lab.json").exists():
        prometheus = f"http://127.0.0.1:{LabConfig.load(Path(args.root)).prometheus_port}"
    notes = json.loads(Path(args.notes).read_text()) if args.notes else {}
    if (record.get("approvals") or {}).get("mode") == "break_glass":
        from knowngood import breakglass

        record = dict(record, break_glass_state=breakglass.state_of(args, audit_dir, args.run_id))
    from knowngood import review

    record = dict(record, review_state=review.state_of(audit_dir, args.run_id))
    out = (
        Path(args.output) if args.output else audit_dir / "reports" / f"{args.run_id}.{args.format}"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    print(report.write(record, notes, prometheus, args.format, out))
    return 0


def version_text() -> str:
    """knowngood's installed version, and where its runbooks come from."""
    from importlib import metadata

    try:
        version = metadata.version("knowngood")
    except metadata.PackageNotFoundError:  # running from a checkout that was never installed
        version = "unknown (not installed)"
    from knowngood import collection

    try:
        home = collection.root()
        where = "checkout" if home == CHECKOUT else "collection"
        runbooks = f"runbooks: {where} {home}"
    except KnowngoodError:
        runbooks = "runbooks: knowngood.runbooks collection not installed"
    return f"knowngood {version} ({runbooks})"


class _Version(argparse.Action):
    """--version, computed only when asked (it looks for the collection)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="knowngood",
        description=__doc__,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    parser.add_argument(
        "--root", default=str(DEFAULT_ROOT), help="lab directory (env KNOWNGOOD_LAB_DIR)"
    )
    sub = parser.add_subparsers(dest="area", required=True)

    lab = sub.add_parser("lab", help="the embedded one-machine lab")
    lab_sub = lab.add_subparsers(dest="command", required=True)
    up = lab_sub.add_parser("up", help="build and start the lab (idempotent)")
    up.add_argument("--hosts", type=int, default=3)
    up.add_argument("--ssh", action="store_true", help="one sshd per host on 127.0.1.x")
    up.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT)
    up.add_argument(
        "--synchronous",
        action="store_true",
        help="the primary waits for the standby on every commit (knowngood_db_synchronous)",
    )
    lab_sub.add_parser("down", help="stop every lab process and remove the lab")
    broken = lab_sub.add_parser("break", help="inject a failure (drills, demos)")
    broken.add_argument(
        "fault",
        choices=["app-host", "db-primary", "nginx-config", "lb", "region-a", "everything"],
    )
    broken.add_argument("target", nargs="?", help="app-host: the host to kill (e.g. app2)")
    lab_sub.add_parser("heal", help="put the lab's shape back after injected failures")
    status = lab_sub.add_parser("status", help="where everything is")
    status.add_argument("--json", action="store_true")
    lab.set_defaults(func=cmd_lab)

    run = sub.add_parser("run", help="run a runbook with an audit record")
    run.add_argument("runbook", help="playbook name, e.g. rollback-code")
    run.add_argument("-e", "--extra-vars", action="append", default=[])
    run.add_argument("-i", "--inventory", default="")
    run.add_argument("--limit", default="")
    run.add_argument("--check", action="store_true", help="show the plan, change nothing")
    run.add_argument("--audit-dir", default="")
    run.add_argument("--quiet", action="store_true")
    run.add_argument("--ticket", default="", help="incident or change ticket")
    run.add_argument("--reason", default="", help="why this run (rollback_reason)")
    run.add_argument("--request", default="", help="approved request file (knowngood request)")
    run.add_argument("--break-glass", default="", metavar="REASON", help="run without approvals")
    run.add_argument("-v", "--verbose", action="count", default=0)
    run.add_argument("--diff", action="store_true", help="show differences (always with --check)")
    run.add_argument("--vault-password-file", default="")
    run.add_argument("--json", action="store_true", help="print the result and record as JSON")
    run.set_defaults(func=cmd_run)

    req = sub.add_parser("request", help="write a rollback request for approvers to sign")
    req.add_argument("runbook", help="playbook name, e.g. rollback-code")
    req.add_argument("-e", "--extra-vars", action="append", default=[])
    req.add_argument("-i", "--inventory", default="")
    req.add_argument("--limit", default="")
    req.add_argument(
        "--decision",
        default="",
        metavar="RECORD",
        help="the decide run this answers (its run id or audit record); sets the severity",
    )
    req.add_argument(
        "--severity",
        default="",
        choices=["low", "medium", "high"],
        help="default: the decision's; never lower (high without --decision)",
    )
    req.add_argument("--ticket", required=True)
    req.add_argument("--reason", required=True)
    req.add_argument("--requester", default="", help="default: the OS user")
    req.add_argument("--expires", type=int, default=3600, help="seconds (default 3600)")
    req.add_argument("-o", "--output", default="", help="directory (default <audit>/requests)")
    req.add_argument("--no-notify", action="store_true", help="do not tell contacts and approvers")
    req.set_defaults(func=cmd_request, audit_dir="")

    appr = sub.add_parser("approve", help="sign a rollback request with your SSH key")
    appr.add_argument("request", help="request file")
    appr.add_argument("--key", default="~/.ssh/id_ed25519", help="SSH private key")
    appr.add_argument("--signer", default="", help="your principal (default: the OS user)")
    appr.set_defaults(func=cmd_approve)

    audit = sub.add_parser("audit", help="read audit records")
    audit.add_argument("--audit-dir", default="")
    audit_sub = audit.add_subparsers(dest="command", required=True)
    listing = audit_sub.add_parser("list", help="every recorded run, oldest first")
    listing.add_argument("--json", action="store_true")
    verify = audit_sub.add_parser(
        "verify", help="check the chain, signatures, records, checkpoint and witness"
    )
    verify.add_argument("--json", action="store_true")
    verify.add_argument(
        "--awx-job", type=int, default=0, help="an AWX job's trail, rebuilt from the witness"
    )
    verify.add_argument("--awx-host", default="", help="AWX's URL, as the job saw AWX_HOST")
    verify.add_argument(
        "--public-key", default="", help="the audit signing key's public half (--awx-job)"
    )
    audit_sub.add_parser("repair", help="remove a torn last line (recorded as a repair entry)")
    show = audit_sub.add_parser("show")
    show.add_argument("run_id")
    show.add_argument("--json", action="store_true")
    audit.set_defaults(func=cmd_audit)

    rep = sub.add_parser("report", help="incident report (strategy section 7) for a run")
    rep.add_argument("run_id")
    rep.add_argument("--format", choices=["md", "html"], default="md")
    rep.add_argument("--notes", default="", help="JSON: description, root_cause, recommendations")
    rep.add_argument("--prometheus", default="", help="default: the lab's")
    rep.add_argument("--audit-dir", default="")
    rep.add_argument("-o", "--output", default="")
    rep.set_defaults(func=cmd_report)

    from knowngood import wal  # `knowngood wal push|fetch|status` (the kg-wal tool's commands)

    wal.add_parser(sub)
    from knowngood import awx  # `knowngood awx surveys`

    awx.add_parser(sub)
    from knowngood import drills  # `knowngood drill run|list|report`

    drills.add_parser(sub)
    from knowngood import emergency  # `knowngood emergency`

    emergency.add_parser(sub)
    from knowngood import breakglass  # `knowngood breakglass list|sign|escalate`

    breakglass.add_parser(sub)
    from knowngood import review  # `knowngood review open|finding|action|done|close|list|nag`

    review.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KnowngoodError as exc:  # lab errors carry a log tail worth showing as-is
        print(f"knowngood: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
