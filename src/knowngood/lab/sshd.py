"""SSH mode: one sshd per app host on 127.0.1.x, and the client options the inventory uses."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shlex
import signal
import socket
from pathlib import Path
from typing import Any

from knowngood.errors import LabError
from knowngood.lab.config import LabConfig
from knowngood.lab.process import (
    Progress,
    clean_env,
    daemon_log,
    daemon_pidfile,
    descendants,
    ensure_base,
    ensure_dir,
    read_pidfile,
    require_free,
    run_command,
    running_pid,
    spawn_daemon,
    stop_daemon,
    tcp_open,
    wait_until,
    write_if_changed,
)

SSHD_BIN = Path("/usr/sbin/sshd")
SSHD_PRIVSEP_DIR = Path("/run/sshd")
SSH_CLIENT_ARGS = (
    "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
    "-o IdentitiesOnly=yes -o LogLevel=ERROR"
)


def _ssh_dir(cfg: LabConfig) -> Path:
    return cfg.root / "ssh"


def ssh_private_key(cfg: LabConfig) -> Path:
    return _ssh_dir(cfg) / "id_ed25519"


def _ssh_authorized_keys(cfg: LabConfig) -> Path:
    return _ssh_dir(cfg) / "authorized_keys"


def _sshd_name(cfg: LabConfig, index: int) -> str:
    return f"sshd-{cfg.host_name(index)}"


def _sshd_config_path(cfg: LabConfig, index: int) -> Path:
    return _ssh_dir(cfg) / cfg.host_name(index) / "sshd_config"


def _sshd_host_key(cfg: LabConfig, index: int) -> Path:
    return _ssh_dir(cfg) / cfg.host_name(index) / "ssh_host_ed25519_key"


def ssh_client_options(cfg: LabConfig) -> dict[str, Any]:
    """What an Ansible inventory needs to reach the lab hosts over SSH."""
    return {
        "user": "root",
        "port": cfg.ssh_port,
        "private_key_file": str(ssh_private_key(cfg)),
        # Same value under both names: ansible_ssh_common_args is where it goes in an inventory.
        "common_args": SSH_CLIENT_ARGS,
        "ssh_common_args": SSH_CLIENT_ARGS,
    }


def _keygen(path: Path, comment: str) -> None:
    if path.exists() and path.with_suffix(".pub").exists():
        return
    path.unlink(missing_ok=True)
    path.with_suffix(".pub").unlink(missing_ok=True)
    run_command(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path],
        what="ssh: ssh-keygen",
        timeout=30,
    )


def _ssh_client_key(cfg: LabConfig) -> None:
    key = ssh_private_key(cfg)
    _keygen(key, f"knowngood-lab-{cfg.name}")
    write_if_changed(_ssh_authorized_keys(cfg), key.with_suffix(".pub").read_text(), 0o644)


def _sshd_config_text(cfg: LabConfig, index: int) -> str:
    address = cfg.host_address(index)
    return "\n".join(
        [
            f"# sshd for lab host {cfg.host_name(index)}; written by knowngood lab",
            f"ListenAddress {address}:{cfg.ssh_port}",
            f"HostKey {_sshd_host_key(cfg, index)}",
            f"PidFile {daemon_pidfile(cfg, _sshd_name(cfg, index))}",
            f"AuthorizedKeysFile {_ssh_authorized_keys(cfg)}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            # The lab tree is created by root with ordinary modes; strict checks would only get in
            # the way, and PAM has nothing to add without a real login stack.
            "StrictModes no",
            "UsePAM no",
            "PrintMotd no",
            # Ansible opens several channels at once per host.
            "MaxSessions 50",
            "MaxStartups 100:30:200",
            "Subsystem sftp internal-sftp",
            "",
        ]
    )


def _check_loopback_address(address: str) -> None:
    if not ipaddress.ip_address(address).is_loopback:
        raise LabError(f"ssh: {address} is not a loopback address")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((address, 0))
    except OSError as err:
        raise LabError(
            f"ssh: cannot bind to {address} ({err}); on Linux all of 127/8 is "
            "loopback, elsewhere add the alias to lo"
        ) from err


def _ssh_banner(address: str, port: int) -> bool:
    with socket.create_connection((address, port), timeout=1) as s:
        return s.recv(8).startswith(b"SSH-")


def _ssh_true(cfg: LabConfig, index: int) -> None:
    argv = [
        "ssh",
        "-i",
        str(ssh_private_key(cfg)),
        *shlex.split(SSH_CLIENT_ARGS),
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=5",
        "-p",
        str(cfg.ssh_port),
        f"root@{cfg.host_address(index)}",
        "true",
    ]
    run_command(argv, what=f"ssh: login to {cfg.host_name(index)}", timeout=30)


def sshd_up(cfg: LabConfig, progress: Progress, index: int) -> None:
    """An sshd for app host `index` on its 127.0.1.x address, accepting the lab's client key."""
    if not cfg.ssh:
        raise LabError("ssh: the lab was not created in SSH mode; its hosts all share 127.0.0.1")
    if not SSHD_BIN.exists():
        raise LabError(f"ssh: {SSHD_BIN} missing; apt-get install openssh-server")
    name, address = _sshd_name(cfg, index), cfg.host_address(index)
    _check_loopback_address(address)
    ensure_base(cfg)
    ensure_dir(_sshd_host_key(cfg, index).parent)
    ensure_dir(SSHD_PRIVSEP_DIR)  # privilege separation dir, normally made by the init system
    _ssh_client_key(cfg)
    _keygen(_sshd_host_key(cfg, index), f"{cfg.host_name(index)}@knowngood-lab")
    config = _sshd_config_path(cfg, index)
    changed = write_if_changed(config, _sshd_config_text(cfg, index))
    pid = running_pid(cfg, name, "sshd")
    if pid is not None and not changed:
        return
    if pid is not None:
        stop_daemon(cfg, name, "sshd")
    require_free(address, cfg.ssh_port, f"ssh: sshd for {cfg.host_name(index)}")
    run_command([SSHD_BIN, "-t", "-f", config], what="ssh: sshd -t", timeout=30)
    # -D keeps sshd in the foreground so the pid we record is the listener; -e logs to our file.
    proc = spawn_daemon(
        cfg,
        name,
        [SSHD_BIN, "-D", "-e", "-f", config],
        cwd=_ssh_dir(cfg),
        env=clean_env(Path("/root")),
    )
    waited = wait_until(
        lambda: _ssh_banner(address, cfg.ssh_port),
        what=f"ssh: sshd for {cfg.host_name(index)}",
        timeout=20,
        log=daemon_log(cfg, name),
        proc=proc,
    )
    _ssh_true(cfg, index)
    progress(f"ssh: {cfg.host_name(index)} sshd on {address}:{cfg.ssh_port} ({waited:.1f}s)")


def sshd_down(cfg: LabConfig, index: int) -> None:
    """The host goes down: its sshd and every session it serves (ControlPersist masters
    on the client side would otherwise keep the host reachable)."""
    pid = read_pidfile(daemon_pidfile(cfg, _sshd_name(cfg, index)))
    sessions = descendants(pid) if pid else []
    stop_daemon(cfg, _sshd_name(cfg, index), "sshd")
    for child in sessions:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def sshd_status(cfg: LabConfig, index: int) -> dict[str, Any]:
    address = cfg.host_address(index)
    running = running_pid(cfg, _sshd_name(cfg, index), "sshd") is not None
    return {
        "host": cfg.host_name(index),
        "address": address,
        "port": cfg.ssh_port,
        "running": running and tcp_open(address, cfg.ssh_port),
    }
