"""The incident report stands alone: built from the audit record, with Prometheus gone.

A real rollback-code run on the lab under load captures the error rate and p95 latency around
it into its record (through a Prometheus URL that carries a password, which never reaches the
record); the report then renders the same chart with Prometheus at a closed port, in a real
browser, with the section 7 headings, every host and what was done there, its post-incident
review (recorded in the same chain, which still verifies), and a failed run's failure first.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, REPO, TEST_LAB_ROOT, LoadClient, ansible_env, knowngood
from pngcheck import screenshot

pytestmark = pytest.mark.lab

SECTION7 = (
    "Incident Description",
    "Root Cause Analysis",
    "Rollback Procedure Used",
    "Impact Assessment",
    "Preventive Recommendations",
)


def run(*args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    done = subprocess.run(
        [str(BIN / "knowngood"), "--root", str(TEST_LAB_ROOT), *args],
        cwd=REPO,
        env=env or ansible_env(TEST_LAB_ROOT),
        capture_output=True,
        text=True,
        timeout=600,
    )
    path = done.stdout.rsplit("audit record:", 1)[1].strip().splitlines()[0]
    return done, json.loads(Path(path).read_text())


def closed_port() -> int:
    """A port in this lab's range that nothing listens on."""
    port = int(__import__("os").environ.get("KNOWNGOOD_TEST_BASE_PORT", "27000")) + 4400
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    return port


def render(run_id: str, fmt: str, out: Path, prometheus: str) -> str:
    made = knowngood("report", run_id, "--format", fmt, "-o", str(out), "--prometheus", prometheus)
    assert made.returncode == 0, made.stderr
    return out.read_text()


def test_report_renders_from_the_record_alone_with_prometheus_gone(lab, tmp_path):
    lab.seed("v1", "v1.1")
    prom = lab.status["prometheus_url"]
    env = ansible_env(TEST_LAB_ROOT)
    # basic auth in the URL: Prometheus ignores it, the record must never hold it
    env["KNOWNGOOD_PROMETHEUS_URL"] = prom.replace("http://", "http://ops:s3cr3t-pw@")
    env["KNOWNGOOD_METRICS_AFTER_S"] = "5"  # the service after the rollback, in the record too
    with LoadClient(lab.status["lb_url"] + "/", threads=2):
        time.sleep(6)  # traffic before the incident, as there would be: the "before" part
        done, record = run(
            "run", "rollback-code", "--quiet", "--ticket", "INC-77", "--reason",
            "v1.1 checkout errors", "-e", "release_id=v1", env=env,
        )  # fmt: skip
    assert done.returncode == 0, done.stdout
    assert lab.live_releases() == {"v1"}
    metrics = record["metrics"]
    assert "s3cr3t" not in json.dumps(record) and metrics["source"] == prom
    assert not metrics["errors"], metrics["errors"]
    # the load ran through the run: both series have points inside the captured window
    for name in ("error_ratio", "p95_ms"):
        points = metrics["series"][name]
        assert len(points) >= 5, (name, points)
        assert all(
            metrics["window"]["before"] <= t <= metrics["window"]["after"] for t, _ in points
        )
    assert max(v for _t, v in metrics["series"]["p95_ms"]) > 0
    window = metrics["window"]
    # the window, on whole milliseconds as Prometheus answers, covers 120 s before and 5 s after
    assert window["after"] - window["end"] >= 4.99
    assert 119.999 <= window["start"] - window["before"] <= 120.002
    assert any(t > window["end"] + 2 for t, _v in metrics["series"]["p95_ms"])
    # its post-incident review goes into the same signed, witnessed chain
    run_id, due = record["run_id"], time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86400))
    for step in (
        ("open", run_id, "--by", "carla", "--summary", "v1.1 broke checkout"),
        ("action", run_id, "gate on checkout errors", "--owner", "ivan", "--due", due),
        ("done", run_id, "A1", "--link", "roles/code_verify/defaults/main.yml"),
        ("close", run_id),
    ):
        reviewed = knowngood("review", *step)
        assert reviewed.returncode == 0, reviewed.stdout + reviewed.stderr
    # the record is sealed with the metrics in it, the review follows: the chain still checks
    verified = knowngood("audit", "verify")
    assert verified.returncode == 0 and "intact" in verified.stdout, verified.stdout

    gone = f"http://127.0.0.1:{closed_port()}"
    page = tmp_path / "gone.html"
    text = render(record["run_id"], "html", page, gone)
    live = render(record["run_id"], "html", tmp_path / "live.html", prom)
    polylines = re.findall(r'<polyline[^>]*points="([^"]+)"', text)
    assert len(polylines) >= 2 and polylines == re.findall(r'<polyline[^>]*points="([^"]+)"', live)
    assert "captured into the record" in text
    p95 = re.search(r"p95 latency: before (\d+) ms, during (\d+) ms, after (\d+) ms", text)
    assert p95, "before, during and after all measured"
    for heading in SECTION7:
        assert f"<h2>{heading}</h2>" in text
    assert "<h2>Failure</h2>" not in text  # a successful run has none
    assert "<td>gate on checkout errors</td><td>ivan</td>" in text  # the review's actions
    assert text.index("<h2>Timeline</h2>") < text.index("<h2>Rollback Procedure Used</h2>")
    # time axis: UTC HH:MM:SS ticks and titles
    assert "time (UTC, HH:MM:SS)" in text and "p95 latency (ms)" in text
    assert len(re.findall(r">\d\d:\d\d:\d\d</text>", text)) >= 3
    # every app host is listed with the tasks changed there, by phase
    hosts = dict(re.findall(r"<tr><td>(app\d|lb\d)</td><td>([^<]*)</td></tr>", text))
    assert {"app1", "app2", "app3"} <= set(hosts), hosts
    changed = {e["host"] for e in record["events"] if e["status"] == "changed"}
    for host in changed & set(hosts):
        assert ":" in hosts[host] and "nothing changed" not in hosts[host], hosts[host]
    assert "Data loss not measured" in text
    assert "<details><summary>" in text and text.rindex("<details>") > text.index(
        "<h2>Preventive Recommendations</h2>"
    )
    px = screenshot(page, tmp_path / "gone.png", "1000,2200")
    red = sum(1 for r, g, b in px if r > 180 and g < 90 and b < 90)
    blue = sum(1 for r, g, b in px if b > 150 and r < 90 and 90 < g < 150)
    assert red > 50 and blue > 50, (red, blue)

    md = render(record["run_id"], "md", tmp_path / "gone.md", gone)
    assert [h for h in SECTION7 if f"## {h}\n" in md] == list(SECTION7)
    assert md.index("<details>") > md.index("## Preventive Recommendations")
    review = md.split("## Post-incident Review\n", 1)[1].split("\n## ", 1)[0]
    assert "review opened by carla at " in review and ": v1.1 broke checkout" in review
    assert f"action A1: gate on checkout errors (owner ivan, due {due}): DONE by " in review
    assert ": roles/code_verify/defaults/main.yml (sha256 " in review
    assert "- review CLOSED by " in review


def test_failed_run_shows_its_failure_first(lab, tmp_path):
    lab.seed("v1", "v1.1")
    done, record = run(
        "run", "rollback-code", "--quiet", "--ticket", "INC-78", "-e", "release_id=v0.9",
        "-e", json.dumps({"smtp_password": "hunter2-secret"}),
    )  # fmt: skip
    assert done.returncode == 2, done.stdout
    assert lab.live_releases() == {"v1.1"}  # nothing rolled back
    failed = [e for e in record["events"] if e["status"] == "failed"]
    assert failed
    page = tmp_path / "failed.html"
    text = render(record["run_id"], "html", page, f"http://127.0.0.1:{closed_port()}")
    assert "hunter2-secret" not in text
    first = text.index("<h2>")
    assert text[first:].startswith("<h2>Failure</h2>")
    box = text[first : text.index("<h2>Incident Description</h2>")]
    msg = str(failed[0]["result"].get("msg"))[:60]
    assert failed[0]["host"] in box and msg and msg in box.replace("&#x27;", "'"), (box, msg)
    for heading in SECTION7:
        assert f"<h2>{heading}</h2>" in text
    px = screenshot(page, tmp_path / "failed.png", "1000,2200")
    assert sum(1 for r, g, b in px if r > 180 and g < 90 and b < 90) > 200  # the red failure box
    md = render(record["run_id"], "md", tmp_path / "failed.md", "")
    assert (
        md.split("\n## ", 1)[1].startswith("Failure") and failed[0]["host"] in md.split("\n## ")[1]
    )
