"""Feature flag story: a risky code path goes on, errors follow, the flag goes off."""

from __future__ import annotations

from knowngood.demo.story import run, sample_traffic, say
from knowngood.lab.config import LabConfig


def story(cfg: LabConfig, lb: str) -> None:
    say("a risky code path behind a feature flag goes on, errors follow")
    run(
        cfg,
        "rollback-flag",
        flag="new_checkout",
        code_flag_enabled=True,
        rollback_reason="demo: switch the risky path on",
    )
    sample_traffic(lb, "with the flag on")

    say("the fastest rollback there is: turn the flag off")
    run(
        cfg,
        "rollback-flag",
        flag="new_checkout",
        rollback_reason="checkout errors 34%",
        ticket="INC-8",
    )
    sample_traffic(lb, "with the flag off")
