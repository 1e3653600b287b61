"""A TCP endpoint that accepts connections and never answers: a black-holed location.

    with StallingEndpoint() as hole:                    # stalls for good
        ... "endpoint_url": hole.url ...
    with StallingEndpoint(upstream=("127.0.0.1", 8333)) as stall:
        ...                                             # stalls
        stall.heal()                                    # from now on forwards to upstream

A refused connection fails in a millisecond; a silent one holds a client until its own
timeouts, which is what a half-dead load balancer or a firewall that drops packets does.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class StallingEndpoint:
    def __init__(self, upstream: tuple[str, int] | None = None) -> None:
        self.upstream = upstream
        self.stalled = True
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", 0), backlog=128)
        self._server.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="stalling-endpoint", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.getsockname()[1]}"

    def heal(self) -> None:
        """Forward new connections to upstream; the held ones are closed (clients retry)."""
        if self.upstream is None:
            raise ValueError("a black hole without upstream cannot heal")
        self.stalled = False
        self._drop_held()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._server.close()
        self._drop_held()

    def __enter__(self) -> StallingEndpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _drop_held(self) -> None:
        held, self._held = self._held, []
        for conn in held:
            conn.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _addr = self._server.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            if self.stalled:
                self._held.append(conn)
                continue
            upstream = socket.create_connection(self.upstream)
            for src, dst in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=_pump, args=(src, dst), daemon=True).start()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)
