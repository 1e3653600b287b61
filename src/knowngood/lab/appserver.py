"""The lab's application runtime: serves whichever release its slot link points to.

Like gunicorn for a real app, the runtime stays up while the release code changes under it:
SIGHUP re-reads the slot link and imports the new release's handler.py, so a switch is a
graceful reload with no refused connection. Endpoints: /version, /health, /metrics, /db and
/ (the application page, whose behaviour is the release's own code).

The host's own configuration (shared/app.conf, JSON) is re-read on the same SIGHUP. Like
`nginx -t` and `nginx -s reload`, the runtime validates a file with `--check-config FILE` and
signals running instances with `--reload PIDFILE...`; an invalid file at SIGHUP is logged and
the last valid configuration stays in force.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import signal
import sys
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

from knowngood.errors import ConfigInvalid
from knowngood.lab.serving import serve_until_term

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# app.conf: every setting, its default. An unknown key is an error, not ignored: a typo in a
# setting name must not pass validation and silently keep the default.
CONFIG_DEFAULTS: dict = {
    # Extra headers on every response (e.g. Cache-Control, Strict-Transport-Security).
    "response_headers": {},
    # Seconds a request waits for a database connection before it answers 500.
    "db_connect_timeout_s": 2,
}
HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
HEADER_VALUE_RE = re.compile(r"^[\x20-\x7e]{0,1024}$")
# Headers the runtime sets itself; a configuration must not override the framing or identity.
RESERVED_HEADERS = {
    "connection",
    "content-length",
    "content-type",
    "transfer-encoding",
    "x-app-config",
    "x-host",
    "x-release",
}


class Settings:
    """One validated app.conf: the values and the digest of the text they came from."""

    def __init__(self, values: dict, digest: str) -> None:
        self.response_headers: dict[str, str] = values["response_headers"]
        self.db_connect_timeout_s: float = values["db_connect_timeout_s"]
        self.digest = digest


def parse_config(data: bytes) -> Settings:
    """Validate app.conf; raises ConfigInvalid naming the first problem."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigInvalid(f"not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigInvalid("the top level must be a JSON object")
    unknown = sorted(set(raw) - set(CONFIG_DEFAULTS))
    if unknown:
        raise ConfigInvalid(
            f"unknown setting {unknown[0]!r} (known: {', '.join(sorted(CONFIG_DEFAULTS))})"
        )
    values = {**CONFIG_DEFAULTS, **raw}
    headers = values["response_headers"]
    if not isinstance(headers, dict):
        raise ConfigInvalid("response_headers must be an object of header name -> value")
    for name, value in headers.items():
        if not HEADER_NAME_RE.match(name) or name.lower() in RESERVED_HEADERS:
            raise ConfigInvalid(f"response_headers: {name!r} is not a header this app may set")
        if not isinstance(value, str) or not HEADER_VALUE_RE.match(value):
            raise ConfigInvalid(
                f"response_headers: the value of {name} must be printable ASCII on one line"
            )
    timeout = values["db_connect_timeout_s"]
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 30:
        raise ConfigInvalid(
            f"db_connect_timeout_s must be a number of seconds in (0, 30], not {timeout!r}"
        )
    return Settings(values, hashlib.sha256(data).hexdigest()[:12])


def read_config(path: str) -> Settings:
    if not path:
        return Settings(dict(CONFIG_DEFAULTS), "defaults")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigInvalid(f"cannot read {path}: {exc.strerror}") from None
    return parse_config(data)


class Metrics:
    """Prometheus counters and a latency histogram, guarded by one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.buckets: dict[tuple[str, float], int] = defaultdict(int)
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def observe(self, release: str, path: str, code: int, seconds: float) -> None:
        with self.lock:
            self.requests[(release, path, code)] += 1
            for bound in BUCKETS:
                if seconds <= bound:
                    self.buckets[(release, bound)] += 1
            self.sums[release] += seconds
            self.counts[release] += 1

    def render(self, labels: str) -> str:
        out = [
            "# HELP app_requests_total HTTP requests served.",
            "# TYPE app_requests_total counter",
        ]
        with self.lock:
            for (release, path, code), n in sorted(self.requests.items()):
                out.append(
                    f'app_requests_total{{{labels},release="{release}",path="{path}",'
                    f'code="{code}"}} {n}'
                )
            out += [
                "# HELP app_errors_total HTTP requests answered with a 5xx status.",
                "# TYPE app_errors_total counter",
            ]
            errors: dict[str, int] = defaultdict(int)
            for (release, _path, code), n in self.requests.items():
                errors[release] += n if code >= 500 else 0
            for release, n in sorted(errors.items()):
                out.append(f'app_errors_total{{{labels},release="{release}"}} {n}')
            out += [
                "# HELP app_request_duration_seconds Request latency.",
                "# TYPE app_request_duration_seconds histogram",
            ]
            for release in sorted(self.counts):
                for bound in BUCKETS:
                    n = self.buckets[(release, bound)]
                    out.append(
                        f'app_request_duration_seconds_bucket{{{labels},release="{release}",'
                        f'le="{bound}"}} {n}'
                    )
                out.append(
                    f'app_request_duration_seconds_bucket{{{labels},release="{release}",'
                    f'le="+Inf"}} {self.counts[release]}'
                )
                out.append(
                    f'app_request_duration_seconds_sum{{{labels},release="{release}"}} '
                    f"{self.sums[release]:.6f}"
                )
                out.append(
                    f'app_request_duration_seconds_count{{{labels},release="{release}"}} '
                    f"{self.counts[release]}"
                )
        return "\n".join(out) + "\n"


class Flags:
    """Feature flags from the host's flags.json, re-read when its mtime changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.mtime = -1.0
        self.values: dict[str, bool] = {}
        self.lock = threading.Lock()

    def get(self) -> dict[str, bool]:
        if self.path is None:
            return {}
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return {}
        with self.lock:
            if mtime != self.mtime:
                try:
                    data = json.loads(self.path.read_text())
                    self.values = {
                        k: bool(v.get("enabled") if isinstance(v, dict) else v)
                        for k, v in data.get("flags", data).items()
                    }
                    self.mtime = mtime
                except (ValueError, OSError, AttributeError):
                    pass  # a half-written file keeps the last good values
            return dict(self.values)


class DsnFile:
    """The database the app talks to, from the host's database.json when it exists.

    A failover repoints the app by rewriting this file (a config-management change, as a
    production app re-reads its DSN from a templated file or a service registry); it is
    re-read when its mtime changes, so the next request goes to the new primary.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.mtime = -1
        self.dsn = ""
        self.lock = threading.Lock()

    def get(self) -> str:
        if self.path is None:
            return ""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return ""
        with self.lock:
            if mtime != self.mtime:
                try:
                    self.dsn = str(json.loads(self.path.read_text())["dsn"])
                    self.mtime = mtime
                except (ValueError, OSError, KeyError, TypeError):
                    pass  # a half-written file keeps the last good value
            return self.dsn


class Release:
    """One loaded release: its id and its handler module."""

    def __init__(self, release_dir: Path) -> None:
        manifest = json.loads((release_dir / "release.json").read_text())
        self.id: str = manifest["id"]
        self.dir = release_dir
        spec = importlib.util.spec_from_file_location(
            f"kg_release_{self.id.replace('.', '_').replace('-', '_')}_{time.monotonic_ns()}",
            release_dir / "handler.py",
        )
        if spec is None or spec.loader is None:
            raise RuntimeError(f"no handler.py in {release_dir}")
        module: ModuleType = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.handler = module


class App:
    def __init__(self, args: argparse.Namespace) -> None:
        self.link = Path(args.link)
        self.pool = args.pool
        self.host = args.host
        self.dsn = args.dsn
        self.dsn_file = DsnFile(Path(args.dsn_file) if args.dsn_file else None)
        self.flags = Flags(Path(args.flags) if args.flags else None)
        self.metrics = Metrics()
        self.release: Release | None = None
        self.reloads = 0
        self.config_path = args.config
        # A runtime that starts on an invalid configuration refuses to start, like nginx.
        self.settings = read_config(self.config_path)
        self.load()

    def reload(self) -> None:
        """SIGHUP: the release the slot points to, and app.conf if it is valid."""
        try:
            settings = read_config(self.config_path)
        except ConfigInvalid as exc:
            print(
                f"{self.config_path}: {exc}; keeping configuration {self.settings.digest}",
                file=sys.stderr,
                flush=True,
            )
        else:
            if settings.digest != self.settings.digest:
                print(f"configuration {settings.digest} loaded", file=sys.stderr, flush=True)
            self.settings = settings
        self.load()

    def load(self) -> None:
        try:
            target = self.link.resolve(strict=True)
        except (FileNotFoundError, RuntimeError):
            print(f"{self.link} does not resolve; serving 503", file=sys.stderr, flush=True)
            self.release = None
            return
        try:
            self.release = Release(target)
        except Exception as exc:  # a broken release must not take the runtime down
            print(f"cannot load release at {target}: {exc!r}", file=sys.stderr, flush=True)
            return
        self.reloads += 1
        print(f"serving {self.release.id} from {target}", file=sys.stderr, flush=True)

    def db_query(self, sql: str, params: tuple = ()) -> list[tuple]:
        import psycopg  # imported lazily: /version must not depend on the driver

        dsn = self.dsn_file.get() or self.dsn
        # libpq takes whole seconds; anything below one second means one.
        timeout = max(1, round(self.settings.db_connect_timeout_s))
        with psycopg.connect(dsn, connect_timeout=timeout, autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    @property
    def labels(self) -> str:
        return f'host="{self.host}",pool="{self.pool}"'


def make_handler(app: App) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            return  # access logs come from nginx; keep the runtime quiet

        def reply(
            self,
            code: int,
            body: dict | str,
            content_type: str = "application/json",
            release: Release | None = None,
        ):
            data = (json.dumps(body) if isinstance(body, dict) else body).encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            # The release that answered, not the one loaded now: a request in flight across a
            # switch is the old release's answer (a v2 error must not read as v1's).
            release = release or app.release
            settings = app.settings  # one reference per response: a reload mid-way is safe
            self.send_header("X-Release", release.id if release else "none")
            self.send_header("X-Host", app.host)
            self.send_header("X-App-Config", settings.digest)
            for name, value in settings.response_headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            started = time.perf_counter()
            release = app.release  # one reference per request: a reload mid-request is safe
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self.reply(200, app.metrics.render(app.labels), "text/plain; version=0.0.4")
                return
            if release is None:
                code, body = 503, {"error": "no release deployed", "host": app.host}
            elif path == "/version":
                code, body = 200, {"release": release.id, "host": app.host, "pool": app.pool}
            else:
                ctx = {
                    "path": path,
                    "host": app.host,
                    "pool": app.pool,
                    "flags": app.flags.get(),
                    "db": app.db_query,
                }
                try:
                    code, body = release.handler.handle(ctx)
                except Exception as exc:
                    code, body = 500, {"error": repr(exc)}
                body = {"release": release.id, "host": app.host, **body}
            self.reply(code, body, release=release)
            app.metrics.observe(
                release.id if release else "none", path, code, time.perf_counter() - started
            )

    return Handler


def serve(args: argparse.Namespace) -> None:
    app = App(args)
    server = ThreadingHTTPServer((args.bind, args.port), make_handler(app))
    server.daemon_threads = True
    server.request_queue_size = 256
    serve_until_term(server, args.pidfile, on_hup=app.reload)


def check_config(path: str) -> int:
    """--check-config: 0 and 'ok' for a valid file, 1 and the problem otherwise."""
    try:
        settings = read_config(path)
    except ConfigInvalid as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 1
    print(f"{path}: ok ({settings.digest})")
    return 0


def signal_reload(pidfiles: list[str]) -> int:
    """--reload: SIGHUP every instance; 1 if any is not running (its reload did not happen)."""
    missing = []
    for pidfile in pidfiles:
        try:
            pid = int(Path(pidfile).read_text().strip())
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError) as exc:
            missing.append(f"{pidfile}: {exc}")
            continue
        print(f"reload: SIGHUP to {pid} ({pidfile})")
    if missing:
        print("reload: instances not signalled: " + "; ".join(missing), file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--link", help="slot symlink to serve")
    parser.add_argument("--port", type=int)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--pool", default="blue")
    parser.add_argument("--host", default="app")
    parser.add_argument("--dsn", default="")
    parser.add_argument("--flags", default="")
    parser.add_argument("--dsn-file", default="", help="database.json that overrides --dsn")
    parser.add_argument("--pidfile", default="")
    parser.add_argument("--config", default="", help="app.conf (JSON), re-read on SIGHUP")
    parser.add_argument("--check-config", metavar="FILE", help="validate FILE and exit")
    parser.add_argument(
        "--reload", nargs="+", metavar="PIDFILE", help="SIGHUP the instances and exit"
    )
    args = parser.parse_args(argv)
    if args.check_config:
        sys.exit(check_config(args.check_config))
    if args.reload:
        sys.exit(signal_reload(args.reload))
    if not args.link or args.port is None:
        parser.error("--link and --port are required to serve")
    serve(args)


if __name__ == "__main__":
    main()
