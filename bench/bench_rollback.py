"""Rollback benchmark: the rollback runbook beside a plain shell loop and a no-op playbook.

For each host count, on a lab of its own: deploy v1 then v1.1, then per repeat measure under a
load client polling the load balancer
  - the runbook: ansible-playbook playbooks/rollback-code.yml (v1.1 -> v1),
  - the floor: bench/floor_rollback.sh doing only the swaps and reloads (v1.1 -> v1),
  - Ansible's fixed overhead: a one-task playbook on the same inventory and ansible.cfg,
putting the lab back on v1.1 between runs by the same means. Time to mitigate (TTM) runs from
process start until every host's latest response through the load balancer names the target.

    .venv/bin/python bench/bench_rollback.py --hosts 3,10,30 --repeat 3

Writes a table to stdout, bench/results/rollback-<timestamp>.json and bench/results/rollback.svg.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import http.client
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FLOOR_SCRIPT = REPO / "bench" / "floor_rollback.sh"
RESULTS_DIR = REPO / "bench" / "results"
FROM_RELEASE = "v1.1"
TARGET_RELEASE = "v1"
# Bare Ansistrano rollback of the same 10 local hosts, timed by hand on this machine in the
# hour issue 16 measured the runbook at 8.06 s (bench/README.md#ansistrano says how). No
# package registry reachable here offers Ansistrano's roles (PyPI, npm and Debian have none;
# Galaxy and GitHub are out of reach), so the bench cannot run it beside the runbook: it is
# quoted, with the floor and the no-op playbook measured in the same run as the anchors.
ANSISTRANO_REFERENCE = {10: 16.0}
# Issue 16: time to mitigate at 10 hosts at most 0.25x a bare Ansistrano rollback, and at 30
# hosts under 2x the 10-host figure.
GOAL_RATIO_TO_ANSISTRANO = 0.25
GOAL_TTM_AT_10 = GOAL_RATIO_TO_ANSISTRANO * ANSISTRANO_REFERENCE[10]
GOAL_30_OVER_10 = 2.0
NOOP_PLAYBOOK = """\
- name: Ansible's fixed overhead on this inventory
  hosts: app
  gather_facts: false
  tasks:
    - name: Reach every host once
      ansible.builtin.ping:
"""
SETUP_GATE = {"code_verify_max_p95_ms": 2000}
STARTED = time.monotonic()
BENCH_LOCK = Path("/tmp/knowngood-bench.lock")


class BenchError(Exception):
    """A step of the benchmark failed; the message says which and where its log is."""


def progress(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:7.1f}s] {message}", flush=True)


# ------------------------------------------------------------------ lab


@dataclass
class BenchLab:
    hosts: int
    base_port: int
    root: Path
    logs: Path
    ssh: bool = False
    status: dict = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
                "KNOWNGOOD_LAB_DIR": str(self.root),
                "KNOWNGOOD_AUDIT_DIR": str(self.root / "audit"),
                "ANSIBLE_FORCE_COLOR": "0",
                "ANSIBLE_NOCOLOR": "1",
                "PATH": f"{BIN}:{env.get('PATH', '')}",
            }
        )
        env.pop("KNOWNGOOD_RUN_ID", None)
        return env

    def knowngood(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "knowngood"), "--root", str(self.root), *args],
            cwd=REPO,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=900,
        )

    def up(self) -> None:
        for stale in sorted(Path("/tmp").glob("knowngood-bench-*/lab.json")):
            # Every bench lab uses the same ports, so one left behind by a crash is in the way.
            progress(f"hosts={self.hosts}: removing a bench lab left behind in {stale.parent}")
            stale_lab = BenchLab(self.hosts, self.base_port, stale.parent, self.logs)
            stale_lab.knowngood("lab", "down")
        busy = [p for p in lab_ports(self.base_port) if port_in_use(p)]
        if busy:
            raise BenchError(f"ports {busy} are in use: pick another --base-port")
        mode = ", hosts over SSH" if self.ssh else ""
        progress(f"hosts={self.hosts}: lab up in {self.root} (base port {self.base_port}{mode})")
        argv = ["lab", "up", "--hosts", str(self.hosts), "--base-port", str(self.base_port)]
        done = self.knowngood(*argv, *(["--ssh"] if self.ssh else []))
        if done.returncode != 0:
            raise BenchError(f"lab up failed:\n{done.stdout}{done.stderr}")
        self.status = json.loads(self.knowngood("lab", "status", "--json").stdout)

    def down(self) -> None:
        progress(f"hosts={self.hosts}: lab down")
        self.knowngood("lab", "down")

    @property
    def lb_url(self) -> str:
        return self.status["lb_url"]

    @property
    def audit_dir(self) -> Path:
        return self.root / "audit"

    def playbook_argv(self, playbook: str | Path, extra: dict | None = None) -> list[str]:
        argv = [str(BIN / "ansible-playbook"), "-i", self.status["inventory"], str(playbook)]
        if extra:
            argv += ["-e", json.dumps(extra)]
        return argv

    def run_logged(self, argv: list[str], log: Path) -> int:
        with open(log, "w") as out:
            return subprocess.run(
                argv, cwd=REPO, env=self.env(), stdout=out, stderr=subprocess.STDOUT, timeout=900
            ).returncode

    def deploy(self, release: str) -> None:
        progress(f"hosts={self.hosts}: deploy {release}")
        log = self.logs / f"deploy-{release}-{time.strftime('%H%M%S')}.log"
        # Deploys only set the stage: a latency gate tripped by a busy machine would mark the
        # release bad and end the benchmark, so theirs is loose. Measured runs keep the defaults.
        extra = {"release_id": release, "code_deploy_serial": ["100%"], **SETUP_GATE}
        argv = self.playbook_argv("playbooks/deploy-code.yml", extra)
        if self.run_logged(argv, log) != 0:
            raise BenchError(f"deploy of {release} failed, see {log}:\n{failures(log)}")

    def live_instances(self) -> list[tuple[str, str, str]]:
        """(deploy root, pidfile, url) of each host's instance serving the live slot."""
        out = []
        for index, host in enumerate(self.status["hosts"]):
            pool = Path(os.readlink(Path(host["root"]) / "current")).name
            pidfile = self.root / "run" / f"app{index + 1}-{pool}.pid"
            out.append((host["root"], str(pidfile), host["app_urls"][pool]))
        return out

    def floor_argv(self, release: str) -> list[str]:
        argv = ["bash", str(FLOOR_SCRIPT), release]
        for instance in self.live_instances():
            argv += list(instance)
        return argv


def lab_ports(base: int) -> list[int]:
    """Listening ports of a lab (see LabConfig), without the app instances' range."""
    offsets = (70, 80, 90, 100, 432, 433, 500, 501, 511, 520, 521, 531)
    return [base + offset for offset in offsets]


@contextlib.contextmanager
def only_bench_running():
    """One benchmark at a time: every bench lab uses the same ports, and two runs sharing the
    CPUs would each measure the other."""
    with open(BENCH_LOCK, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise BenchError(
                f"another benchmark is running (pid {lock.read().strip() or '?'}); "
                "wait for it to finish"
            ) from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def failures(path: Path, lines: int = 12) -> str:
    """The lines of a playbook log that say what failed, else its tail."""
    text = path.read_text(errors="replace").splitlines()
    found = [line for line in text if line.startswith(("fatal:", "failed:", "ERROR", "[ERROR]"))]
    return "\n".join((found or text)[-lines:])


# ------------------------------------------------------------------ load client and poller


@dataclass
class Sample:
    sent: float  # monotonic
    done: float  # monotonic
    code: int | None  # None: connection error
    release: str | None
    host: str | None


class LbClient:
    """Threads hitting the load balancer at a fixed total rate, recording every response.

    Poll threads ask /version so that every upstream is sampled often; load threads ask / (the
    application page). Both feed time to mitigate and the failure count. Bounded by max_seconds
    and max_requests even if nobody stops it; loopback only.
    """

    def __init__(
        self,
        lb_url: str,
        poll_rate: float,
        poll_threads: int,
        load_rate: float,
        load_threads: int,
        max_seconds: float = 300,
        max_requests: int = 500_000,
    ) -> None:
        parsed = urllib.parse.urlsplit(lb_url)
        if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise BenchError(f"the load client only runs on loopback, not {lb_url}")
        self.address = (parsed.hostname, parsed.port or 80)
        self.plan = [("/version", poll_rate / poll_threads)] * poll_threads + [
            ("/", load_rate / load_threads)
        ] * load_threads
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def _worker(self, path: str, rate: float, offset: float) -> None:
        deadline = time.monotonic() + self.max_seconds
        interval = 1.0 / rate
        conn = http.client.HTTPConnection(*self.address, timeout=5)
        next_at = time.monotonic() + offset * interval
        while not self._stop.is_set() and len(self.samples) < self.max_requests:
            now = time.monotonic()
            if now > deadline:
                break
            if next_at > now:
                time.sleep(next_at - now)
            next_at = max(next_at + interval, time.monotonic() - interval)
            sent = time.monotonic()
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                sample = Sample(
                    sent,
                    time.monotonic(),
                    resp.status,
                    resp.getheader("X-Release"),
                    resp.getheader("X-Host") or upstream_of(resp.getheader("X-Upstream")),
                )
            except (OSError, http.client.HTTPException):
                conn.close()
                sample = Sample(sent, time.monotonic(), None, None, None)
            self.samples.append(sample)
        conn.close()

    def __enter__(self) -> LbClient:
        for index, (path, rate) in enumerate(self.plan):
            worker = threading.Thread(
                target=self._worker, args=(path, rate, index / len(self.plan)), daemon=True
            )
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=10)

    def latest(self) -> dict[str, str | None]:
        """Release of each upstream's latest answered request, in completion order."""
        latest: dict[str, str | None] = {}
        for sample in sorted(list(self.samples), key=lambda s: s.done):
            if sample.host:
                latest[sample.host] = sample.release
        return latest


def upstream_of(header: str | None) -> str | None:
    # nginx lists every upstream it tried ("a, b"); the answer came from the last one.
    return header.split(",")[-1].strip() if header else None


@dataclass
class Measurement:
    kind: str
    rc: int
    wall_s: float
    ttm_s: float | None
    failed: int
    requests: int
    poll_rate_rps: float
    per_host_interval_ms: float
    max_host_gap_ms: float | None
    regressed_after_mitigation: int
    started_epoch: float
    loadavg_1m: float = 0.0
    error: str | None = None
    audit: dict | None = None


def analyse(
    kind: str,
    samples: list[Sample],
    t0: float,
    t_exit: float,
    t_end: float,
    hosts: int,
    target: str | None,
) -> Measurement:
    """TTM, failures and sampling rate of one run from the client's samples."""
    window = [s for s in samples if t0 <= s.sent <= t_end]
    failed = sum(1 for s in window if s.code is None or s.code >= 500)
    span = max(t_end - t0, 1e-9)
    rate = len(window) / span
    latest: dict[str, str | None] = {}
    last_seen: dict[str, float] = {}
    ttm = None
    max_gap = 0.0
    regressed = 0
    for sample in sorted(samples, key=lambda s: s.done):
        if sample.host is None:
            continue
        if t0 <= sample.done and ttm is None:
            gap = sample.done - last_seen.get(sample.host, t0)
            max_gap = max(max_gap, gap)
        last_seen[sample.host] = sample.done
        latest[sample.host] = sample.release
        if target is None or sample.done < t0:
            continue
        if ttm is None:
            if len(latest) >= hosts and all(r == target for r in latest.values()):
                ttm = sample.done - t0
        elif sample.release != target and sample.done <= t_end:
            regressed += 1
    return Measurement(
        kind=kind,
        rc=0,
        wall_s=round(t_exit - t0, 3),
        ttm_s=None if ttm is None else round(ttm, 3),
        failed=failed,
        requests=len(window),
        poll_rate_rps=round(rate, 1),
        per_host_interval_ms=round(1000 * hosts / rate, 1) if rate else float("inf"),
        max_host_gap_ms=round(1000 * max_gap, 1) if target else None,
        regressed_after_mitigation=regressed,
        started_epoch=0.0,
    )


@dataclass
class ClientPlan:
    poll_rate: float
    poll_threads: int
    load_rate: float
    load_threads: int

    def client(self, lb_url: str) -> LbClient:
        return LbClient(
            lb_url, self.poll_rate, self.poll_threads, self.load_rate, self.load_threads
        )


def measure(
    lab: BenchLab,
    kind: str,
    argv: list[str],
    plan: ClientPlan,
    target: str | None,
    log: Path,
) -> Measurement:
    """Run argv under the load client; TTM counts from process start."""
    with plan.client(lab.lb_url) as client:
        warm_deadline = time.monotonic() + 10
        while time.monotonic() < warm_deadline:
            latest = client.latest()
            if len(latest) >= lab.hosts and target not in latest.values():
                break
            time.sleep(0.05)
        else:
            raise BenchError(f"{kind}: the poller did not see every host off {target} first")
        audit_before = set(lab.audit_dir.glob("*.json")) if lab.audit_dir.exists() else set()
        load_at_start = os.getloadavg()[0]
        with open(log, "w") as out:
            t0_epoch = time.time()
            t0 = time.monotonic()
            proc = subprocess.Popen(
                argv, cwd=REPO, env=lab.env(), stdout=out, stderr=subprocess.STDOUT
            )
            rc = proc.wait(timeout=900)
            t_exit = time.monotonic()
        # Keep polling a little after exit: a run may exit before the fleet serves the target.
        settle_deadline = t_exit + (10 if target else 0.3)
        while time.monotonic() < settle_deadline:
            latest = client.latest()
            if target and len(latest) >= lab.hosts and set(latest.values()) == {target}:
                break
            time.sleep(0.05)
        time.sleep(0.3)
        t_end = time.monotonic()
    result = analyse(kind, client.samples, t0, t_exit, t_end, lab.hosts, target)
    result.rc = rc
    result.started_epoch = t0_epoch
    result.loadavg_1m = round(load_at_start, 2)
    # The run's closed record, <run_id>.json: not <run_id>.open.json, the opening the callback
    # also leaves in the trail (no events), which sorts after it.
    new_audit = [
        p
        for p in sorted(set(lab.audit_dir.glob("*.json")) - audit_before)
        if target and not p.name.endswith(".open.json")
    ]
    if new_audit:
        result.audit = json.loads(new_audit[-1].read_text())
    if rc != 0:
        result.error = f"exited {rc}, see {log}:\n{failures(log)}"
        if kind != "runbook":
            raise BenchError(f"{kind} {result.error}")
    return result


# ------------------------------------------------------------------ where the time goes


def epoch(ts: str) -> float:
    return (
        datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ")
        .replace(tzinfo=datetime.UTC)
        .timestamp()
    )


def breakdown(run: Measurement) -> dict:
    """Split the runbook's time to mitigate into its tasks, from the audit record.

    Each task's span runs from the end of the previous task to the end of its last host, so
    spans add up and include what Ansible does between tasks (queueing, templating, skipped
    tasks, which the audit record omits).
    """
    record = run.audit or {}
    t0 = run.started_epoch
    events = record.get("events", [])
    switched = [
        e["result"]["switched_at"] for e in events if e["result"].get("switched_at") is not None
    ]
    steps: list[dict] = []
    for event in events:
        end = epoch(event["ts"]) - t0
        if steps and steps[-1]["task"] == event["task"]:
            step = steps[-1]
            step["end"] = max(step["end"], end)
            step["hosts"] += 1
            step["module_s"] = max(step["module_s"], event["duration_s"])
        else:
            steps.append(
                {
                    "task": event["task"],
                    "action": event["action"],
                    "end": end,
                    "hosts": 1,
                    "module_s": event["duration_s"],
                }
            )
    previous = epoch(record["started_at"]) - t0 if "started_at" in record else 0.0
    startup = previous
    for step in steps:
        step["span_s"] = round(step["end"] - previous, 3)
        step["end"] = round(step["end"], 3)
        previous = max(previous, step["end"])
    switch_s = round(max(switched) - t0, 3) if switched else None
    return {
        "startup_s": round(startup, 3),
        "switch_first_s": round(min(switched) - t0, 3) if switched else None,
        "switch_last_s": switch_s,
        "ttm_s": run.ttm_s,
        "wall_s": run.wall_s,
        "steps": steps,
    }


def summarise_breakdowns(parts: list[dict]) -> dict:
    """Mean span per task over the repeats, split at the switch."""
    if not parts:
        return {}
    spans: dict[str, list[float]] = {}
    actions: dict[str, str] = {}
    before: dict[str, bool] = {}
    for part in parts:
        last = part["switch_last_s"] or 0
        for step in part["steps"]:
            spans.setdefault(step["task"], []).append(step["span_s"])
            actions[step["task"]] = step["action"]
            # the swap task ends after the switch but holds it: it counts as before
            before.setdefault(step["task"], step["end"] - step["span_s"] < last)
    ordered = [
        {
            "task": task,
            "action": actions[task],
            "mean_span_s": round(statistics.mean(values), 3),
            "before_switch": before[task],
        }
        for task, values in spans.items()
    ]
    return {
        "startup_s": round(statistics.mean(p["startup_s"] for p in parts), 3),
        "switch_last_s": median_of([p["switch_last_s"] for p in parts]),
        "switch_first_s": median_of([p["switch_first_s"] for p in parts]),
        "ttm_s": median_of([p["ttm_s"] for p in parts]),
        "tasks": ordered,
    }


def print_breakdown(hosts: int, summary: dict, top: int = 8) -> None:
    if not summary:
        return
    tasks = [t for t in summary["tasks"] if t["before_switch"]]
    print(f"\nhosts={hosts}: where the runbook's time to mitigate goes (mean over repeats)")
    print(
        f"  links swapped between {fmt(summary['switch_first_s'])}s and "
        f"{fmt(summary['switch_last_s'])}s after process start; the LB served "
        f"{TARGET_RELEASE} from every host at {fmt(summary['ttm_s'], 3)}s"
    )
    print(
        f"  {'ansible-playbook startup (until the audit callback loads)':<70} "
        f"{summary['startup_s']:5.2f}s"
    )
    for task in sorted(tasks, key=lambda t: -t["mean_span_s"])[:top]:
        name = task["task"].replace("knowngood.runbooks.", "")[:70]
        print(f"  {name:<70} {task['mean_span_s']:5.2f}s  {task['action']}")
    groups: dict[str, float] = {}
    for task in tasks:
        groups[task_kind(task["action"])] = (
            groups.get(task_kind(task["action"]), 0.0) + task["mean_span_s"]
        )
    counts = {kind: sum(1 for t in tasks if task_kind(t["action"]) == kind) for kind in groups}
    print(
        "  up to the end of the swap task (its span holds the reload and the wait): "
        + ", ".join(f"{counts[k]} {k} {v:.2f}s" for k, v in sorted(groups.items()))
    )


def task_kind(action: str) -> str:
    if action == "ansible.builtin.validate_argument_spec":
        return "argument-spec checks"
    if action.startswith("ansible.builtin.") or "." not in action:
        return "controller-side tasks"
    return "module tasks on the hosts"


# ------------------------------------------------------------------ one host count


def median_of(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def client_plan(hosts: int, per_host_hz: float, max_rate: float) -> ClientPlan:
    poll_rate = min(max(hosts * per_host_hz, 60.0), max_rate)
    return ClientPlan(
        poll_rate=poll_rate,
        poll_threads=max(4, round(poll_rate / 75)),
        load_rate=20.0,
        load_threads=2,
    )


def bench_hosts(hosts: int, base_port: int, args: argparse.Namespace, noop: Path) -> dict:
    logs = args.out / "logs" / f"{time.strftime('%Y%m%dT%H%M%S')}-{hosts}"
    logs.mkdir(parents=True, exist_ok=True)
    lab = BenchLab(hosts, base_port, Path(f"/tmp/knowngood-bench-{hosts}"), logs, args.ssh)
    plan = client_plan(hosts, args.poll_hz, args.max_poll_rate)
    runs: list[dict] = []
    try:
        lab.up()
        lab.deploy(TARGET_RELEASE)
        lab.deploy(FROM_RELEASE)
        rollback = lab.playbook_argv("playbooks/rollback-code.yml", {"rollback_reason": "bench"})
        for k in range(1, args.repeat + 1):
            tag = f"hosts={hosts} run {k}/{args.repeat}"
            if k > 1:
                lab.deploy(FROM_RELEASE)  # rolled-back now: deploy-code accepts it by name
            progress(f"{tag}: runbook rollback {FROM_RELEASE} -> {TARGET_RELEASE}")
            runbook = measure(
                lab, "runbook", rollback, plan, TARGET_RELEASE, logs / f"runbook-{k}.log"
            )
            report(tag, runbook)
            lab.deploy(FROM_RELEASE)
            progress(f"{tag}: floor (shell loop) {FROM_RELEASE} -> {TARGET_RELEASE}")
            floor = measure(
                lab,
                "floor",
                lab.floor_argv(TARGET_RELEASE),
                plan,
                TARGET_RELEASE,
                logs / f"floor-{k}.log",
            )
            report(tag, floor)
            progress(f"{tag}: floor back to {FROM_RELEASE}")
            if lab.run_logged(lab.floor_argv(FROM_RELEASE), logs / f"floor-back-{k}.log") != 0:
                raise BenchError(f"floor back to {FROM_RELEASE} failed, see {logs}")
            progress(f"{tag}: ansible no-op playbook")
            noop_run = measure(
                lab, "noop", lab.playbook_argv(noop), plan, None, logs / f"noop-{k}.log"
            )
            report(tag, noop_run)
            runs.append({"runbook": runbook, "floor": floor, "noop": noop_run})
    finally:
        if not args.keep_lab:
            lab.down()
    parts = [breakdown(r["runbook"]) for r in runs if r["runbook"].audit and not r["runbook"].rc]
    summary = summarise_breakdowns(parts)
    print_breakdown(hosts, summary)
    return {
        "hosts": hosts,
        "base_port": base_port,
        "ssh": args.ssh,
        "lab_root": str(lab.root),
        "client": asdict(plan),
        "median": medians(runs),
        "runs": [{k: strip_audit(v) for k, v in r.items()} for r in runs],
        "breakdown": summary,
        "breakdown_per_run": parts,
    }


def strip_audit(run: Measurement) -> dict:
    data = asdict(run)
    data.pop("audit")
    return data


def medians(runs: list[dict]) -> dict:
    out: dict = {}
    for kind in ("runbook", "floor", "noop"):
        every = [r[kind] for r in runs]
        items = [m for m in every if m.rc == 0]
        out[kind] = {
            "runs_ok": len(items),
            "runs": len(every),
            "wall_s": median_of([m.wall_s for m in items]),
            "ttm_s": median_of([m.ttm_s for m in items]),
            "failed_total": sum(m.failed for m in every),
            "requests_total": sum(m.requests for m in every),
            "poll_rate_rps": median_of([m.poll_rate_rps for m in items]),
            "per_host_interval_ms": median_of([m.per_host_interval_ms for m in items]),
        }
    rb, fl = out["runbook"]["ttm_s"], out["floor"]["ttm_s"]
    out["ratio_ttm"] = round(rb / fl, 1) if rb and fl else None
    return out


def report(tag: str, m: Measurement) -> None:
    if m.error:
        progress(f"{tag}: {m.kind} FAILED ({m.wall_s:.2f}s, failed requests {m.failed}): {m.error}")
        return
    ttm = "-" if m.ttm_s is None else f"{m.ttm_s:.2f}s"
    gap = "" if m.max_host_gap_ms is None else f", max gap per host {m.max_host_gap_ms:.0f}ms"
    progress(
        f"{tag}: {m.kind}: wall {m.wall_s:.2f}s, TTM {ttm}, failed {m.failed}/{m.requests}, "
        f"poll {m.poll_rate_rps:.0f} req/s (every host each {m.per_host_interval_ms:.0f}ms"
        f"{gap})"
    )


# ------------------------------------------------------------------ output


COLUMNS = (
    ("hosts", 5),
    ("runbook wall s", 14),
    ("runbook TTM s", 13),
    ("failed", 6),
    ("floor wall s", 12),
    ("floor TTM s", 11),
    ("floor failed", 12),
    ("ratio TTM", 9),
    ("ansible no-op wall s", 20),
    ("poll req/s", 10),
)


def ratio(value: float | None, anchor: float | None) -> str:
    return "-" if not value or not anchor else f"{value / anchor:.2f}x"


def ansistrano_roles() -> list[Path]:
    """Ansistrano's roles wherever Ansible would find them, if anything installed them."""
    places = [REPO / "roles", Path.home() / ".ansible" / "roles", Path("/usr/share/ansible/roles")]
    places += [Path("/etc/ansible/roles")]
    return sorted(p for place in places for p in place.glob("ansistrano*") if p.is_dir())


def ratios(results: list[dict], load: tuple[float, float]) -> str:
    """Every figure beside its anchor: the floor and the no-op playbook of the same run, the
    quoted Ansistrano rollback, and the scaling goals."""
    lines = [
        f"load average (1 min) at start {load[0]:.2f}, at end {load[1]:.2f}, "
        f"on {os.cpu_count()} CPUs",
        "hosts | runbook TTM s | / floor TTM | / no-op wall | runbook wall s | / no-op wall"
        " | failed",
    ]
    ttm = {}
    for res in results:
        m = res["median"]
        rb, fl, noop = m["runbook"], m["floor"], m["noop"]
        ttm[res["hosts"]] = rb["ttm_s"]
        lines.append(
            f"{res['hosts']:>5} | {fmt(rb['ttm_s']):>13} | {ratio(rb['ttm_s'], fl['ttm_s']):>11} | "
            f"{ratio(rb['ttm_s'], noop['wall_s']):>12} | {fmt(rb['wall_s']):>14} | "
            f"{ratio(rb['wall_s'], noop['wall_s']):>12} | {rb['failed_total']:>6}"
        )
    found = ansistrano_roles()
    if 10 in ttm and ttm[10]:
        anchor = ANSISTRANO_REFERENCE[10]
        verdict = "PASS" if ttm[10] / anchor <= GOAL_RATIO_TO_ANSISTRANO else "FAIL"
        lines.append(
            f"10 hosts: TTM {ttm[10]:.2f}s / bare Ansistrano rollback {anchor:.1f}s = "
            f"{ttm[10] / anchor:.2f}x (goal <= {GOAL_RATIO_TO_ANSISTRANO}x: {verdict}); "
            "Ansistrano quoted from issue 16's hand run (bench/README.md#ansistrano), "
            + (
                f"its roles are installed here ({', '.join(map(str, found))}) but not run by "
                "the bench"
                if found
                else "not run here: no reachable registry offers its roles"
            )
        )
    if ttm.get(10) and ttm.get(30):
        verdict = "PASS" if ttm[30] / ttm[10] < GOAL_30_OVER_10 else "FAIL"
        lines.append(
            f"30 hosts: TTM {ttm[30]:.2f}s / 10-host TTM {ttm[10]:.2f}s = {ttm[30] / ttm[10]:.2f}x "
            f"(goal < {GOAL_30_OVER_10}x: {verdict})"
        )
    counts = sorted(h for h, v in ttm.items() if v)
    if len(counts) >= 3:
        slopes = [(ttm[b] - ttm[a]) / (b - a) for a, b in zip(counts, counts[1:], strict=False)]
        lines.append(
            "cost per added host: "
            + ", ".join(
                f"{a}->{b} hosts {slope * 1000:.0f} ms"
                for (a, b), slope in zip(zip(counts, counts[1:], strict=False), slopes, strict=True)
            )
            + " (a linear cost gives about the same figure in each range)"
        )
    return "\n".join(lines)


def fmt(value: float | int | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table(results: list[dict], repeat: int) -> str:
    header = " | ".join(f"{name:>{width}}" for name, width in COLUMNS)
    lines = [header, "-" * len(header)]
    for res in results:
        m = res["median"]
        cells = (
            res["hosts"],
            fmt(m["runbook"]["wall_s"]),
            fmt(m["runbook"]["ttm_s"]),
            m["runbook"]["failed_total"],
            fmt(m["floor"]["wall_s"]),
            fmt(m["floor"]["ttm_s"]),
            m["floor"]["failed_total"],
            "-" if m["ratio_ttm"] is None else f"{m['ratio_ttm']}x",
            fmt(m["noop"]["wall_s"]),
            fmt(m["runbook"]["poll_rate_rps"], 0),
        )
        lines.append(
            " | ".join(f"{str(c):>{width}}" for c, (_, width) in zip(cells, COLUMNS, strict=True))
        )
    for res in results:
        bad = res["median"]["runbook"]["runs"] - res["median"]["runbook"]["runs_ok"]
        if bad:
            lines.append(
                f"hosts={res['hosts']}: {bad} runbook run(s) failed, left out of the times"
            )
    if any(res.get("ssh") for res in results):
        lines.append("hosts reached over SSH (lab up --ssh); the floor works on the files directly")
    lines.append(
        f"times: median of {repeat}; failed: 5xx or connection errors summed over the {repeat} "
        f"runs; TTM: process start until every host answers {TARGET_RELEASE} through the LB"
    )
    return "\n".join(lines)


TTM_SERIES = (
    # (label, kind, metric, colour)
    ("runbook", "runbook", "ttm_s", "#d62728"),
    ("floor (shell loop)", "floor", "ttm_s", "#1f77b4"),
    # Startup plus one module round on every host: about the least any playbook can mitigate in.
    ("ansible no-op", "noop", "wall_s", "#7f7f7f"),
)
WALL_SERIES = (
    ("runbook", "runbook", "wall_s", "#d62728"),
    ("floor (shell loop)", "floor", "wall_s", "#1f77b4"),
    ("ansible no-op", "noop", "wall_s", "#7f7f7f"),
)
PANEL_W, PANEL_H, MARGIN_TOP = 420, 330, 80


def svg_panel(
    results: list[dict],
    series: tuple,
    title: str,
    x0: float,
    lines: list[tuple[dict[int, float], str, str]],
) -> list[str]:
    """One bar panel: groups per host count; lines are (value per host count, colour, dash)."""
    left, bottom = 50, 40
    plot_w, plot_h = PANEL_W - left - 10, PANEL_H - bottom
    top = MARGIN_TOP
    values = [res["median"][kind][metric] or 0 for res in results for _, kind, metric, _ in series]
    refs = [v for per_hosts, _, _ in lines for h, v in per_hosts.items() if h in hosts_of(results)]
    vmax = max([*values, *refs, 0.5]) * 1.15
    step = nice_step(vmax)

    def y(v: float) -> float:
        return top + plot_h - plot_h * v / vmax

    x_left = x0 + left
    out = [f'<text x="{x_left}" y="{top - 14}" font-size="14" font-weight="bold">{title}</text>']
    tick = 0.0
    while tick <= vmax:
        out.append(
            f'<line x1="{x_left}" x2="{x_left + plot_w}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" '
            f'stroke="#e5e5e5"/><text x="{x_left - 6}" y="{y(tick) + 4:.1f}" '
            f'text-anchor="end">{tick:g}</text>'
        )
        tick = round(tick + step, 6)
    group_w = plot_w / max(len(results), 1)
    bar_w = min(40.0, group_w * 0.75 / len(series))
    for gi, res in enumerate(results):
        gx = x_left + gi * group_w + (group_w - bar_w * len(series)) / 2
        for si, (_, kind, metric, colour) in enumerate(series):
            value = res["median"][kind][metric]
            if value is None:
                continue
            x = gx + si * bar_w
            label = f"{value:.2f}" if value < 1 else f"{value:.1f}"
            out.append(
                f'<rect x="{x:.1f}" y="{y(value):.1f}" width="{bar_w - 3:.1f}" '
                f'height="{y(0) - y(value):.1f}" fill="{colour}"/>'
                f'<text x="{x + (bar_w - 3) / 2:.1f}" y="{y(value) - 4:.1f}" font-size="10" '
                f'text-anchor="middle">{label}</text>'
            )
        for per_hosts, colour, dash in lines:
            if res["hosts"] in per_hosts:
                ly = y(per_hosts[res["hosts"]])
                out.append(
                    f'<line x1="{gx - 8:.1f}" x2="{gx + bar_w * len(series) + 5:.1f}" '
                    f'y1="{ly:.1f}" y2="{ly:.1f}" stroke="{colour}" stroke-width="2" '
                    f'stroke-dasharray="{dash}"/>'
                )
        out.append(
            f'<text x="{x_left + gi * group_w + group_w / 2:.1f}" y="{top + plot_h + 20}" '
            f'text-anchor="middle" font-weight="bold">{res["hosts"]} hosts</text>'
        )
    out.append(
        f'<line x1="{x_left}" x2="{x_left}" y1="{top}" y2="{top + plot_h}" stroke="#333"/>'
        f'<line x1="{x_left}" x2="{x_left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" '
        f'stroke="#333"/>'
    )
    return out


def hosts_of(results: list[dict]) -> set[int]:
    return {res["hosts"] for res in results}


def svg_chart(results: list[dict], title: str, subtitle: str) -> str:
    """Two panels, time to mitigate and wall time, with the goal and the Ansistrano reference."""
    legend_w = 210
    width, height = 2 * PANEL_W + legend_w + 20, MARGIN_TOP + PANEL_H + 20
    goal = ({10: GOAL_TTM_AT_10}, "#2ca02c", "6 4")
    ansistrano = (ANSISTRANO_REFERENCE, "#ff7f0e", "2 3")
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="20" y="26" font-size="16" font-weight="bold">{escape(title)}</text>',
        f'<text x="20" y="44" fill="#555">{escape(subtitle)}</text>',
    ]
    out += svg_panel(results, TTM_SERIES, "Time to mitigate (s; no-op: its wall time)", 0, [goal])
    out += svg_panel(results, WALL_SERIES, "Wall time (s)", PANEL_W, [ansistrano])
    lx, ly = 2 * PANEL_W + 20, MARGIN_TOP + 10
    for i, (label, _, _, colour) in enumerate(WALL_SERIES):
        out.append(
            f'<rect x="{lx}" y="{ly + 20 * i}" width="12" height="12" fill="{colour}"/>'
            f'<text x="{lx + 18}" y="{ly + 20 * i + 10}">{label}</text>'
        )
    ly += 20 * len(WALL_SERIES) + 10
    for i, ((_, colour, dash), label) in enumerate(
        (
            (goal, f"goal: TTM at 10 hosts <= {GOAL_RATIO_TO_ANSISTRANO}x Ansistrano"),
            (ansistrano, "bare Ansistrano rollback (issue 16)"),
        )
    ):
        out.append(
            f'<line x1="{lx}" x2="{lx + 12}" y1="{ly + 20 * i + 6}" y2="{ly + 20 * i + 6}" '
            f'stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>'
            f'<text x="{lx + 18}" y="{ly + 20 * i + 10}">{label}</text>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def chart_for(documents: list[dict]) -> str:
    """The chart of one or more results files; a later file's host count wins."""
    by_hosts = {res["hosts"]: res for doc in documents for res in doc["results"]}
    results = [by_hosts[h] for h in sorted(by_hosts)]
    first = documents[0]
    failed = {
        kind: sum(res["median"][kind]["failed_total"] for res in results)
        for kind in ("runbook", "floor")
    }
    runs = ", ".join(f"{r['hosts']} hosts: {len(r['runs'])}" for r in results)
    if any(r.get("ssh") for r in results):
        runs += "; hosts over SSH"
    return svg_chart(
        results,
        f"knowngood rollback {first['from_release']} -> {first['target_release']}: "
        "runbook vs shell loop vs Ansible no-op",
        f"medians (runs per host count {runs}), {first['machine']['cpus']} CPUs, "
        f"{' + '.join(d['started'] for d in documents)}; failed requests: runbook "
        f"{failed['runbook']}, floor {failed['floor']}",
    )


def nice_step(vmax: float) -> float:
    for candidate in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50):
        if vmax / candidate <= 8:
            return float(candidate)
    return 100.0


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def machine() -> dict:
    ansible = subprocess.run(
        [str(BIN / "ansible-playbook"), "--version"], capture_output=True, text=True
    ).stdout.splitlines()
    git = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "roles", "playbooks", "plugins"],
        capture_output=True,
        text=True,
    ).stdout.split("\n")
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        # What was measured: the commit, and the runbook files changed on top of it.
        "git_head": head,
        "git_changed": sorted(line[3:] for line in git if line.strip()),
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "ansible": ansible[0] if ansible else None,
        "platform": platform.platform(),
    }


# ------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", default="3,10,30", help="host counts, comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="runs per host count (median)")
    parser.add_argument(
        "--base-port",
        type=int,
        default=20000,
        # One lab at a time, all on the same ports: below Linux's ephemeral range (32768 and up,
        # where an outgoing connection can hold a port a lab then fails to bind) and clear of
        # the dev and test labs (25000, 27000, 28000, 31000).
        help="base port of the bench labs (default keeps every lab port below 32768)",
    )
    parser.add_argument(
        "--poll-hz",
        type=float,
        default=20,
        help="target samples per second of each host through the LB",
    )
    parser.add_argument(
        "--max-poll-rate",
        type=float,
        default=500,
        help="cap on the poller's total requests per second",
    )
    parser.add_argument("--keep-lab", action="store_true", help="leave the labs up")
    parser.add_argument(
        "--ssh",
        action="store_true",
        help="reach the lab's hosts over SSH (one sshd each on 127.0.1.x) instead of the local "
        "connection, as a real fleet is; needs the SSH test lab to be down",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--chart",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="only redraw rollback.svg from results files (merged by host count)",
    )
    args = parser.parse_args(argv)
    args.host_counts = [int(h) for h in args.hosts.split(",") if h.strip()]
    if not args.host_counts or min(args.host_counts) < 1 or args.repeat < 1:
        parser.error("--hosts needs positive host counts and --repeat at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("curl", "bash"):
        if shutil.which(tool) is None:
            print(f"bench needs {tool}", file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if args.chart:
        documents = [json.loads(path.read_text()) for path in args.chart]
        (args.out / "rollback.svg").write_text(chart_for(documents))
        print(f"wrote {args.out / 'rollback.svg'}")
        return 0
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    info = machine()
    progress(
        f"bench: hosts {args.host_counts}, {args.repeat} runs each, {info['cpus']} CPUs, "
        f"load average {info['loadavg_at_start'][0]:.2f}"
    )
    results = []
    try:
        with only_bench_running(), tempfile.TemporaryDirectory(prefix="knowngood-bench-") as tmp:
            noop = Path(tmp) / "noop.yml"
            noop.write_text(NOOP_PLAYBOOK)
            for hosts in args.host_counts:
                results.append(bench_hosts(hosts, args.base_port, args, noop))
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        if not results:
            return 1
    info["loadavg_at_end"] = os.getloadavg()
    document = {
        "started": stamp,
        "machine": info,
        "repeat": args.repeat,
        "from_release": FROM_RELEASE,
        "target_release": TARGET_RELEASE,
        "goal": {
            "hosts": 10,
            "ttm_s": GOAL_TTM_AT_10,
            "ratio_to_ansistrano": GOAL_RATIO_TO_ANSISTRANO,
            "ttm_30_over_10_below": GOAL_30_OVER_10,
            "failed": 0,
        },
        "ansistrano_reference_s": ANSISTRANO_REFERENCE,
        "results": results,
    }
    json_path = args.out / f"rollback-{stamp}.json"
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    svg_path = args.out / "rollback.svg"
    svg_path.write_text(chart_for([document]))
    print()
    print(table(results, args.repeat))
    print()
    print(ratios(results, (info["loadavg_at_start"][0], info["loadavg_at_end"][0])))
    print(
        f"\nwrote {json_path.relative_to(REPO) if json_path.is_relative_to(REPO) else json_path}"
        f" and {svg_path}"
    )
    return 0 if len(results) == len(args.host_counts) else 1


if __name__ == "__main__":
    sys.exit(main())
