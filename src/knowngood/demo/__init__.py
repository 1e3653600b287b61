"""`make demo`: the main story on the embedded lab, told with the same runbooks on-call uses.

deploy v1 -> deploy the bad v2 (its canary fails the health gate and is rolled back
automatically) -> deploy v1.1 -> an incident: roll back to the last known-good release
under live traffic -> a risky feature flag goes on and is rolled back by turning it off ->
a broken nginx configuration rolled back to the last known good -> print the ledger ->
backups: set up archiving to six locations, take a full backup, prove it by a real restore,
print the catalog -> database rollbacks: a bad DELETE undone in one table while
a later write elsewhere survives, then a PITR to the restore point a deploy made -> system
failure: app2 and the primary killed under traffic, recovered, RTO and RPO printed ->
governance: a decision, a request signed by the lab's CTO and Infrastructure Lead, the
rollback through `knowngood run` behind its gate, notices, `knowngood audit verify`, the HTML
incident report -> the audit trail.

Each part is a story (STORIES) that can be told on its own with what it needs:
`make demo STORIES=database` or `python -m knowngood.demo --stories flag,config`. The stories
are the modules beside this one; knowngood.demo.story holds what they share.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from knowngood.demo import backups, code, config, database, deploy, flag, governance, recovery
from knowngood.demo.story import say
from knowngood.lab import core
from knowngood.lab.config import DEFAULT_ROOT, LabConfig
from knowngood.modutils import module_utils

# Each story, in the order the demo tells them, with the stories it needs told first.
STORIES: dict[str, tuple[Callable[[LabConfig, str], object], tuple[str, ...]]] = {
    "deploy": (deploy.story, ()),
    "code": (code.story, ("deploy",)),
    "flag": (flag.story, ("deploy",)),
    "config": (config.story, ("deploy",)),
    "backups": (backups.story, ()),
    "database": (database.story, ("deploy", "backups")),
    "recovery": (recovery.story, ("deploy", "backups")),
    "governance": (governance.story, ()),
}


def plan(wanted: list[str]) -> list[str]:
    """The stories to tell for `wanted`, with what they need, in the demo's order."""
    unknown = sorted(set(wanted) - set(STORIES))
    if unknown:
        raise SystemExit(f"unknown stories: {', '.join(unknown)}; choose from {', '.join(STORIES)}")
    chosen: set[str] = set()
    todo = list(wanted)
    while todo:
        name = todo.pop()
        if name not in chosen:
            chosen.add(name)
            todo.extend(STORIES[name][1])
    return [name for name in STORIES if name in chosen]


def print_trail(cfg: LabConfig) -> None:
    """What happened: the release ledger of app1 and the newest audit records."""
    ledger = cfg.host_root(0) / ".knowngood" / "ledger.jsonl"
    if ledger.exists():
        say("what happened: the release ledger of app1")
        for line in ledger.read_text().splitlines():
            event = json.loads(line)
            print(
                f"    {event['ts']}  {event['release_id']:<5} {event['status']:<12} "
                f"{event.get('reason', '')} {event.get('ticket', '')}"
            )
    say(f"the audit trail ({cfg.root / 'audit'})")
    entries = module_utils("audit_chain").entries(str(cfg.root / "audit"))
    for line in module_utils("audit_record").run_lines(entries, last=6):
        print("    " + line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="knowngood.demo", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--stories",
        default=",".join(STORIES),
        help=f"comma-separated stories to tell (with what they need): {', '.join(STORIES)}",
    )
    parser.add_argument(
        "--only",
        action="store_true",
        help="tell exactly these stories: the lab already holds what they need",
    )
    args = parser.parse_args(argv)
    wanted = [name for name in args.stories.split(",") if name]
    stories = [name for name in plan(wanted) if name in wanted] if args.only else plan(wanted)
    root = Path(os.environ.get("KNOWNGOOD_LAB_DIR", str(DEFAULT_ROOT)))
    say(f"bringing up the lab in {root}")
    cfg = LabConfig.load(root) if (root / "lab.json").exists() else LabConfig(root=root)
    status = core.up(cfg, progress=lambda m: print("    " + m, flush=True))
    if not args.only:
        core.reset(cfg)
    lb = status["lb_url"]
    timings = []
    for name in stories:
        started = time.monotonic()
        STORIES[name][0](cfg, lb)
        timings.append(f"{name} {time.monotonic() - started:.0f}s")
    print_trail(cfg)
    print(f"\nStories told: {', '.join(timings)}")
    print("Drills with measured RTO/RPO: `make drill` (or `knowngood drill run primary_failover`).")
    print("The lab keeps running: `knowngood lab status`, `knowngood lab down` to remove it.")
    return 0
