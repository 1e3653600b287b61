"""The witness's own S3 PutObject: its Signature Version 4 against AWS's published example and
against botocore's signer, and its answers to a store that refuses or fails."""

import datetime
import hashlib
import http.server
import threading

import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils import s3_put


def test_signature_matches_the_aws_documented_put_object_example():
    # "Signature Calculations for the Authorization Header", example PUT Object (S3 docs).
    body = b"Welcome to Amazon S3."
    sha = hashlib.sha256(body).hexdigest()
    auth = s3_put.sign(
        "PUT",
        "examplebucket.s3.amazonaws.com",
        "/test$file.text",
        {
            "Date": "Fri, 24 May 2013 00:00:00 GMT",
            "x-amz-date": "20130524T000000Z",
            "x-amz-storage-class": "REDUCED_REDUNDANCY",
            "x-amz-content-sha256": sha,
        },
        sha,
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "us-east-1",
        datetime.datetime(2013, 5, 24, tzinfo=datetime.UTC),
    )
    assert auth == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class, "
        "Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
    )


def test_signature_matches_botocores_for_a_path_style_object_lock_put(monkeypatch):
    pytest.importorskip("botocore")
    from botocore import auth as botocore_auth
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    body = b'{"seq": 7}'
    sha = hashlib.sha256(body).hexdigest()
    now = datetime.datetime(2026, 12, 7, 19, 30, 5, tzinfo=datetime.UTC)
    headers = {
        "Content-Type": "application/json",
        "Content-MD5": "bm90LWNoZWNrZWQtaGVyZQ==",
        "x-amz-content-sha256": sha,
        "x-amz-object-lock-mode": "COMPLIANCE",
        "x-amz-object-lock-retain-until-date": "2027-12-07T19:30:05Z",
        "x-amz-date": now.strftime("%Y%m%dT%H%M%SZ"),
    }
    path = "/knowngood-audit/trail a+b/seq-000000000007.json"
    ours = s3_put.sign(
        "PUT", "127.0.0.1:8333", path, headers, sha, "kg-key", "kg-secret", "eu-west-1", now
    )
    request = AWSRequest(
        method="PUT",
        url="http://127.0.0.1:8333" + s3_put._quote(path, safe="/" + s3_put.UNSIGNED_SAFE),
        data=body,
        headers=dict(headers),
    )
    signer = S3SigV4Auth(Credentials("kg-key", "kg-secret"), "s3", "eu-west-1")
    monkeypatch.setattr(botocore_auth, "get_current_datetime", lambda: now.replace(tzinfo=None))
    signer.add_auth(request)
    assert ours == request.headers["Authorization"]


class _Store(http.server.BaseHTTPRequestHandler):
    answers = []
    seen = []

    def do_PUT(self):  # noqa: N802
        length = int(self.headers["Content-Length"])
        self.seen.append((self.path, dict(self.headers), self.rfile.read(length)))
        status, text = self.answers.pop(0)
        self.send_response(status)
        if status == 200:
            self.send_header("x-amz-version-id", "v-1")
        self.end_headers()
        self.wfile.write(text.encode())

    def log_message(self, *_args):
        pass


@pytest.fixture
def store():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Store)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Store.answers, _Store.seen = [], []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_put_retries_a_5xx_sends_md5_and_retention_and_returns_the_version(store, monkeypatch):
    monkeypatch.setattr(s3_put.time, "sleep", lambda _s: None)
    _Store.answers = [(503, "<Error><Code>SlowDown</Code></Error>"), (200, "")]
    until = datetime.datetime(2027, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    version = s3_put.put_object(
        store, "b", "p/seq-1.json", b"{}", "k", "s", lock_mode="COMPLIANCE", lock_until=until
    )
    assert version == "v-1" and len(_Store.seen) == 2
    path, headers, body = _Store.seen[-1]
    assert path == "/b/p/seq-1.json" and body == b"{}"
    assert headers["Content-MD5"] == "mZFLkyvTelC5g8XnyQrpOw=="
    assert headers["x-amz-object-lock-mode"] == "COMPLIANCE"
    assert headers["x-amz-object-lock-retain-until-date"] == "2027-01-02T03:04:05Z"
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=k/")


def test_a_refused_put_is_not_retried_and_names_the_code(store):
    _Store.answers = [(403, "<Error><Code>AccessDenied</Code></Error>")]
    with pytest.raises(s3_put.S3PutError, match="HTTP 403 AccessDenied"):
        s3_put.put_object(store, "b", "k", b"x", "k", "s")
    assert len(_Store.seen) == 1


def test_an_unreachable_store_fails_after_its_attempts(monkeypatch):
    monkeypatch.setattr(s3_put.time, "sleep", lambda _s: None)
    with pytest.raises(s3_put.S3PutError, match="ConnectionRefusedError"):
        s3_put.put_object("http://127.0.0.1:1", "b", "k", b"x", "k", "s", attempts=2)
    with pytest.raises(s3_put.S3PutError, match="http"):
        s3_put.put_object("ftp://x", "b", "k", b"x", "k", "s")
