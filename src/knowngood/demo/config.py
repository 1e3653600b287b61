"""Configuration story (strategy 3.3): a broken nginx configuration is pushed, traffic fails,
and rollback-config.yml brings back the last known good under live traffic.

Told once the app serves a release (after the deploy story).
"""

from __future__ import annotations

import time

from knowngood.demo.story import run, sample_traffic, say
from knowngood.lab import faults
from knowngood.lab.config import LabConfig
from knowngood.traffic import Traffic


def story(cfg: LabConfig, lb: str) -> None:
    say("configuration: snapshot every host's managed configuration and mark it known-good")
    run(cfg, "snapshot-config", label="demo baseline", mark_known_good=True)

    say("a configuration push breaks nginx: the upstream now points where nothing listens")
    faults.break_nginx_config(cfg)
    sample_traffic(lb, "with the broken upstream")

    say("roll nginx back to the last known good configuration, under live traffic")
    with Traffic(lb + "/", threads=4) as traffic:
        time.sleep(0.5)
        started = time.monotonic()
        run(
            cfg,
            "rollback-config",
            services=["nginx"],
            rollback_reason="bad upstream pushed",
            ticket="INC-8",
        )
        finished = time.monotonic()
        time.sleep(1)
    after = [r for r in traffic.responses if r[0] > finished]
    failed_after = [r for r in after if r[1] is None or r[1] >= 500]
    during = [r for r in traffic.responses if started <= r[0] <= finished]
    print(
        f"    traffic during the rollback: {len(during)} requests, "
        f"{sum(1 for r in during if r[1] is None or r[1] >= 500)} failed (the break, until the "
        f"reload); after it: {len(after)} requests, {len(failed_after)} failed"
    )
    sample_traffic(lb, "after the configuration rollback")
