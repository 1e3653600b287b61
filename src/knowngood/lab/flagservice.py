"""The lab's feature flag service: the HTTP backend of knowngood.runbooks.feature_flag.

GET /flags/<name> answers {"enabled": bool, "updated_at", "run_id", "reason"} or 404;
GET /flags lists every flag; PUT /flags/<name> with {"enabled": bool, "run_id", "reason"}
sets one. State is one JSON file ({"flags": {...}}, the shape of a host's flags.json),
replaced atomically on every change. Started with --token-file, a PUT needs
`Authorization: Bearer <token>`; reads stay open, like most flag services' read keys.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import re
import signal
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from knowngood.errors import FlagServiceError
from knowngood.lab.serving import serve_until_term

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
MAX_BODY = 64 * 1024


class FlagStore:
    """Flags in one JSON file; every write replaces the file whole, under one lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.flags: dict[str, dict] = self._load()

    def _load(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise FlagServiceError(f"state file {self.path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("flags", {}), dict):
            raise FlagServiceError(f'state file {self.path} must hold {{"flags": {{...}}}}')
        return dict(data.get("flags", {}))

    def get(self, name: str) -> dict | None:
        with self.lock:
            record = self.flags.get(name)
            return dict(record) if record is not None else None

    def all(self) -> dict[str, dict]:
        with self.lock:
            return {name: dict(record) for name, record in self.flags.items()}

    def put(self, name: str, enabled: bool, run_id: str | None, reason: str | None) -> dict:
        record = {
            "enabled": enabled,
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "run_id": run_id,
            "reason": reason,
        }
        with self.lock:
            flags = {**self.flags, name: record}
            self._write(flags)
            self.flags = flags
        return dict(record)

    def _write(self, flags: dict[str, dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".flags-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump({"flags": flags}, handle, indent=2, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise FlagServiceError(f"cannot read token file {path}: {exc.strerror}") from exc
    if not token:
        raise FlagServiceError(f"token file {path} is empty")
    return token


def _optional_str(body: dict, key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    return value


def make_handler(store: FlagStore, token: str | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            return  # the Authorization header never reaches a log because nothing is logged

        def reply(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if code == 401:
                self.send_header("WWW-Authenticate", "Bearer")
            self.end_headers()
            self.wfile.write(data)

        def flag_name(self) -> str | None:
            """The <name> of /flags/<name>, or None after answering 404/400 for anything else."""
            path = self.path.split("?", 1)[0]
            prefix, _, name = path.partition("/flags/")
            if prefix or not name:
                self.reply(404, {"error": f"no such resource {path}"})
                return None
            if not NAME_RE.fullmatch(name):
                self.reply(400, {"error": f"invalid flag name {name!r}"})
                return None
            return name

        def authorized(self) -> bool:
            if token is None:
                return True
            scheme, _, presented = self.headers.get("Authorization", "").partition(" ")
            return scheme.lower() == "bearer" and hmac.compare_digest(
                presented.strip().encode(), token.encode()
            )

        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            if path == "/health":
                self.reply(200, {"status": "ok"})
                return
            if path in ("/flags", "/flags/"):
                self.reply(200, {"flags": store.all()})
                return
            name = self.flag_name()
            if name is None:
                return
            record = store.get(name)
            if record is None:
                self.reply(404, {"error": f"no flag {name}", "name": name})
            else:
                self.reply(200, {"name": name, **record})

        def do_PUT(self) -> None:  # noqa: N802
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_BODY:
                self.close_connection = True  # the unread body must not be parsed as a request
                self.reply(413, {"error": f"body must be 0-{MAX_BODY} bytes with a Content-Length"})
                return
            raw = self.rfile.read(length)
            name = self.flag_name()
            if name is None:
                return
            if not self.authorized():
                self.reply(401, {"error": "a valid bearer token is required to change flags"})
                return
            try:
                body = json.loads(raw)
                if not isinstance(body, dict) or not isinstance(body.get("enabled"), bool):
                    raise ValueError('body must be a JSON object with a boolean "enabled"')
                run_id, reason = _optional_str(body, "run_id"), _optional_str(body, "reason")
            except ValueError as exc:
                self.reply(400, {"error": str(exc)})
                return
            try:
                record = store.put(name, body["enabled"], run_id, reason)
            except OSError as exc:
                self.reply(500, {"error": f"cannot persist the flag: {exc.strerror}"})
                return
            self.reply(200, {"name": name, **record})

    return Handler


def make_server(
    state: Path, token: str | None, bind: str = "127.0.0.1", port: int = 0
) -> ThreadingHTTPServer:
    """A ready-to-serve flag service; port 0 picks a free one (server.server_address[1])."""
    server = ThreadingHTTPServer((bind, port), make_handler(FlagStore(state), token))
    server.daemon_threads = True
    return server


def serve(args: argparse.Namespace) -> None:
    token = read_token(Path(args.token_file)) if args.token_file else None
    server = make_server(Path(args.state), token, args.bind, args.port)
    serve_until_term(server, args.pidfile, stop_signals=(signal.SIGTERM, signal.SIGINT))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--state", required=True, help="JSON file holding the flags")
    parser.add_argument("--token-file", default="", help="bearer token required on PUT")
    parser.add_argument("--pidfile", default="")
    args = parser.parse_args(argv)
    try:
        serve(args)
    except FlagServiceError as exc:
        parser.exit(2, f"flagservice: {exc}\n")


if __name__ == "__main__":
    main()
