"""The lab's Prometheus (the Debian package), scraping every app instance."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from knowngood.errors import LabError
from knowngood.lab.config import LabConfig
from knowngood.lab.process import (
    LOOPBACK,
    Progress,
    clean_env,
    daemon_log,
    ensure_base,
    ensure_dir,
    fail,
    http_status,
    require_free,
    run_command,
    running_pid,
    spawn_daemon,
    stop_daemon,
    wait_until,
)

PROMETHEUS_BIN = Path("/usr/bin/prometheus")
PROMTOOL_BIN = Path("/usr/bin/promtool")
_PROM = "prometheus"
_TARGET_RE = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")


def _prom_dir(cfg: LabConfig) -> Path:
    return cfg.root / "prometheus"


def prometheus_config_path(cfg: LabConfig) -> Path:
    return _prom_dir(cfg) / "prometheus.yml"


def _prom_url(cfg: LabConfig) -> str:
    return f"http://{LOOPBACK}:{cfg.prometheus_port}"


def _prom_config(
    targets: Sequence[str], labels: Mapping[str, Mapping[str, str]] | None
) -> dict[str, Any]:
    labels = labels or {}
    bad = [t for t in targets if not _TARGET_RE.match(t)]
    if bad:
        raise LabError(f"prometheus: targets must look like host:port, got {bad}")
    unknown = sorted(set(labels) - set(targets))
    if unknown:
        raise LabError(f"prometheus: labels given for unknown targets {unknown}")
    # One static_config per target, so each target can carry its own host/pool labels.
    static = [
        {"targets": [t], **({"labels": dict(labels[t])} if labels.get(t) else {})} for t in targets
    ]
    return {
        "global": {"scrape_interval": "2s", "scrape_timeout": "2s", "evaluation_interval": "2s"},
        "scrape_configs": [{"job_name": "app", "static_configs": static}],
    }


def _prom_write_config(cfg: LabConfig, config: Mapping[str, Any]) -> None:
    path = prometheus_config_path(cfg)
    text = "# written by knowngood lab; rewritten on every prometheus_up\n"
    text += yaml.safe_dump(dict(config), sort_keys=False)
    candidate = path.with_name(".prometheus.yml.candidate")
    candidate.write_text(text)
    if PROMTOOL_BIN.exists():  # reject a bad config before it replaces the good one
        run_command(
            [PROMTOOL_BIN, "check", "config", candidate],
            what="prometheus: config check",
            timeout=30,
            env=clean_env(_prom_dir(cfg)),
        )
    candidate.replace(path)


def _prom_ready(cfg: LabConfig) -> bool:
    try:
        return http_status(f"{_prom_url(cfg)}/-/ready")[0] == 200
    except OSError:
        return False


def prometheus_up(
    cfg: LabConfig,
    progress: Progress,
    targets: Sequence[str],
    labels: Mapping[str, Mapping[str, str]] | None = None,
) -> None:
    """Scrape `targets` (host:port) as job "app"; reload in place if already running."""
    if not PROMETHEUS_BIN.exists():
        raise LabError(f"prometheus: {PROMETHEUS_BIN} missing; apt-get install prometheus")
    ensure_base(cfg)
    ensure_dir(_prom_dir(cfg) / "data")
    _prom_write_config(cfg, _prom_config(targets, labels))
    log = daemon_log(cfg, _PROM)
    if running_pid(cfg, _PROM, "prometheus") is not None and _prom_ready(cfg):
        code, body = http_status(f"{_prom_url(cfg)}/-/reload", method="POST", timeout=10)
        if code != 200:
            raise fail(f"prometheus: reload failed with HTTP {code}: {body.strip()}", log)
        progress(f"prometheus: config reloaded ({len(targets)} targets)")
        return
    stop_daemon(cfg, _PROM, "prometheus")
    argv = [
        PROMETHEUS_BIN,
        f"--config.file={prometheus_config_path(cfg)}",
        f"--storage.tsdb.path={_prom_dir(cfg) / 'data'}",
        f"--web.listen-address={LOOPBACK}:{cfg.prometheus_port}",
        "--web.enable-lifecycle",
        "--storage.tsdb.retention.time=7d",
    ]
    require_free(LOOPBACK, cfg.prometheus_port, "prometheus")
    proc = spawn_daemon(cfg, _PROM, argv, cwd=_prom_dir(cfg), env=clean_env(_prom_dir(cfg)))
    waited = wait_until(lambda: _prom_ready(cfg), what="prometheus", timeout=60, log=log, proc=proc)
    progress(f"prometheus: started on {_prom_url(cfg)} ({len(targets)} targets, {waited:.1f}s)")


def prometheus_down(cfg: LabConfig) -> None:
    stop_daemon(cfg, _PROM, "prometheus")


def prometheus_status(cfg: LabConfig) -> dict[str, Any]:
    running = running_pid(cfg, _PROM, "prometheus") is not None and _prom_ready(cfg)
    return {"url": _prom_url(cfg), "running": running}
