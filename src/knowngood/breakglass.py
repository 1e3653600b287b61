"""`knowngood breakglass list|sign|escalate`: the break-glass lifecycle after the run.

The logic is the collection's module_utils/break_glass.py; the trust root is the governance
policy the approval gate reads (module_utils/policy.py), found the same way.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from pathlib import Path

from knowngood import runner
from knowngood.errors import KnowngoodError, reported
from knowngood.modutils import module_utils


def _environ(args: argparse.Namespace) -> dict:
    """The environment the gate gets under `knowngood run`: the lab's dir when there is a lab."""
    environ = dict(os.environ)
    if (Path(args.root) / "lab.json").exists():
        environ.setdefault("KNOWNGOOD_LAB_DIR", str(Path(args.root).resolve()))
    return environ


def trust_root(args: argparse.Namespace, required: bool = True) -> dict | None:
    """The governance policy (policy.load): never a variable, never a flag."""
    policy = module_utils("policy")
    try:
        return policy.load(_environ(args))
    except policy.PolicyError as exc:
        if required:
            raise KnowngoodError(
                f"break-glass sign-off needs the governance policy: {exc}"
            ) from None
        return None


def _call(fn, *a, **kw):
    errors = (module_utils("break_glass").BreakGlassError, module_utils("audit_chain").AuditError)
    return reported(errors, fn, *a, **kw)


def _line(s: dict) -> str:
    signed = ", ".join(f"{x['principal']} ({', '.join(x['roles'])})" for x in s["signers"])
    text = (
        f"{s['run_id']}  {s['state'].upper():<13} {s['runbook']}  by {s['broken_by']} at "
        f"{s['at']} ({s['age_h']} h ago): {s['reason']}"
    )
    if s["state"] == "closed":
        return text + f"\n    closed by {s['closed_by']} at {s['closed_at']}; signed: {signed}"
    text += (
        f"\n    missing: {', '.join(s['missing_roles']) or 'none'}; signed: {signed or 'nobody'}"
    )
    if s["escalations"]:
        text += f"; escalated {s['escalations']}x, last {s['last_escalated_at']}"
    for why in s["refused"]:
        text += f"\n    not counted: {why}"
    return text


def state_of(args: argparse.Namespace, audit_dir: Path, run_id: str) -> dict:
    """One break-glass run's state for the report (signatures unverified without a policy)."""
    bg = module_utils("break_glass")
    trust = trust_root(args, required=False)
    return _call(bg.of_run, str(audit_dir), run_id, trust, time.time())[1]


def cmd_list(args: argparse.Namespace, trail: dict) -> int:
    bg = module_utils("break_glass")
    trust = trust_root(args, required=False)
    found = _call(bg.states, trail["audit_dir"], trust, time.time(), include_closed=args.all)
    if args.json:
        print(json.dumps({"audit_dir": trail["audit_dir"], "break_glass": found}, indent=2))
        return 0
    if not found:
        print(f"no {'' if args.all else 'open '}break-glass runs in {trail['audit_dir']}")
    for item in found:
        print(_line(item))
    return 0


def cmd_sign(args: argparse.Namespace, trail: dict) -> int:
    bg = module_utils("break_glass")
    trust = trust_root(args)
    key = str(Path(args.key).expanduser())
    after, entry = _call(
        bg.sign, trail, args.run_id, key, args.signer, trust, time.time(), getpass.getuser()
    )
    signed = ", ".join(f"{x['principal']} ({', '.join(x['roles'])})" for x in after["signers"])
    if entry is None:
        print(
            f"break-glass {args.run_id}: signed by {signed}; still missing "
            f"{', '.join(after['missing_roles'])}"
        )
        return 0
    runner._warn_witness(entry)
    print(
        f"break-glass {args.run_id}: CLOSED by {entry['closed_by']} at {entry['closed_at']} "
        f"(signed: {signed}; audit seq {entry['seq']})"
    )
    return 0


def notify_run(
    args: argparse.Namespace, trail: dict, runbook: str, variables: dict, ticket: str, reason: str
) -> dict:
    """Run a notice playbook (escalate, review-nag) on the inventory's channels, recorded like
    any run; {run_id, summary} for the chain entries that say it was sent."""
    from knowngood import cli

    result = runner.run(
        runner.RunRequest(
            runbook=runbook,
            inventory=cli._run_target(args)[0],
            extravars={**variables, **cli._parse_extravars(args.extra_vars)},
            audit_dir=Path(trail["audit_dir"]),
            audit_key=Path(trail["key"]),
            quiet=True,
            ticket=ticket,
            reason=reason,
        )
    )
    sent = result.record.get("notifications", []) if result.record else []
    ok = sum(1 for n in sent if n["outcome"] == "delivered")
    summary = (
        f"{ok} of {len(sent)} notice(s) delivered"
        if sent
        else f"no notice sent ({result.status}; no channel configured?)"
    )
    for n in sent:
        print(f"notify: {n['event']} {n['channel']} {n['target']}: {n['outcome']}", file=sys.stderr)
    return {"run_id": result.run_id, "summary": summary}


def cmd_escalate(args: argparse.Namespace, trail: dict) -> int:
    bg = module_utils("break_glass")
    trust = trust_root(args, required=False)
    after = _call(bg.escalate_after, trust, args.after)

    def send(items: list[dict]) -> dict:
        return notify_run(
            args,
            trail,
            "escalate",
            {"knowngood_break_glass_overdue": items},
            "break-glass-escalation",
            f"{len(items)} break-glass run(s) unsigned after {after:g} h",
        )

    written, items = _call(bg.escalate, trail, trust, after, time.time(), send)
    if args.json:
        print(json.dumps({"after_h": after, "escalated": written}, indent=2))
        return 0
    if not written:
        print(f"no open break-glass due for escalation (limit {after:g} h, once per period)")
    for line in written:
        print(f"escalated {line['run_id']} ({line['age_h']} h open): {line['notified']}")
    return 0


def cmd_breakglass(args: argparse.Namespace) -> int:
    from knowngood import cli

    trail = cli._trail(args)
    return {"list": cmd_list, "sign": cmd_sign, "escalate": cmd_escalate}[args.command](args, trail)


def add_parser(sub: argparse._SubParsersAction) -> None:
    bg = sub.add_parser(
        "breakglass",
        help="open break-glass runs: list, sign after the fact, escalate",
        description="knowngood breakglass list [--json] [--all] | sign RUN_ID --key K --signer "
        "NAME | escalate [--after HOURS] [-i INVENTORY]",
    )
    bg.add_argument("--audit-dir", default="")
    bg_sub = bg.add_subparsers(dest="command", required=True)
    listing = bg_sub.add_parser("list", help="open (unsigned or partly signed) break-glass runs")
    listing.add_argument("--json", action="store_true")
    listing.add_argument("--all", action="store_true", help="closed ones too")
    sign = bg_sub.add_parser(
        "sign", help="sign a break-glass run post hoc; closes it when complete"
    )
    sign.add_argument("run_id")
    sign.add_argument("--key", required=True, help="your SSH private key (as for approve)")
    sign.add_argument("--signer", required=True, help="your name in the policy's approvers")
    esc = bg_sub.add_parser(
        "escalate", help="tell the contacts of break-glass runs unsigned past the limit (cron)"
    )
    esc.add_argument(
        "--after", type=float, default=None, help="hours (default: the policy's, 24); only sooner"
    )
    esc.add_argument("-i", "--inventory", default="", help="contacts and channels (default: lab)")
    esc.add_argument("-e", "--extra-vars", action="append", default=[])
    esc.add_argument("--json", action="store_true")
    bg.set_defaults(func=cmd_breakglass)
