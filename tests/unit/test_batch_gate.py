"""The batch gate (plugins/filter/batch.py): the one judgement every changing step ends in."""

from __future__ import annotations

from ansible_collections.knowngood.runbooks.plugins.filter.batch import batch_failures


def test_only_refusing_hosts_of_the_batch_are_named_in_batch_order():
    hostvars = {
        "a": {"step": {"failed": True, "msg": "locked by run 7"}},
        "b": {"step": {"changed": True}},
        "c": {"step": {"failed": True, "msg": "no such release"}},
        "d": {},  # not reached by the step: it did not refuse
        "e": {"step": {"failed": True, "msg": "another batch"}},
    }
    got = batch_failures(["c", "b", "a", "d"], hostvars, "step")
    assert got == "c: no such release; a: locked by run 7; "
    assert batch_failures(["b", "d"], hostvars, "step") == ""


def test_a_probe_that_did_not_pass_refuses_with_its_breaches():
    hostvars = {
        "a": {"probe": {"passed": False, "breaches": ["p95 900 ms > 500 ms", "errors 3%"]}},
        "b": {"probe": {"failed": True, "passed": False, "msg": "connection refused"}},
        "c": {"probe": {"skipped": True}},
    }
    got = batch_failures(["a", "b", "c"], hostvars, "probe")
    assert got == "a: p95 900 ms > 500 ms, errors 3%; b: connection refused; "


def test_a_loop_of_commands_names_each_failed_item():
    long_output = "  " + "word " * 80
    hostvars = {
        "a": {
            "done": {
                "failed": True,
                "msg": "One or more items failed",
                "results": [
                    {
                        "item": {"action": "restart", "service": "nginx"},
                        "failed": True,
                        "rc": 1,
                        "stderr": long_output,
                    },
                    {"item": {"action": "reload", "service": "pg"}, "rc": 0, "stderr": ""},
                    {"item": {"action": "reload", "service": "app"}, "failed": True, "msg": "gone"},
                ],
            }
        },
    }
    got = batch_failures(["a"], hostvars, "done", item_keys=["action", "service"])
    cut = ("word " * 80).strip()[:297].rsplit(" ", 1)[0] + "..."
    assert got == f"a: restart nginx exited 1: {cut} reload app exited ?: gone ; "
