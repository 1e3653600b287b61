"""How the lab's small HTTP daemons run: until SIGTERM, with a pidfile for their lifetime."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from http.server import HTTPServer
from pathlib import Path


def serve_until_term(
    server: HTTPServer,
    pidfile: str = "",
    on_hup: Callable[[], None] | None = None,
    stop_signals: tuple[int, ...] = (signal.SIGTERM,),
) -> None:
    """Serve until a stop signal; SIGHUP calls on_hup (a graceful reload) when given."""

    def on_stop(_signum: int, _frame: object) -> None:
        # shutdown() waits for serve_forever to return, so it cannot run in this handler.
        threading.Thread(target=server.shutdown, daemon=True).start()

    for signum in stop_signals:
        signal.signal(signum, on_stop)
    if on_hup is not None:
        signal.signal(signal.SIGHUP, lambda _signum, _frame: on_hup())
    if pidfile:
        Path(pidfile).write_text(f"{os.getpid()}\n")
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        if pidfile:
            Path(pidfile).unlink(missing_ok=True)
