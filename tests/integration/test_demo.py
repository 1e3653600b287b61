"""`make demo` is a newcomer's first command: its stories run here, so a crash in one never
reaches main. The code story and the trail run in `make test`, on a lab seeded with what the
deploy story leaves; every story, each with the stories it needs, in `make test-extended`."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO, ansible_env


def tell(lab, stories: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "knowngood.demo", "--stories", stories, *args],
        cwd=REPO,
        env=ansible_env(lab.root),
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "UNEXPECTED" not in output and "Traceback" not in output, output[-4000:]
    assert "the audit trail" in output and "Stories told: " in output, output[-2000:]
    return output


def test_demo_code_story_rolls_back_under_traffic_and_prints_the_trail(lab):
    lab.seed("v1", "v1.1")  # what the deploy story leaves: v1 known-good, v1.1 live
    output = tell(lab, "code", "--only")
    assert output.split("Stories told: ")[1].startswith("code ")
    assert "rollback-code" in output and "(as expected)" in output
    assert "traffic during the rollback" in output
    assert "what happened: the release ledger of app1" in output
    assert lab.live_releases() == {"v1"}


@pytest.mark.extended
@pytest.mark.parametrize(
    "stories", ["code", "flag,config", "backups,database", "recovery", "governance"]
)
def test_demo_stories(lab, stories):
    output = tell(lab, stories)
    told = output.split("Stories told: ")[1]
    for name in stories.split(","):
        assert f"{name} " in told
