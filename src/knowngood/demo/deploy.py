"""Deploy story: v1 gradually, the bad v2 whose canary fails the gate, then the good v1.1."""

from __future__ import annotations

from knowngood.demo.story import run, say
from knowngood.lab.config import LabConfig


def story(cfg: LabConfig, lb: str) -> None:
    say("deploy v1, gradually: canary first, then half, then all, each batch behind a gate")
    run(cfg, "deploy-code", release_id="v1", ticket="CHG-1")

    say("deploy v2, which raises errors and latency: its canary must fail the gate")
    run(cfg, "deploy-code", expect_ok=False, release_id="v2", ticket="CHG-2")

    say("deploy v1.1 (good)")
    run(cfg, "deploy-code", release_id="v1.1", ticket="CHG-3")
