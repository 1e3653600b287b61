"""The lab's HTTP flag service, for the feature_flag module's http backend."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

from knowngood.lab.config import LabConfig
from knowngood.lab.process import Progress, read_pid, spawn, wait_http


def flag_token_file(cfg: LabConfig) -> Path:
    return cfg.root / "secrets" / "flag-service.token"


def flagservice_up(cfg: LabConfig, progress: Progress) -> None:
    """The HTTP flag service for the feature_flag module's http backend."""
    token_file = flag_token_file(cfg)
    if not token_file.exists():
        token_file.parent.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
    pidfile = cfg.run_dir / "flagservice.pid"
    if read_pid(pidfile):
        return
    spawn(
        [
            sys.executable,
            "-m",
            "knowngood.lab.flagservice",
            "--port",
            str(cfg.flag_service_port),
            "--state",
            str(cfg.root / "flagservice" / "flags.json"),
            "--token-file",
            str(token_file),
        ],
        cfg.log_dir / "flagservice.log",
        pidfile,
    )
    wait_http(f"http://127.0.0.1:{cfg.flag_service_port}/health", 10, ok=lambda c: c == 200)
    progress(f"flags: flag service on http://127.0.0.1:{cfg.flag_service_port}")
