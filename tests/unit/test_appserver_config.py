"""The app runtime's own configuration (shared/app.conf): what --check-config lets through."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from knowngood.lab import apps, appserver


def conf(**values) -> bytes:
    return json.dumps(values).encode()


def test_the_labs_default_configuration_is_valid():
    settings = appserver.parse_config(json.dumps(apps.DEFAULT_APP_CONFIG).encode())
    assert settings.response_headers == {"Cache-Control": "no-store"}
    assert settings.db_connect_timeout_s == 2


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"{", "not JSON"),
        (b"[]", "must be a JSON object"),
        (conf(db_conect_timeout_s=2), "unknown setting 'db_conect_timeout_s'"),
        (conf(db_connect_timeout_s="two"), "db_connect_timeout_s must be a number"),
        (conf(db_connect_timeout_s=0), "db_connect_timeout_s must be a number"),
        (conf(db_connect_timeout_s=True), "db_connect_timeout_s must be a number"),
        (conf(response_headers=["Cache-Control"]), "response_headers must be an object"),
        (conf(response_headers={"X-Release": "v9"}), "'X-Release' is not a header"),
        (conf(response_headers={"Bad Name": "x"}), "'Bad Name' is not a header"),
        (conf(response_headers={"X-A": "a\r\nSet-Cookie: b"}), "printable ASCII on one line"),
        ('{"response_headers": {"X-A": "caf\u00e9"}}'.encode("latin-1"), "not JSON"),
    ],
)
def test_a_bad_value_is_refused_naming_the_problem(data, problem):
    with pytest.raises(appserver.ConfigInvalid) as info:
        appserver.parse_config(data)
    assert problem in str(info.value)


def test_check_config_exits_nonzero_on_a_bad_file_and_zero_on_a_good_one(tmp_path):
    good, bad = tmp_path / "good.conf", tmp_path / "bad.conf"
    good.write_bytes(conf(response_headers={"X-Frame-Options": "DENY"}))
    bad.write_bytes(conf(db_connect_timeout_s=-1))

    def check(path):
        argv = [sys.executable, "-m", "knowngood.lab.appserver", "--check-config", str(path)]
        return subprocess.run(argv, capture_output=True, text=True, check=False)

    ok, refused = check(good), check(bad)
    assert ok.returncode == 0 and "ok" in ok.stdout
    assert refused.returncode == 1 and "db_connect_timeout_s" in refused.stderr
    assert check(tmp_path / "missing.conf").returncode == 1


def test_reload_fails_when_an_instance_is_not_running(tmp_path):
    stale = tmp_path / "app1-blue.pid"
    stale.write_text("999999999\n")
    rc = appserver.signal_reload([str(stale)])
    assert rc == 1
