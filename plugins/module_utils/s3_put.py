# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One S3 PutObject, signed with AWS Signature Version 4, on the standard library alone.

The audit callback writes a witness checkpoint when every run opens and when it closes. With
boto3 that is about half a second of CPU per run (importing boto3 and botocore and building a
client), paid by every rollback before its first task. Where the witness names its endpoint and
keys (an S3-compatible store: the lab's SeaweedFS, MinIO, a private S3), this module signs the
one request itself; everything else (AWS's own endpoints, boto3's credential chain, listing and
reading the witness back) stays with boto3.
"""

import base64
import datetime
import hashlib
import hmac
import http.client
import time
import urllib.parse

from ansible_collections.knowngood.runbooks.plugins.module_utils import aws

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_SAFE = "-_.~"


class S3PutError(OSError):
    """The store did not take the object."""


def _hmac(key, text):
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def _quote(text, safe=UNSIGNED_SAFE):
    return urllib.parse.quote(text, safe=safe)


def sign(method, host, path, headers, payload_sha256, access_key, secret_key, region, now):
    """The Authorization header of an S3 request (query-less), as Signature Version 4 defines.

    `headers` are the headers to sign besides host (any case); `path` is the request path
    before encoding; `now` a datetime in UTC."""
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    signed = {"host": host}
    signed.update((name.lower(), " ".join(str(value).split())) for name, value in headers.items())
    names = sorted(signed)
    canonical = "\n".join(
        [
            method,
            _quote(path, safe="/" + UNSIGNED_SAFE),
            "",
            "".join("%s:%s\n" % (name, signed[name]) for name in names),
            ";".join(names),
            payload_sha256,
        ]
    )
    scope = "%s/%s/s3/aws4_request" % (day, region)
    to_sign = "\n".join(
        [ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode("utf-8")).hexdigest()]
    )
    key = _hmac(("AWS4" + secret_key).encode("utf-8"), day)
    for part in (region, "s3", "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    return "%s Credential=%s/%s, SignedHeaders=%s, Signature=%s" % (
        ALGORITHM,
        access_key,
        scope,
        ";".join(names),
        signature,
    )


def put_object(
    endpoint_url,
    bucket,
    key,
    body,
    access_key,
    secret_key,
    region=None,
    content_type="application/octet-stream",
    lock_mode=None,
    lock_until=None,
    attempts=3,
    connect_timeout=3.0,
    read_timeout=10.0,
):
    """PUT `body` (bytes) at bucket/key, path-style, with Content-MD5 (Object Lock requires
    it) and, when `lock_mode` is set, a retention until `lock_until` (an aware datetime).
    Retries connection failures and 5xx/429 answers; raises S3PutError when the store refuses."""
    url = urllib.parse.urlsplit(endpoint_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise S3PutError("the witness endpoint must be an http(s) URL, not %r" % endpoint_url)
    host = url.netloc
    path = "/".join([url.path.rstrip("/"), bucket, key])
    payload_sha256 = hashlib.sha256(body).hexdigest()
    headers = {
        "Content-Type": content_type,
        "Content-MD5": base64.b64encode(hashlib.md5(body).digest()).decode("ascii"),
        "x-amz-content-sha256": payload_sha256,
    }
    if lock_mode:
        headers["x-amz-object-lock-mode"] = lock_mode
        headers["x-amz-object-lock-retain-until-date"] = lock_until.astimezone(
            datetime.UTC
        ).strftime("%Y-%m-%dT%H:%M:%SZ")
    connection_class = (
        http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    )
    failure = None
    for attempt in range(1, attempts + 1):
        now = datetime.datetime.now(datetime.UTC)
        sent = dict(headers, **{"x-amz-date": now.strftime("%Y%m%dT%H%M%SZ")})
        sent["Authorization"] = sign(
            "PUT", host, path, sent, payload_sha256, access_key, secret_key,
            region or "us-east-1", now,
        )  # fmt: skip
        connection = connection_class(host, timeout=connect_timeout)
        try:
            connection.connect()
            connection.sock.settimeout(read_timeout)
            connection.request("PUT", _quote(path, safe="/" + UNSIGNED_SAFE), body, sent)
            response = connection.getresponse()
            answer = response.read(4096)
            if 200 <= response.status < 300:
                return response.getheader("x-amz-version-id")
            failure = "HTTP %d %s" % (response.status, _error_code(answer))
            if response.status < 500 and response.status != 429:
                break
        except (TimeoutError, OSError, http.client.HTTPException) as err:
            failure = "%s: %s" % (type(err).__name__, err)
        finally:
            connection.close()
        if attempt < attempts:
            time.sleep(aws.backoff(attempt, 0.2, 2.0))
    raise S3PutError("PUT s3://%s/%s failed: %s" % (bucket, key, failure))


def _error_code(answer):
    """The <Code> of an S3 error document, or ""."""
    text = answer.decode("utf-8", "replace")
    start = text.find("<Code>")
    end = text.find("</Code>", start)
    return text[start + 6 : end] if start >= 0 and end > start else ""
