"""module_utils/aws: the one client factory and the one jittered retry."""

from __future__ import annotations

import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils import aws
from botocore.exceptions import ClientError, EndpointConnectionError


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError(
        {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
    )


def test_client_takes_endpoint_region_keys_and_config() -> None:
    s3 = aws.client(
        "s3",
        endpoint_url="http://127.0.0.1:1",
        region="eu-west-1",
        access_key="AKIDEXAMPLE",
        secret_key="secret",
        config={
            "portable_checksums": True,
            "s3": {"addressing_style": "path"},
            "connect_timeout": 3,
            "read_timeout": 30,
            "retries": {"max_attempts": 1, "mode": "standard"},
        },
    )
    assert s3.meta.endpoint_url == "http://127.0.0.1:1"
    assert s3.meta.region_name == "eu-west-1"
    assert s3.meta.config.connect_timeout == 3 and s3.meta.config.read_timeout == 30
    assert s3.meta.config.s3 == {"addressing_style": "path"}
    assert s3._request_signer._credentials.access_key == "AKIDEXAMPLE"


def test_client_errors_take_the_callers_class() -> None:
    class Mine(Exception):
        pass

    with pytest.raises(Mine, match="cannot create an S3 client"):
        aws.client("s3", endpoint_url="not a url", region="eu-west-1", error=Mine)


@pytest.mark.parametrize("attempt", [1, 2, 3, 6])
def test_backoff_is_capped_and_jittered(attempt: int) -> None:
    delay = min(8.0, 0.5 * 2 ** (attempt - 1))
    for _ in range(50):
        assert delay / 2 <= aws.backoff(attempt, 0.5, 8.0) <= delay
        assert 0 <= aws.backoff(attempt, 0.5, 8.0, full_jitter=True) <= delay


def test_retry_retries_transient_errors_only() -> None:
    slept: list[float] = []
    calls = iter([client_error("SlowDown", 503), EndpointConnectionError(endpoint_url="x"), "ok"])

    def flaky():
        outcome = next(calls)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert aws.retry(flaky, attempts=4, base_delay=1.0, max_delay=8.0, sleep=slept.append) == "ok"
    assert len(slept) == 2 and 0.5 <= slept[0] <= 1.0 and 1.0 <= slept[1] <= 2.0

    denied = client_error("AccessDenied", 403)

    def refuse():
        raise denied

    with pytest.raises(ClientError):
        aws.retry(refuse, attempts=4, base_delay=1.0, max_delay=8.0, sleep=slept.append)
    assert len(slept) == 2  # not retried


def test_retry_gives_up_after_its_attempts() -> None:
    slept: list[float] = []

    def throttled():
        raise client_error("Throttling")

    with pytest.raises(ClientError):
        aws.retry(throttled, attempts=3, base_delay=0.1, max_delay=1.0, sleep=slept.append)
    assert len(slept) == 2
