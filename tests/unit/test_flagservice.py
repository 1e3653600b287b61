"""The lab flag service in-process: reads, authorised writes, persistence, refusals."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from knowngood.lab import flagservice

TOKEN = "unit-test-token"
Call = Callable[..., tuple[int, dict]]


def _start(state: Path, token: str | None) -> tuple[str, Callable[[], None]]:
    server = flagservice.make_server(state, token)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join()

    return f"http://127.0.0.1:{server.server_address[1]}", stop


def _call(base: str, method: str, path: str, body: object = None, token: str | None = None):
    data = (
        None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    )
    request = urllib.request.Request(base + path, data=data, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "flags" / "state.json"


@pytest.fixture
def service(state: Path) -> Iterator[Call]:
    base, stop = _start(state, TOKEN)
    yield lambda *args, **kwargs: _call(base, *args, **kwargs)
    stop()


def test_unknown_flag_is_404(service: Call) -> None:
    assert service("GET", "/flags/new_checkout") == (
        404,
        {"error": "no flag new_checkout", "name": "new_checkout"},
    )


def test_put_with_the_token_sets_and_persists_the_flag(service: Call, state: Path) -> None:
    body = {"enabled": False, "run_id": "r-1", "reason": "errors 34%"}
    code, record = service("PUT", "/flags/new_checkout", body, token=TOKEN)
    assert code == 200
    assert record["enabled"] is False and record["run_id"] == "r-1"
    code, read = service("GET", "/flags/new_checkout")
    assert code == 200 and read == record
    stored = json.loads(state.read_text())["flags"]["new_checkout"]
    assert stored["enabled"] is False
    assert stored["reason"] == "errors 34%"
    assert [p.name for p in state.parent.iterdir()] == ["state.json"]  # no temp file left


@pytest.mark.parametrize("token", [None, "wrong", TOKEN + "x", ""])
def test_put_without_the_right_token_is_401_and_changes_nothing(
    service: Call, state: Path, token: str | None
) -> None:
    code, body = service("PUT", "/flags/new_checkout", {"enabled": True}, token=token)
    assert code == 401
    assert TOKEN not in json.dumps(body)
    assert not state.exists()


def test_reads_need_no_token(service: Call) -> None:
    service("PUT", "/flags/a", {"enabled": True}, token=TOKEN)
    code, listing = service("GET", "/flags")
    assert code == 200 and listing["flags"]["a"]["enabled"] is True
    assert service("GET", "/flags/a")[1]["enabled"] is True


@pytest.mark.parametrize(
    "body",
    [b"not json", {"enabled": "false"}, {"run_id": "r"}, [True], {"enabled": True, "reason": 3}],
)
def test_malformed_change_is_400(service: Call, state: Path, body: object) -> None:
    code, _ = service("PUT", "/flags/new_checkout", body, token=TOKEN)
    assert code == 400
    assert not state.exists()


@pytest.mark.parametrize("name", ["..%2Fx", "a;b", "-x", "x" * 129])
def test_invalid_flag_name_is_400(service: Call, name: str) -> None:
    assert service("PUT", f"/flags/{name}", {"enabled": True}, token=TOKEN)[0] == 400
    assert service("GET", f"/flags/{name}")[0] == 400


def test_other_paths_are_404(service: Call) -> None:
    assert service("GET", "/nope")[0] == 404
    assert service("PUT", "/nope", {"enabled": True}, token=TOKEN)[0] == 404


def test_state_survives_a_restart(state: Path) -> None:
    base, stop = _start(state, TOKEN)
    _call(base, "PUT", "/flags/kept", {"enabled": True, "reason": "r"}, token=TOKEN)
    stop()
    base, stop = _start(state, TOKEN)
    try:
        code, record = _call(base, "GET", "/flags/kept")
    finally:
        stop()
    assert code == 200 and record["enabled"] is True and record["reason"] == "r"


def test_without_a_token_file_anyone_may_write(state: Path) -> None:
    base, stop = _start(state, None)
    try:
        assert _call(base, "PUT", "/flags/open", {"enabled": True})[0] == 200
    finally:
        stop()


def test_corrupt_state_file_refuses_to_start(state: Path) -> None:
    state.parent.mkdir(parents=True)
    state.write_text("{")
    with pytest.raises(flagservice.FlagServiceError, match="not valid JSON"):
        flagservice.make_server(state, None)


def test_empty_token_file_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("\n")
    with pytest.raises(flagservice.FlagServiceError, match="empty"):
        flagservice.read_token(tmp_path / "token")
