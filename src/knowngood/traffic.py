"""Live traffic for drills, the demo and the tests: users hitting a URL while a runbook runs.

Each response is kept as (start time, status or None, X-Release), so a caller can tell which
release answered before, during and after a switch, and count what failed.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request


class Traffic:
    """A few threads requesting url until the block ends (and never longer than max_seconds)."""

    def __init__(self, url: str, threads: int = 4, max_seconds: float = 300) -> None:
        self.url = url
        self.threads = threads
        self.max_seconds = max_seconds
        self.responses: list[tuple[float, int | None, str | None]] = []
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as resp:
                    code, release = resp.status, resp.headers.get("X-Release")
            except urllib.error.HTTPError as exc:
                code, release = exc.code, exc.headers.get("X-Release")
            except OSError:
                code, release = None, None
            self.responses.append((started, code, release))

    def __enter__(self) -> Traffic:
        for _ in range(self.threads):
            worker = threading.Thread(target=self._run, daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=10)

    @property
    def failed(self) -> list[tuple[float, int | None, str | None]]:
        return [r for r in self.responses if r[1] is None or r[1] >= 500]

    def report(self) -> str:
        by_release: dict[str, int] = {}
        for _started, _code, release in self.responses:
            by_release[release or "none"] = by_release.get(release or "none", 0) + 1
        return f"{len(self.responses)} requests, {len(self.failed)} failed, served by {by_release}"
