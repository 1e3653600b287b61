"""Configuration rollback (strategy 3.3) on the real lab: nginx behind traffic, PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils import config_snapshot as cs
from ansible_collections.knowngood.runbooks.plugins.module_utils import run_lock as rl
from conftest import LoadClient

pytestmark = pytest.mark.lab

BAD_UPSTREAM = "proxy_pass http://127.0.0.1:9/;"  # discard port: nothing listens


def hostvars(lab, host):
    inv = json.loads(Path(lab.inventory).with_suffix(".json").read_text())
    for group in inv["all"]["children"].values():
        if host in group.get("hosts", {}):
            return group["hosts"][host]
    raise KeyError(host)


def mark_live_known_good(lab, host):
    """What snapshot-config.yml -e mark_known_good=true leaves, without a playbook."""
    hv = hostvars(lab, host)
    store = cs.Store(hv["knowngood_config_store"])
    services = cs.normalize_services(hv["knowngood_config_services"])
    doc, _created = cs.take(store, services, host, "test baseline", "test", "test")
    if store.last_known_good() != doc["snapshot_id"]:
        store.mark_known_good(doc["snapshot_id"], "test", "test", "test baseline")
    return store, services, doc["snapshot_id"]


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def nginx_conf(lab):
    return lab.root / "nginx" / "nginx.conf"


def reload_nginx(lab):
    from knowngood.lab import nginx
    from knowngood.lab.config import LabConfig

    nginx.nginx_reload(LabConfig.load(lab.root))


def rollback(lab, *args, check=False, **extra):
    params = {"rollback_reason": "bad upstream after a config push", "ticket": "INC-7"}
    params.update(extra)
    return lab.playbook("rollback-config", *args, check=check, **params)


@pytest.fixture
def nginx_lab(lab):
    lab.seed("v1")
    store, services, good = mark_live_known_good(lab, "lb1")
    yield lab, store, good
    # The suite shares the lab: whatever a test broke, the generated nginx config comes back.
    lab.reset()


def test_broken_upstream_is_rolled_back_under_load_with_no_failures_after(nginx_lab):
    lab, store, good = nginx_lab
    conf = nginx_conf(lab)
    good_digest = digest(conf)
    conf.write_text(conf.read_text().replace("proxy_pass http://app_live;", BAD_UPSTREAM))
    reload_nginx(lab)

    check = rollback(lab, check=True, services=["nginx"])
    assert check.rc == 0, check.output[-3000:]
    assert digest(conf) != good_digest, "check mode wrote the file"
    assert f"-            {BAD_UPSTREAM}" in check.output
    assert "+            proxy_pass http://app_live;" in check.output
    # Check mode names the lock it would take, and takes none.
    assert "+rollback-config run " in check.output  # the lock's diff: who would hold it
    assert [m for m in lab.lock_messages() if m.startswith("would lock lb1 for rollback-config")]
    assert lab.locked_hosts() == []

    # A database rollback whose ansible-playbook was killed (its pid is gone, on this same
    # controller) left its lock on lb1: this run takes it over, with a warning it records.
    killed = subprocess.Popen(["true"])
    killed.wait()
    holder = rl.owner_record(
        "kg-killed", "rollback-database", killed.pid, socket.gethostname(), "oncall", "lb1"
    )
    rl.acquire(str(lab.lock_file("lb1")), holder, 3600)

    with LoadClient(lab.status["lb_url"] + "/", threads=4) as load:
        time.sleep(0.5)
        started = time.monotonic()
        run = rollback(lab, services=["nginx"])
        finished = time.monotonic()
        time.sleep(1.0)
    assert run.rc == 0, run.output[-3000:]
    assert digest(conf) == good_digest
    before = [r for r in load.responses if r[0] < started]
    after = [r for r in load.responses if r[0] > finished]
    assert before and all(r[1] is None or r[1] >= 500 for r in before), "the break did not show"
    assert len(after) > 20 and [r for r in after if r[1] is None or r[1] >= 500] == []
    assert "reload nginx" in run.output
    taken_over = "took over the stale lock of rollback-database run kg-killed"
    assert taken_over in run.output  # the warning
    assert [m for m in lab.lock_messages() if m.startswith(taken_over)]  # kept in the record
    assert lab.locked_hosts() == []  # given back after the successful run
    print(f"\nrevert playbook {finished - started:.1f}s; {load.report()}")

    again = rollback(lab, services=["nginx"])
    assert again.rc == 0, again.output[-3000:]
    assert again.changed() == 0, again.output[-3000:]
    assert store.last_known_good() == good


def test_target_that_fails_validation_is_refused_and_live_config_stays(nginx_lab):
    lab, store, good = nginx_lab
    conf = nginx_conf(lab)
    live = conf.read_text()
    hv = hostvars(lab, "lb1")
    services = cs.normalize_services(hv["knowngood_config_services"])
    conf.write_text(live.replace("worker_processes 2;", "worker_processes two;"))
    bad, _created = cs.take(store, services, "lb1", "typo", "test", "test")
    conf.write_text(live)
    live_digest = digest(conf)

    run = rollback(lab, config_snapshot_id=bad["snapshot_id"], services=["nginx"])
    assert run.rc != 0
    assert "candidate configuration fails validation, live configuration unchanged" in run.output
    assert "worker_processes" in run.output  # nginx -t names the problem
    assert digest(conf) == live_digest
    assert lab.lock_messages()[0].startswith("lock lb1 for rollback-config run")  # taken, then
    assert lab.locked_hosts() == []  # given back by the failed run
    with LoadClient(lab.status["lb_url"] + "/", threads=2) as load:
        time.sleep(0.5)
    assert load.responses and load.failed == []
    assert store.last_known_good() == good


def test_bad_inputs_are_refused_with_nothing_changed(nginx_lab):
    lab, store, good = nginx_lab
    conf = nginx_conf(lab)
    pools = lab.root / "nginx" / "pools"
    hv = hostvars(lab, "lb1")
    conf.write_text(conf.read_text() + "# drift\n")
    drifted = digest(conf)
    snapshots = set(os.listdir(store.path("snapshots")))

    def refused(expect, **extra):
        run = rollback(lab, config_rollback_hosts="lb1", **extra)
        assert run.rc != 0, run.output[-2000:]
        assert expect in run.output, run.output[-2000:]
        assert "nothing was changed" in run.output
        assert digest(conf) == drifted
        assert set(os.listdir(store.path("snapshots"))) == snapshots

    refused("unknown snapshot 0123456789abcdef", config_snapshot_id="0123456789abcdef")
    refused("is not a snapshot id", config_snapshot_id="../../etc/passwd")
    refused("rollback_reason is required", rollback_reason="")

    traversal = [dict(hv["knowngood_config_services"][0])]
    traversal[0]["paths"] = [str(pools) + "/../../../etc"]
    refused("path traversal is refused", knowngood_config_services=traversal)

    link = pools / "outside.conf"
    link.symlink_to("/etc/hostname")
    try:
        refused("outside the managed set: refused")
    finally:
        link.unlink()

    binary = pools / "latin1.conf"
    binary.write_bytes("# caf\u00e9\n".encode("latin-1"))
    try:
        refused("is not UTF-8 text")
    finally:
        binary.unlink()

    # A snapshot that db1 took, copied into lb1's store (e.g. a mixed-up restore of stores).
    db_store, _services, db_id = mark_live_known_good(lab, "db1")
    shutil.copy(db_store.path("snapshots", db_id + ".json"), store.path("snapshots"))
    snapshots.add(db_id + ".json")
    try:
        refused("was taken on host db1, not lb1", config_snapshot_id=db_id)
    finally:
        os.unlink(store.path("snapshots", db_id + ".json"))


def test_a_database_rollback_holding_db1_refuses_a_config_rollback_there(lab):
    """The lock a running rollback-database holds on db1 (its controller process alive) stops a
    rollback-config at its first change: refused naming the holder, nothing changed."""
    lab.seed("v1")
    store, services, good = mark_live_known_good(lab, "db1")
    managed = Path(services["postgresql"]["paths"][0])
    original = managed.read_bytes()
    managed.write_bytes(original + b"# drift a rollback would revert\n")
    drifted = digest(managed)
    snapshots = sorted(os.listdir(store.path("snapshots")))
    lock = lab.lock_file("db1")
    running = subprocess.Popen(["sleep", "60"])  # stands in for the database rollback's run
    try:
        holder = rl.owner_record(
            "kg-db-running", "rollback-database", running.pid, socket.gethostname(), "oncall", "db1"
        )
        rl.acquire(str(lock), holder, 3600)
        held = lock.read_bytes()
        run = rollback(lab, config_rollback_hosts="db1")
        assert run.rc != 0, run.output[-3000:]
        named = (
            f"db1 is locked by rollback-database run kg-db-running (controller pid {running.pid} "
            f"on {socket.gethostname()}, user oncall) on db1 since {holder['since']}: "
            "nothing was changed"
        )
        assert named in run.output, run.output[-3000:]
        assert digest(managed) == drifted  # not reverted
        assert sorted(os.listdir(store.path("snapshots"))) == snapshots  # no safety snapshot
        assert store.last_known_good() == good
        assert lock.read_bytes() == held  # the holder's lock stands
    finally:
        running.kill()
        running.wait()
        lock.unlink(missing_ok=True)
        managed.write_bytes(original)


def pg_state(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_postmaster_start_time(), current_setting('work_mem'),"
            " current_setting('max_connections')"
        ).fetchone()
    return row


def wait_standby_streaming(dsn, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as conn:
                if conn.execute(
                    "SELECT 1 FROM pg_stat_replication WHERE state = 'streaming'"
                ).fetchone():
                    return
        except psycopg.OperationalError:
            pass
        time.sleep(0.5)
    raise AssertionError("the standby did not stream again after the primary restarted")


def test_postgresql_reload_parameter_reloads_and_postmaster_parameter_restarts(lab):
    lab.seed("v1")  # the rollback's behaviour check probes the service through the LB too
    hv = hostvars(lab, "db1")
    dsn = hv["knowngood_config_db_dsn"]
    conf = Path(hv["knowngood_config_services"][0]["paths"][0])
    assert conf.name == "postgresql.conf"
    _store, _services, _good = mark_live_known_good(lab, "db1")
    original = conf.read_bytes()
    started0, work_mem0, max_conn0 = pg_state(dsn)
    try:
        with open(conf, "a") as out:
            out.write("work_mem = '7MB'  # someone's tuning\n")
        pg_reload(conf.parent)
        deadline = time.monotonic() + 10
        while pg_state(dsn)[1] != "7MB" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pg_state(dsn)[1] == "7MB"

        run = rollback(lab, services=["postgresql"])
        assert run.rc == 0, run.output[-3000:]
        assert "(item=reload postgresql)" in run.output
        started1, work_mem1, _ = pg_state(dsn)
        assert (started1, work_mem1) == (started0, work_mem0)
        assert conf.read_bytes() == original

        with open(conf, "a") as out:
            out.write("max_connections = 90\n")
        run = rollback(lab, services=["postgresql"])
        assert run.rc == 0, run.output[-3000:]
        assert "(item=restart postgresql (max_connections))" in run.output
        started2, _, max_conn2 = pg_state(dsn)
        assert started2 > started1 and max_conn2 == max_conn0
        assert conf.read_bytes() == original
    finally:
        if conf.read_bytes() != original:
            conf.write_bytes(original)
        pg_reload(conf.parent)  # a failed run must not leave the next test a server on 7MB
        wait_standby_streaming(dsn)


def pg_reload(data_dir):
    pg_ctl = "/usr/lib/postgresql/15/bin/pg_ctl"
    argv = ["runuser", "-u", "postgres", "--", pg_ctl, "reload", "-D", str(data_dir)]
    subprocess.run(argv, check=True, capture_output=True)


# ------------------------------------------------------------------ app hosts


def app_conf(lab, host):
    return Path(hostvars(lab, host)["knowngood_config_services"][0]["paths"][0])


def app_headers(url):
    """Response headers of an instance; the idle pool's 503 (no release) carries them too."""
    try:
        with urllib.request.urlopen(url + "/version", timeout=5) as resp:
            return resp.headers
    except urllib.error.HTTPError as exc:
        return exc.headers


def app_hosts(lab):
    return [h["name"] for h in lab.status["hosts"]]


def instance_urls(lab):
    return [url for h in lab.status["hosts"] for url in h["app_urls"].values()]


def signal_apps(lab, host):
    pidfiles = [str(lab.root / "run" / f"{host}-{pool}.pid") for pool in ("blue", "green")]
    argv = [sys.executable, "-m", "knowngood.lab.appserver", "--reload", *pidfiles]
    subprocess.run(argv, check=True, capture_output=True)


def wait_header(urls, name, value, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        seen = {url: app_headers(url).get(name) for url in urls}
        if all(v == value for v in seen.values()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} is not {value!r} everywhere: {seen}")
        time.sleep(0.05)


def app_pids(lab):
    return sorted(int(p.read_text()) for p in (lab.root / "run").glob("app*-*.pid"))


def nginx_processes(lab):
    """The nginx master and its workers: a reload replaces every worker."""
    master = int((lab.root / "run" / "nginx.pid").read_text())
    workers = sorted(
        int(stat.name)
        for stat in Path("/proc").iterdir()
        if stat.name.isdigit() and _ppid(stat) == master
    )
    return master, workers


def _ppid(proc_dir):
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def pg_times(dsn):
    """Start and configuration-load time: a restart moves both, a reload moves the second."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT pg_postmaster_start_time(), pg_conf_load_time()").fetchone()


@pytest.fixture
def app_lab(lab):
    lab.seed("v1")  # the rollback's behaviour check probes the service through the LB
    for host in ["lb1", "db1", *app_hosts(lab)]:
        mark_live_known_good(lab, host)
    yield lab
    lab.reset()  # rewrites every host's default app.conf and signals the instances


def test_app_config_rollback_reloads_only_the_app(app_lab):
    lab = app_lab
    hosts, urls = app_hosts(lab), instance_urls(lab)
    wait_header(urls, "Cache-Control", "no-store")
    good = {host: digest(app_conf(lab, host)) for host in hosts}
    for host in hosts:  # a config push that caches pages naming the release for ten minutes
        conf = app_conf(lab, host)
        pushed = json.loads(conf.read_text())
        pushed["response_headers"]["Cache-Control"] = "public, max-age=600"
        conf.write_text(json.dumps(pushed))
        signal_apps(lab, host)
    wait_header(urls, "Cache-Control", "public, max-age=600")
    dsn = hostvars(lab, "db1")["knowngood_config_db_dsn"]
    before = (nginx_processes(lab), pg_times(dsn), app_pids(lab))

    run = rollback(lab, rollback_reason="bad caching header pushed")  # every host, every service
    assert run.rc == 0, run.output[-3000:]
    assert {host: digest(app_conf(lab, host)) for host in hosts} == good
    wait_header(urls, "Cache-Control", "no-store", timeout=5)
    assert "(item=reload app)" in run.output
    assert "item=reload nginx" not in run.output and "item=reload postgresql" not in run.output
    assert "item=restart" not in run.output
    assert run.recap["lb1"]["changed"] == 0 and run.recap["db1"]["changed"] == 0, run.recap
    # nginx kept its workers (no reload), PostgreSQL its start and load time (no restart, no
    # reload), and the app instances their pids (a SIGHUP, not a restart).
    assert (nginx_processes(lab), pg_times(dsn), app_pids(lab)) == before
    # What the on-call engineer reads after the run names the snapshot and the file per host.
    from knowngood import runner

    records = sorted((lab.root / "audit").glob("kg-*.json"), key=os.path.getmtime)
    summary = "\n".join(runner.summarize(json.loads(records[-1].read_text())))
    for host in hosts:
        assert re.search(rf"changed +{host} .*restored [0-9a-f]{{16}}: app.conf", summary), summary


def test_bad_app_config_value_is_refused_by_validation_and_live_config_stays(app_lab):
    lab = app_lab
    conf = app_conf(lab, "app1")
    urls = list(lab.status["hosts"][0]["app_urls"].values())
    live = conf.read_text()
    live_digest = digest(conf)
    serving = app_headers(urls[0])["X-App-Config"]
    hv = hostvars(lab, "app1")
    store = cs.Store(hv["knowngood_config_store"])
    services = cs.normalize_services(hv["knowngood_config_services"])
    conf.write_text(live.replace('"db_connect_timeout_s": 2', '"db_connect_timeout_s": "2s"'))
    assert digest(conf) != live_digest
    bad, _created = cs.take(store, services, "app1", "typo", "test", "test")
    # The runtime itself keeps its last valid configuration when signalled with a bad file.
    signal_apps(lab, "app1")
    time.sleep(0.5)
    assert {app_headers(url)["X-App-Config"] for url in urls} == {serving}
    conf.write_text(live)

    run = rollback(
        lab, config_rollback_hosts="app1", config_snapshot_id=bad["snapshot_id"], services=["app"]
    )
    assert run.rc != 0
    assert "candidate configuration fails validation, live configuration unchanged" in run.output
    assert "db_connect_timeout_s must be a number" in run.output
    assert digest(conf) == live_digest
    assert {app_headers(url)["X-App-Config"] for url in urls} == {serving}
    assert "reload app" not in run.output


def test_a_host_refused_sends_every_host_back_to_what_was_live(app_lab):
    """All or nothing: app2's known good no longer validates, so app1's revert is put back."""
    lab = app_lab
    confs = {host: app_conf(lab, host) for host in ("app1", "app2")}
    drifted = {}
    for host, conf in confs.items():
        conf.write_text(conf.read_text().replace('"no-store"', '"no-cache"'))
        drifted[host] = digest(conf)
    hv = hostvars(lab, "app2")
    store = cs.Store(hv["knowngood_config_store"])
    services = cs.normalize_services(hv["knowngood_config_services"])
    live = confs["app2"].read_text()
    too_long = live.replace('"db_connect_timeout_s": 2', '"db_connect_timeout_s": 99')
    confs["app2"].write_text(too_long)
    stale, _created = cs.take(store, services, "app2", "known good under older rules", "t", "t")
    store.mark_known_good(stale["snapshot_id"], "test", "test", "before the 30 s limit")
    confs["app2"].write_text(live)

    run = rollback(lab, config_rollback_hosts="app1,app2", services=["app"])
    assert run.rc != 0
    assert "app2:" in run.output and "db_connect_timeout_s must be a number" in run.output
    assert "was put back" in run.output  # app1 wrote its file, then the rescue undid it
    assert {host: digest(conf) for host, conf in confs.items()} == drifted
    assert "item=reload app" not in run.output
