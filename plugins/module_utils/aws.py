# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one way this collection reaches AWS (and S3-compatible stores): one client factory and
one opt-in jittered retry, used by the backup store, the audit witness and RDS.

Standard library at import time: boto3 and botocore are imported when the first client is
built (the WAL tool imports this file on every push, most of which never reach S3). Build
clients on the main thread: botocore's client creation and the first boto3 import are not
safe to run from several threads at once.
"""

import random
import socket
import time


class AwsError(Exception):
    """An AWS client could not be built."""


def available():
    """True when boto3 and botocore can be imported here."""
    try:
        import boto3  # noqa: F401
        import botocore  # noqa: F401
    except ImportError:
        return False
    return True


def botocore_config(portable_checksums=False, **options):
    """A botocore Config. portable_checksums: CRC checksums only where an operation requires
    them (botocore >= 1.36 adds them to every request; S3-compatible stores may refuse them)."""
    from botocore.config import Config

    if portable_checksums:
        try:
            return Config(
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                **options,
            )
        except TypeError:  # older botocore: no such options, no such checksums
            pass
    return Config(**options)


def client(
    service,
    *,
    region=None,
    endpoint_url=None,
    access_key=None,
    secret_key=None,
    config=None,
    error=AwsError,
):
    """A boto3 client of its own session. Credentials: the keys given, else boto3's chain
    (AWS_* variables, profile, instance role). `config`: botocore_config()'s keyword arguments
    (timeouts, retries, addressing style, pool size). `error` (AwsError by default) when boto3
    is missing or the client cannot be built."""
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise error("boto3 and botocore are required to reach %s" % service) from None
    kwargs = {
        "region_name": region or None,
        "endpoint_url": endpoint_url or None,
        "config": botocore_config(**(config or {})),
    }
    if access_key or secret_key:
        kwargs.update(
            aws_access_key_id=access_key or None, aws_secret_access_key=secret_key or None
        )
    try:
        return boto3.session.Session().client(service, **kwargs)
    except (BotoCoreError, ClientError, ValueError) as err:
        raise error("cannot create an %s client: %s" % (service.upper(), err)) from err


TRANSIENT_CODES = frozenset(
    {
        "RequestTimeout",
        "RequestTimeoutException",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "InternalError",
        "ServiceUnavailable",
        "503",
        "500",
        "502",
        "504",
    }
)


def error_code(err):
    """The AWS error code of a botocore ClientError ("" for anything else)."""
    response = getattr(err, "response", None)
    if not isinstance(response, dict):
        return ""
    return str(response.get("Error", {}).get("Code", ""))


def is_transient(err):
    """A failure worth retrying: connection refused/reset, timeouts, 5xx, throttling."""
    try:
        from botocore import exceptions as bexc
    except ImportError:  # no boto3: nothing of it to classify
        bexc = None
    if bexc is not None:
        transient_types = (
            bexc.EndpointConnectionError,
            bexc.ConnectTimeoutError,
            bexc.ReadTimeoutError,
            bexc.ConnectionClosedError,
            bexc.ConnectionError,
            bexc.IncompleteReadError,
        )
        if isinstance(err, transient_types):
            return True
        if isinstance(err, bexc.ClientError):
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            return error_code(err) in TRANSIENT_CODES or status >= 500 or status == 429
    return isinstance(err, (ConnectionError, socket.timeout, TimeoutError))


def backoff(attempt, base_delay, max_delay, full_jitter=False):
    """Seconds to wait after failed attempt `attempt` (1, 2, ...): base_delay doubled per
    attempt, at most max_delay, jittered so that many callers do not retry in step: full
    jitter draws from [0, delay], else from [delay/2, delay]."""
    delay = min(max_delay, base_delay * 2 ** (attempt - 1))
    if full_jitter:
        return random.uniform(0, delay)
    return delay * (0.5 + random.random() / 2)


def retry(
    fn,
    *,
    attempts,
    base_delay,
    max_delay,
    retryable=is_transient,
    full_jitter=False,
    sleep=time.sleep,
):
    """fn(), again after backoff() while it raises what `retryable` accepts, at most
    `attempts` times in all; anything else, or the last failure, is raised as it is."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - classified by retryable, else raised
            if attempt >= attempts or not retryable(err):
                raise
            sleep(backoff(attempt, base_delay, max_delay, full_jitter))
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises
