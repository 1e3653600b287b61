"""`knowngood review open|finding|action|done|close|list|nag`: post-incident reviews (§10).

The logic is the collection's module_utils/review.py; every step is an entry in the audit
chain, so `knowngood audit verify` vouches for the review like for the run it reviews.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import json
import time
from pathlib import Path

from knowngood import breakglass, collection, runner
from knowngood.errors import reported
from knowngood.modutils import module_utils


def _today() -> datetime.date:
    return datetime.datetime.now(datetime.UTC).date()


def _call(fn, *a, **kw):
    errors = (module_utils("review").ReviewError, module_utils("audit_chain").AuditError)
    return reported(errors, fn, *a, **kw)


def _entries(audit_dir: Path) -> list[dict]:
    """The audit chain's entries; none before the first run is recorded."""
    if not (audit_dir / "index.jsonl").exists():
        return []
    return module_utils("audit_chain").entries(str(audit_dir))


def state_of(audit_dir: Path, run_id: str) -> dict | None:
    """The run's review for the report, None when it has none."""
    return _call(module_utils("review").state, _entries(audit_dir), run_id, _today())


def link_text(link: dict) -> str:
    if link.get("kind") == "commit":
        return f"commit {link['commit'][:12]} ({link.get('subject', '')})"
    digest = f" (sha256 {link['sha256'][:12]})" if link.get("sha256") else ""
    return f"{link.get('path')}{digest}"


def item_text(action: dict) -> str:
    """One action item's state as the list, the report and the notices say it."""
    state = action["state"]
    if state == "done":
        links = "; ".join(link_text(x) for x in action.get("links") or [])
        return f"DONE by {action['done_by']} at {action['done_at']}: {links}"
    if state == "deferred":
        return "DEFERRED when the review was closed"
    text = (
        f"OVERDUE by {-action['days_left']} day(s)"
        if state == "overdue"
        else f"OPEN, due in {action['days_left']} day(s)"
    )
    if action.get("reminders"):
        text += f"; reminded {action['reminders']}x, last {action['last_reminded_at']}"
    return text


def _written(entry: dict, what: str) -> int:
    runner._warn_witness(entry)
    print(f"{what} (audit seq {entry['seq']})")
    return 0


def cmd_open(args: argparse.Namespace, trail: dict) -> int:
    rv = module_utils("review")
    entry = _call(
        rv.open_review, trail, args.run_id, args.by, args.summary, getpass.getuser(), _today()
    )
    return _written(entry, f"review of {args.run_id} opened by {entry['by']}")


def cmd_finding(args: argparse.Namespace, trail: dict) -> int:
    rv = module_utils("review")
    entry = _call(rv.add_finding, trail, args.run_id, args.text, getpass.getuser(), _today())
    return _written(entry, f"review of {args.run_id}: finding {entry['finding_id']} recorded")


def cmd_action(args: argparse.Namespace, trail: dict) -> int:
    rv = module_utils("review")
    entry = _call(
        rv.add_action,
        trail,
        args.run_id,
        args.text,
        args.owner,
        args.due,
        getpass.getuser(),
        _today(),
        args.id,
    )
    return _written(
        entry,
        f"review of {args.run_id}: action {entry['action_id']} for {entry['owner']}, "
        f"due {entry['due']}",
    )


def cmd_done(args: argparse.Namespace, trail: dict) -> int:
    rv = module_utils("review")
    entry = _call(
        rv.mark_done,
        trail,
        args.run_id,
        args.action_id,
        args.link,
        str(collection.root()),
        getpass.getuser(),
        _today(),
    )
    links = "; ".join(link_text(x) for x in entry["links"])
    return _written(entry, f"review of {args.run_id}: action {args.action_id} done: {links}")


def cmd_close(args: argparse.Namespace, trail: dict) -> int:
    rv = module_utils("review")
    entry = _call(rv.close, trail, args.run_id, getpass.getuser(), _today(), args.defer)
    deferred = f"; deferred {', '.join(entry['deferred'])}" if entry["deferred"] else ""
    return _written(
        entry, f"review of {args.run_id} CLOSED by {entry['by']} at {entry['at']}{deferred}"
    )


def cmd_list(args: argparse.Namespace, trail: dict) -> int:
    rv = module_utils("review")
    entries = _entries(Path(trail["audit_dir"]))
    today = _today()
    items = _call(rv.action_items, entries, today, only_open=args.open)
    if args.json:
        doc = {
            "audit_dir": trail["audit_dir"],
            "today": today.isoformat(),
            "actions": items,
            "reviews": _call(rv.reviews, entries, today),
        }
        print(json.dumps(doc, indent=2))
        return 0
    if not items:
        print(f"no {'open ' if args.open else ''}action items in {trail['audit_dir']}")
    for a in items:
        print(
            f"{a['run_id']} {a['id']}  {a['state'].upper():<8} due {a['due']}  owner "
            f"{a['owner']}: {a['text']}\n    {item_text(a)}"
        )
    return 0


def cmd_nag(args: argparse.Namespace, trail: dict) -> int:
    rv = module_utils("review")
    today = _today()

    def send(items: list[dict]) -> dict:
        due = [
            dict(
                item,
                says=item_text(item),
                done_with=f"knowngood review done {item['run_id']} {item['id']} --link <change>",
            )
            for item in items
        ]
        return breakglass.notify_run(
            args,
            trail,
            "review-nag",
            {"knowngood_review_due": due},
            "post-incident-review",
            f"{len(items)} post-incident action item(s) overdue or due within {args.within} day(s)",
        )

    written, _items = _call(
        rv.nag, trail, today, args.within, args.every, time.time(), send, getpass.getuser()
    )
    if args.json:
        print(json.dumps({"within_days": args.within, "nagged": written}, indent=2))
        return 0
    if not written:
        print(
            f"no action item due within {args.within} day(s) and not reminded in the last "
            f"{args.every:g} h"
        )
    for line in written:
        print(
            f"reminded {line['owner']} of {line['run_id']} {line['action_id']} "
            f"({line['state']}, due {line['due']}): {line['notified']}"
        )
    return 0


COMMANDS = {
    "open": cmd_open,
    "finding": cmd_finding,
    "action": cmd_action,
    "done": cmd_done,
    "close": cmd_close,
    "list": cmd_list,
    "nag": cmd_nag,
}


def cmd_review(args: argparse.Namespace) -> int:
    from knowngood import cli

    return COMMANDS[args.command](args, cli._trail(args))


def add_parser(sub: argparse._SubParsersAction) -> None:
    rv = sub.add_parser(
        "review",
        help="post-incident review of a run: findings, action items, what changed (strategy 10)",
        description="knowngood review open RUN_ID --by NAME | finding RUN_ID TEXT | action RUN_ID "
        "TEXT --owner X --due YYYY-MM-DD | done RUN_ID ACTION_ID --link PATH|COMMIT | close RUN_ID "
        "[--defer REASON] | list [--open] [--json] | nag [--json]",
    )
    rv.add_argument("--audit-dir", default="")
    rv_sub = rv.add_subparsers(dest="command", required=True)
    opened = rv_sub.add_parser("open", help="open the review of a recorded run")
    opened.add_argument("run_id")
    opened.add_argument("--by", required=True, help="who leads the review")
    opened.add_argument("--summary", default="")
    finding = rv_sub.add_parser("finding", help="record a finding")
    finding.add_argument("run_id")
    finding.add_argument("text")
    action = rv_sub.add_parser("action", help="record an action item with an owner and due date")
    action.add_argument("run_id")
    action.add_argument("text")
    action.add_argument("--owner", required=True, help="a name, an e-mail, a contact role")
    action.add_argument("--due", required=True, help="YYYY-MM-DD")
    action.add_argument("--id", default="", help="the action's id (default A1, A2, ...)")
    done = rv_sub.add_parser("done", help="mark an action done with what changed")
    done.add_argument("run_id")
    done.add_argument("action_id")
    done.add_argument(
        "--link",
        action="append",
        default=[],
        required=True,
        help="a path in the collection (runbook, role, its defaults, docs) or a git commit",
    )
    closing = rv_sub.add_parser("close", help="close the review (no action open, or --defer)")
    closing.add_argument("run_id")
    closing.add_argument("--defer", default="", metavar="REASON", help="defer the open actions")
    listing = rv_sub.add_parser("list", help="action items across runs, overdue first")
    listing.add_argument("--open", action="store_true", help="open and overdue ones only")
    listing.add_argument("--json", action="store_true")
    nag = rv_sub.add_parser(
        "nag", help="remind owners and contacts of overdue and near-due action items (cron)"
    )
    nag.add_argument("--within", type=int, default=3, help="days before the due date (3)")
    nag.add_argument("--every", type=float, default=24.0, help="hours between reminders (24)")
    nag.add_argument("-i", "--inventory", default="", help="contacts and channels (default: lab)")
    nag.add_argument("-e", "--extra-vars", action="append", default=[])
    nag.add_argument("--json", action="store_true")
    rv.set_defaults(func=cmd_review)
