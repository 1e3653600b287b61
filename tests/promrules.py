"""Prometheus alert rules under test: samples of an exposition file, and promtool's verdict on
which of knowngood's backup alerts fire over them (tests/unit/test_backup_metrics.py and the
integration test that breaks a location share it)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "roles/backup_schedule/files/prometheus/knowngood-backups.rules.yml"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
LINE = re.compile(r"^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


def samples(path):
    """{(name, frozenset(labels)): value} of an exposition file."""
    out = {}
    for line in Path(path).read_text().splitlines():
        if line.startswith("#") or not line:
            continue
        match = LINE.match(line)
        assert match, f"not exposition format: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match["labels"]))
        out[(match["name"], labels)] = float(match["value"])
    return out


def firing(tmp_path, prom_file, at_minutes, expected):
    """Feed the file's samples to promtool as constant series (instance db1) for an hour and
    check that exactly `expected` ({(alertname, label value)}) fire at at_minutes."""
    series = []
    for (name, labels), value in samples(prom_file).items():
        text = ",".join(f'{k}="{v}"' for k, v in sorted(labels | {("instance", "db1")}))
        series.append({"series": f"{name}{{{text}}}", "values": f"{value:g}x60"})
    by = "count by (alertname, kind, location) (ALERTS{alertstate='firing'})"
    exp = []
    for alertname, label, value in sorted(expected):
        exp.append({"labels": f'{{alertname="{alertname}",{label}="{value}"}}', "value": 1})
    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {"expr": by, "eval_time": f"{at_minutes}m", "exp_samples": exp}
                ],
            }
        ],
    }
    path = tmp_path / "rules-test.yml"
    path.write_text(json.dumps(test))  # JSON is YAML
    run = subprocess.run(
        [PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr
