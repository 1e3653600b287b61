"""The demo's stories: each can be told alone, with what it needs, in the demo's order."""

from __future__ import annotations

import pytest

from knowngood import demo


def test_the_whole_demo_tells_every_story_in_order():
    assert demo.plan(list(demo.STORIES)) == list(demo.STORIES)


def test_a_story_brings_what_it_needs_first():
    assert demo.plan(["database"]) == ["deploy", "backups", "database"]
    assert demo.plan(["config", "code"]) == ["deploy", "code", "config"]
    assert demo.plan(["governance"]) == ["governance"]


def test_every_need_is_a_story_told_before_it():
    order = list(demo.STORIES)
    for name, (_story, needs) in demo.STORIES.items():
        assert all(order.index(need) < order.index(name) for need in needs), name


def test_an_unknown_story_is_refused_naming_the_choices():
    with pytest.raises(SystemExit, match="unknown stories: nope; choose from deploy"):
        demo.plan(["nope"])
