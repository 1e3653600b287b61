"""Code rollback story: v1.1 back to the last known-good release, under live traffic."""

from __future__ import annotations

import time

from knowngood.demo.story import run, say
from knowngood.lab.config import LabConfig
from knowngood.traffic import Traffic


def story(cfg: LabConfig, lb: str) -> None:
    say("incident: roll v1.1 back to the last known-good release, under live traffic")
    with Traffic(lb + "/") as traffic:
        time.sleep(0.5)
        run(cfg, "rollback-code", rollback_reason="checkout complaints after v1.1", ticket="INC-7")
        time.sleep(0.5)
    print("    traffic during the rollback: " + traffic.report())
