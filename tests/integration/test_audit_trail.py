"""The audit trail against the runner's own account, at CLI and playbook level on the lab.

The lab configures a witness by default (the object-locked cold bucket): a cut tail with the
local checkpoint rolled back, or a chain rewritten with the local key, reads TAMPERED naming
the entries; a missing public key, an unreachable witness, a run killed with SIGKILL and a
torn last line are findings, never a silent pass; crafted run ids and users are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils import audit_chain
from conftest import BIN, REPO, ansible_env

from knowngood.lab.notify_sinks import closed_port

pytestmark = pytest.mark.lab

PLAYBOOK = str(REPO / "tests" / "playbooks" / "audit_pause.yml")


def _env(root: Path, audit: Path, key: Path, **extra: str) -> dict:
    env = {**ansible_env(root), "KNOWNGOOD_AUDIT_DIR": str(audit), "KNOWNGOOD_AUDIT_KEY": str(key)}
    env.update(extra)
    return env


def _playbook(env: dict, *args: str) -> subprocess.CompletedProcess:
    argv = [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", PLAYBOOK]
    argv += ["-e", f"ansible_python_interpreter={BIN / 'python'}", *args]
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def _kg(env: dict, root: Path, *args: str) -> subprocess.CompletedProcess:
    argv = [str(BIN / "knowngood"), "--root", str(root), *args]
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def _index(audit: Path) -> list[dict]:
    return [json.loads(raw) for raw in (audit / "index.jsonl").read_text().splitlines()]


def test_the_witness_open_records_and_torn_lines_against_the_runners_account(lab_session, tmp_path):
    root = lab_session.root
    audit, key = tmp_path / "audit", tmp_path / "keys" / "audit_key"
    env = _env(root, audit, key)

    empty = _kg(env, root, "audit", "verify")
    assert empty.returncode == 0 and "empty" in empty.stdout and "TAMPERED" not in empty.stdout
    assert "witness s3://knowngood-cold/audit-checkpoints" in empty.stdout  # on by default

    assert _playbook(env).returncode == 0
    kinds = [(e["kind"], e["seq"]) for e in _index(audit)]
    assert kinds == [("open", 1), ("record", 2)]  # opened at start, closed at the end
    ok = _kg(env, root, "audit", "verify")
    assert ok.returncode == 0 and "witness in s3://knowngood-cold" in ok.stdout, ok.stdout

    # The public key gone: signatures were not checked, and verify says so.
    pub = Path(f"{key}.pub")
    pub.rename(tmp_path / "pub")
    nopub = _kg(env, root, "audit", "verify")
    assert nopub.returncode == 4, nopub.stdout
    assert "FINDING   signatures not checked: public key missing" in nopub.stdout
    (tmp_path / "pub").rename(pub)
    # An unreachable witness vouches for nothing.
    down = {**env, "KNOWNGOOD_AUDIT_S3_URL": "s3://knowngood-cold/audit-checkpoints"}
    down["KNOWNGOOD_AUDIT_S3_ENDPOINT"] = f"http://127.0.0.1:{closed_port()}"
    unreachable = _kg(down, root, "audit", "verify")
    assert unreachable.returncode == 4 and "unreachable" in unreachable.stdout, unreachable.stdout

    # kill -9 mid-run: the record opened at the start stays, and verify reports it.
    proc = subprocess.Popen(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", PLAYBOOK, "-e",
         f"ansible_python_interpreter={BIN / 'python'}", "-e", "audit_pause_seconds=120"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    witness = audit_chain.resolve_trail(environ=env)["witness"]
    while time.monotonic() < deadline:  # the open entry is written and witnessed
        point = audit_chain.read_remote_checkpoint(witness, str(audit))
        if point and point["seq"] == 3:
            break
        time.sleep(0.05)
    killed = _index(audit)[-1]
    assert killed["kind"] == "open" and (audit / killed["record"]).exists()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    opened = _kg(env, root, "audit", "verify")
    assert opened.returncode == 4, opened.stdout
    assert f"run {killed['run_id']} opened at {killed['started_at']}" in opened.stdout
    assert "never closed" in opened.stdout
    assert f"OPEN        {killed['run_id']}" in _kg(env, root, "audit", "list").stdout

    # A torn last line (a crash mid-write): reported, and the next run is still recorded.
    partial = b'{"kind":"record","run_id":"kg-torn'
    with (audit / "index.jsonl").open("ab") as handle:
        handle.write(partial)
    torn = _kg(env, root, "audit", "verify")
    assert torn.returncode == 4 and f"torn last line ({len(partial)} bytes" in torn.stdout, (
        torn.stdout
    )
    after = _playbook(env)
    assert after.returncode == 0, after.stdout + after.stderr
    record = _index_tail(audit)
    assert record["kind"] == "record" and record["status"] == "successful"
    assert (audit / record["record"]).exists() and record["seq"] == 5
    assert "torn by an interrupted write" in _kg(env, root, "audit", "verify").stdout
    repaired = _kg(env, root, "audit", "repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert f"removed torn line(s) ({len(partial)} bytes)" in repaired.stdout
    assert f"closed abandoned run {killed['run_id']}" in repaired.stdout
    clean = _kg(env, root, "audit", "verify")
    assert clean.returncode == 0 and "intact" in clean.stdout, clean.stdout
    assert [e["kind"] for e in _index(audit)][-2:] == ["repair", "record"]

    # The runner's account cuts the newest entries and rolls its checkpoint back to match.
    full = (audit / "index.jsonl").read_bytes().splitlines(keepends=True)
    last_seq = json.loads(full[-1])["seq"]
    (audit / "index.jsonl").write_bytes(b"".join(full[:-2]))
    point = {"audit_dir": str(audit.resolve()), "seq": last_seq - 2}
    point["sha256"] = hashlib.sha256(full[-3].rstrip(b"\n")).hexdigest()
    Path(audit_chain.checkpoint_path(str(key), str(audit))).write_text(json.dumps(point))
    cut = _kg(env, root, "audit", "verify")
    assert cut.returncode == 3, cut.stdout
    assert f"TAMPERED  entries seq {last_seq - 1}-{last_seq} missing" in cut.stdout
    # ... or rewrites them with the local key: a consistent local chain, and the witness says no.
    audit_chain.append(str(audit), {"kind": "record", "run_id": "forged"}, str(key), None)
    rewritten = _kg(env, root, "audit", "verify")
    assert rewritten.returncode == 3, rewritten.stdout
    assert f"entries from seq {last_seq - 1} differ from the witness" in rewritten.stdout


def _index_tail(audit: Path) -> dict:
    return json.loads((audit / "index.jsonl").read_bytes().splitlines()[-1])


def test_run_and_audit_share_one_trail_and_crafted_run_ids_are_refused(lab_session, tmp_path):
    root = lab_session.root
    env = ansible_env(root)
    env.pop("KNOWNGOOD_AUDIT_DIR")  # the default resolution, as an operator would have it
    done = _kg(
        env, root, "run", PLAYBOOK, "-i", "localhost,", "--quiet",
        "-e", "ansible_connection=local", "-e", f"ansible_python_interpreter={BIN / 'python'}",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = done.stdout.split("run ", 1)[1].split(":", 1)[0]
    listed = _kg(env, root, "audit", "list")
    assert f"successful  {run_id}" in listed.stdout, listed.stdout
    entries = [json.loads(x) for x in (root / "audit" / "index.jsonl").read_text().splitlines()]
    mine = [e["kind"] for e in entries if e.get("run_id") == run_id]
    assert mine == ["open", "record", "artifacts"]

    audit, key = tmp_path / "t" / "audit", tmp_path / "keys" / "audit_key"
    for bad in ({"KNOWNGOOD_RUN_ID": "../../x"}, {"KNOWNGOOD_USER": "../evil"}):
        refused = _playbook(_env(root, audit, key, **bad), "-e", "audit_pause_seconds=0")
        assert refused.returncode == 5, refused.stdout + refused.stderr
        assert "refused: it must match" in refused.stderr
    assert not audit.exists() and not (tmp_path / "x.json").exists()
    assert not list(tmp_path.rglob("x.*")) and not (tmp_path.parent / "x.json").exists()
    before = (root / "audit" / "index.jsonl").read_bytes()
    crafted = {**env, "LOGNAME": "../evil", "USER": "../evil"}
    refused = _kg(crafted, root, "run", PLAYBOOK, "-i", "localhost,", "--quiet")
    assert refused.returncode == 1 and "user '../evil' refused" in refused.stderr, refused.stderr
    assert (root / "audit" / "index.jsonl").read_bytes() == before  # nothing opened, nothing run
