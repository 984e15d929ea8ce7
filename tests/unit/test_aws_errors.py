"""One mapping of botocore's exceptions to one-line messages (dbops.platform.aws.explain), worded
per service: RDS/ElastiCache through AwsSession, S3 through dbops.platform.s3."""

from __future__ import annotations

from typing import Any

import pytest
from botocore import exceptions as bx

from dbops.config import AwsLocation, S3Location
from dbops.platform import s3
from dbops.platform.aws import AwsError, AwsSession, explain
from dbops.secrets import Secret

ENDPOINT = "http://127.0.0.1:1"


def client_error(code: str, message: str = "", status: int = 400) -> bx.ClientError:
    body: dict[str, Any] = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return bx.ClientError(body, "DescribeDBInstances")  # type: ignore[arg-type]


def refused() -> bx.EndpointConnectionError:
    exc = bx.EndpointConnectionError(endpoint_url=ENDPOINT)
    exc.__context__ = ConnectionRefusedError(111, "Connection refused")
    return exc


def rds_error(exc: BaseException) -> AwsError:
    return AwsSession(AwsLocation(region="eu-west-1", endpoint_url=ENDPOINT), "RDS instance db1").explain(exc, "rds", "RDS instance db1")


def s3_error(exc: BaseException) -> s3.S3Error:
    location = S3Location(bucket="b1", region="eu-west-1", endpoint_url=ENDPOINT)
    return s3._translate(exc, location, (), "s3://b1/k")


@pytest.mark.parametrize(("exc", "rds_text", "s3_text", "code"), [
    (client_error("AccessDenied", "not allowed"), "RDS instance db1: AccessDenied (not allowed; check the credentials and their IAM policy)",
     "s3://b1/k: AccessDenied (not allowed; check the credentials and the bucket policy)", "AccessDenied"),
    (refused(), f"RDS instance db1: cannot reach {ENDPOINT}: connection refused", f"cannot reach S3 endpoint {ENDPOINT}: connection refused",
     "unreachable"),
    (bx.ConnectTimeoutError(endpoint_url=ENDPOINT), f"RDS instance db1: cannot reach {ENDPOINT}: no answer within 5 s",
     f"cannot reach S3 endpoint {ENDPOINT}: no answer within 5 s", "unreachable"),
    (bx.ReadTimeoutError(endpoint_url=ENDPOINT), f"RDS instance db1: {ENDPOINT} sent nothing for 20 s",
     f"s3://b1/k: S3 endpoint {ENDPOINT} sent nothing for 60 s", "timeout"),
])
def test_one_mapping_words_each_service_as_before(exc: BaseException, rds_text: str, s3_text: str, code: str) -> None:
    r, s = rds_error(exc), s3_error(exc)
    assert (r.message, r.code) == (rds_text, code)
    assert (s.message, s.code) == (s3_text, code)


def test_missing_credentials_say_where_to_give_them() -> None:
    assert rds_error(bx.NoCredentialsError()).message.startswith("RDS instance db1: no AWS credentials found; give access_key_id and "
                                                                 "secret_access_key in the cluster's aws = { ... }, or provide them")
    assert s3_error(bx.NoCredentialsError()).message.startswith("bucket b1: no S3 credentials found; give access_key_id and "
                                                                "secret_access_key in the config, or provide them")


def test_s3_names_a_missing_bucket_and_its_http_status_codes() -> None:
    assert s3_error(client_error("NoSuchBucket")).message == f"bucket b1: NoSuchBucket (no such bucket at {ENDPOINT})"
    missing = s3_error(client_error("", "Not Found", 404))
    assert (missing.message, missing.code) == ("s3://b1/k: NotFound", "NotFound")
    assert isinstance(missing, AwsError)


def test_a_secret_in_aws_words_never_shows() -> None:
    message, _code = explain(client_error("InvalidSignature", "key hunter2 rejected"), target="t", endpoint=ENDPOINT,
                             secrets=(Secret("hunter2"),), no_credentials="", read_timeout=1.0)
    assert "hunter2" not in message and "***" in message
