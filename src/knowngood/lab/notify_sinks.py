"""Local notification receivers for the tests and the demo: a webhook endpoint and an SMTP server.

Both are real servers on loopback, run in threads: a Slack-compatible webhook that records
each JSON body (or answers with a chosen status), and just enough SMTP (EHLO/HELO, MAIL, RCPT,
DATA, RSET, NOOP, QUIT) for smtplib to deliver a message.
"""

from __future__ import annotations

import email
import email.policy
import http.server
import json
import socket
import socketserver
import threading
from dataclasses import dataclass, field


class _Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        server = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with server.lock:
            server.hits.append({"path": self.path, "body": json.loads(body or b"{}")})
            status = server.statuses.pop(0) if server.statuses else server.status
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"ok" if status == 200 else b"error")

    def log_message(self, *args):
        return


class WebhookReceiver:
    """`status` is answered to every POST; `statuses` (a list) first, one per POST."""

    def __init__(self, status: int = 200, statuses: list[int] | None = None):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
        self.server.hits, self.server.lock = [], threading.Lock()
        self.server.status, self.server.statuses = status, list(statuses or [])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, token: str = "T000/B000/SECRETTOKEN") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/services/{token}"

    @property
    def hits(self) -> list[dict]:
        with self.server.lock:
            return list(self.server.hits)

    def texts(self) -> list[str]:
        return [h["body"].get("text", "") for h in self.hits]

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    message: email.message.Message = field(repr=False)

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def body(self) -> str:
        return self.message.get_content()


class _Smtp(socketserver.StreamRequestHandler):
    def reply(self, line: str) -> None:
        self.wfile.write((line + "\r\n").encode())

    def handle(self):
        server = self.server
        self.reply("220 knowngood-test ESMTP")
        sender, rcpts = "", []
        while True:
            raw = self.rfile.readline()
            if not raw:
                return
            verb, _, arg = raw.decode().strip().partition(" ")
            verb = verb.upper()
            if verb == "EHLO":
                self.reply("250-knowngood-test")
                self.reply("250 8BITMIME")
            elif verb == "HELO":
                self.reply("250 knowngood-test")
            elif verb == "MAIL":
                sender, rcpts = arg.split(":", 1)[1].strip().strip("<>").split(">")[0], []
                self.reply("250 OK")
            elif verb == "RCPT":
                rcpt = arg.split(":", 1)[1].strip().strip("<>")
                if rcpt in server.refuse:
                    self.reply("550 no such user")
                else:
                    rcpts.append(rcpt)
                    self.reply("250 OK")
            elif verb == "DATA":
                self.reply("354 end with .")
                lines = []
                while True:
                    line = self.rfile.readline()
                    if line in (b".\r\n", b".\n", b""):
                        break
                    lines.append(line[1:] if line.startswith(b"..") else line)
                message = email.message_from_bytes(b"".join(lines), policy=email.policy.default)
                with server.lock:
                    server.mails.append(Mail(sender, rcpts, message))
                self.reply("250 queued")
            elif verb in ("RSET", "NOOP"):
                self.reply("250 OK")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("502 not implemented")


class _SmtpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class SmtpReceiver:
    def __init__(self, refuse: tuple[str, ...] = ()):
        self.server = _SmtpServer(("127.0.0.1", 0), _Smtp)
        self.server.mails, self.server.lock, self.server.refuse = [], threading.Lock(), refuse
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def mails(self) -> list[Mail]:
        with self.server.lock:
            return list(self.server.mails)

    def config(self) -> dict:
        return {"host": "127.0.0.1", "port": self.port, "sender": "knowngood@lab.invalid"}

    def __enter__(self) -> SmtpReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
