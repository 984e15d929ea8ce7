"""What every AWS caller here shares (dbops.platform.rds, elasticache, s3, backups): the boto3
clients, credentials, and one mapping of botocore's exceptions to one-line messages safe to show
(explain()).

What the AWS pane and `dbops check` read of each cluster is dbops.platform.aws_views; this
module is below every AWS caller and imports none of them.

Core: no textual; boto3 and botocore are imported inside the functions (they cost a few hundred
ms).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dbops.model import Severity
from dbops.secrets import Secret, SecretError, redact, resolve, scrub_text

if TYPE_CHECKING:
    from dbops.config import AwsLocation

__all__ = [
    "AwsError",
    "AwsSession",
    "Finding",
    "Judged",
    "as_utc",
    "client_error_code",
    "endpoint_shown",
    "explain",
    "new_client",
    "os_reason",
    "resolve_keys",
    "safe_line",
]





# ---------------------------------------------------------------------------------------------
# What the AWS views share


class AwsError(Exception):
    """A failed AWS call. `message` is one line, safe to show; `code` is AWS's error code when
    AWS answered with one (DBInstanceNotFound, AccessDenied ...), else one of ours:
    unreachable, timeout, credentials, config, error."""

    def __init__(self, message: str, code: str = "error"):
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Finding:
    severity: Severity
    text: str


def as_utc(value: Any) -> datetime | None:
    """A time from boto3's answer, aware and in UTC; None for anything that is not a datetime."""
    if not isinstance(value, datetime):
        return None
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


class Judged:
    """What an AWS view's severity is: CRIT when AWS could not be read, else its worst finding.
    (The AWS pane, the Backups pane and `dbops check` all read it.)"""

    error: str | None
    findings: tuple[Finding, ...]

    @property
    def severity(self) -> Severity:
        if self.error is not None:
            return Severity.CRIT
        return Severity.worst([f.severity for f in self.findings], default=Severity.OK)


# ---------------------------------------------------------------------------------------------
# Clients and errors, for every AWS service dbops calls (RDS, CloudWatch, ElastiCache, S3)

# RDS, CloudWatch and ElastiCache calls (AwsSession); S3 transfers use their own (dbops.platform.s3).
CONNECT_TIMEOUT = 5.0  # an unreachable endpoint must fail fast: an operator is waiting
READ_TIMEOUT = 20.0
TOTAL_ATTEMPTS = 2  # the first try and one retry: the pane refreshes again anyway

NO_CREDENTIALS = ("give access_key_id and secret_access_key in the {where}, or provide them the usual AWS way "
                  "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws, an instance profile)")

# What to do about the errors an operator can fix, added to AWS's own words (S3 adds its own).
HINTS = {
    "AccessDenied": "check the credentials and their IAM policy",
    "AccessDeniedException": "check the credentials and their IAM policy",
    "UnauthorizedOperation": "check the credentials and their IAM policy",
    "InvalidClientTokenId": "check access_key_id",
    "SignatureDoesNotMatch": "check secret_access_key",
    "ExpiredToken": "the session token has expired",
}
# Messages botocore makes up from the HTTP status of an answer without a body (a HEAD): they
# only repeat the code.
_ECHOES = ("Not Found", "Forbidden")


def endpoint_shown(aws: AwsLocation, service: str) -> str:
    """The endpoint's URL as messages show it."""
    if aws.endpoint_url:
        return scrub_text(aws.endpoint_url)  # a URL may carry user:password@
    return f"https://{service}.{aws.region}.amazonaws.com"


def safe_line(text: str, secrets: tuple[Secret | None, ...]) -> str:
    """One line without any credential in it."""
    return " ".join(scrub_text(redact(text, *secrets)).split())


def resolve_keys(aws: AwsLocation) -> tuple[Secret | None, Secret | None]:
    """The location's access key id and secret key (None: boto3's usual credential chain).
    Raises SecretError, whose message names the reference, never a value."""
    return resolve(aws.access_key_id), resolve(aws.secret_access_key)


def new_client(aws: AwsLocation, service: str, secrets: tuple[Secret | None, Secret | None], *, read_timeout: float,
               attempts: int, **options: Any) -> Any:
    """A boto3 client of `service` for the location, in a session of its own: boto3's default
    session is shared and not thread-safe, and dbops calls AWS from worker threads. Raises
    ValueError for an endpoint botocore refuses ("Invalid endpoint: ...")."""
    import boto3.session
    from botocore.config import Config

    key_id, secret_key = secrets
    return boto3.session.Session().client(
        service,
        region_name=aws.region,
        endpoint_url=aws.endpoint_url or None,
        aws_access_key_id=key_id.reveal() if key_id else None,
        aws_secret_access_key=secret_key.reveal() if secret_key else None,
        config=Config(connect_timeout=CONNECT_TIMEOUT, read_timeout=read_timeout,
                      retries={"mode": "standard", "total_max_attempts": attempts}, user_agent_extra="dbops", **options),
    )


def client_error_code(exc: Any) -> str:
    """AWS's error code of a botocore ClientError; the HTTP status when the answer had no body."""
    return str(exc.response.get("Error", {}).get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
               or "error")


def os_reason(exc: BaseException) -> str | None:
    """The OS-level reason under a connection error ('connection refused', 'name or service not
    known'), found by walking botocore's and urllib3's wrapped exceptions."""
    stack: list[BaseException] = [exc]
    seen: set[int] = set()
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno:
            return (e.strerror or os.strerror(e.errno)).lower()
        kwargs = getattr(e, "kwargs", None)
        for inner in ((kwargs or {}).get("error") if isinstance(kwargs, dict) else None,
                      getattr(e, "reason", None), e.__cause__, e.__context__):
            if isinstance(inner, BaseException):
                stack.append(inner)
    return None


def explain(exc: BaseException, *, target: str, endpoint: str, secrets: tuple[Secret | None, ...], no_credentials: str,
            read_timeout: float, hints: Mapping[str, str] = HINTS, code_of: Callable[[Any], str] = client_error_code,
            unreachable: str | None = None) -> tuple[str, str]:
    """botocore's exception `exc` as (one line safe to show, code): AWS's error code and message
    with a hint, missing credentials, an endpoint that cannot be reached or does not answer.
    `target` is what was being done; `endpoint` as shown (endpoint_shown, or "S3 endpoint URL");
    `no_credentials` the whole line for missing credentials. `unreachable` starts the lines
    about the endpoint itself (cannot reach it, TLS with it), "<target>: " unless given: S3
    names the endpoint alone there, since no object of its is at fault."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.ClientError):
        code = code_of(exc)
        detail = [m for m in (str(exc.response.get("Error", {}).get("Message") or ""), hints.get(code))
                  if m and m != code and m not in _ECHOES]
        return safe_line(f"{target}: {code}" + (f" ({'; '.join(detail)})" if detail else ""), secrets), code
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return no_credentials, "credentials"
    at = f"{target}: " if unreachable is None else unreachable
    reason = os_reason(exc) or safe_line(str(exc), secrets)
    if isinstance(exc, bx.ConnectTimeoutError):
        return safe_line(f"{at}cannot reach {endpoint}: no answer within {CONNECT_TIMEOUT:g} s", secrets), "unreachable"
    if isinstance(exc, bx.ReadTimeoutError):
        return safe_line(f"{target}: {endpoint} sent nothing for {read_timeout:g} s", secrets), "timeout"
    if isinstance(exc, bx.SSLError):
        return safe_line(f"{at}TLS error with {endpoint}: {reason}", secrets), "unreachable"
    if isinstance(exc, bx.ConnectionError):  # EndpointConnectionError, ProxyConnectionError ...
        return safe_line(f"{at}cannot reach {endpoint}: {reason}", secrets), "unreachable"
    if isinstance(exc, bx.HTTPClientError):  # connection closed, response stream broken
        return safe_line(f"{target}: the connection to {endpoint} broke: {reason}", secrets), "unreachable"
    return safe_line(f"{target}: {type(exc).__name__}: {exc}", secrets), "error"


@contextlib.contextmanager
def translated(make: Callable[[BaseException], Exception]) -> Iterator[None]:
    """botocore's exceptions raised inside become `make(exc)` (one line, no credentials)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise make(exc) from None


class AwsSession:
    """boto3 clients for one AwsLocation, and the secrets their messages must never show."""

    def __init__(self, aws: AwsLocation, target: str):
        self.aws = aws
        self.target = target
        try:
            self.secrets = resolve_keys(aws)
        except SecretError as exc:
            raise AwsError(f"{target}: AWS credentials: {exc}", "credentials") from None
        self._clients: dict[str, Any] = {}

    def client(self, service: str) -> Any:
        if service not in self._clients:
            try:
                self._clients[service] = new_client(self.aws, service, self.secrets, read_timeout=READ_TIMEOUT,
                                                    attempts=TOTAL_ATTEMPTS)
            except ValueError as exc:  # botocore's "Invalid endpoint: ..."
                raise AwsError(f"{self.target}: endpoint {endpoint_shown(self.aws, service)}: "
                               f"{safe_line(str(exc), self.secrets)}", "config") from None
        return self._clients[service]

    def explain(self, exc: BaseException, service: str, target: str) -> AwsError:
        message, code = explain(exc, target=target, endpoint=endpoint_shown(self.aws, service), secrets=self.secrets,
                                read_timeout=READ_TIMEOUT,
                                no_credentials=f"{target}: no AWS credentials found; "
                                               + NO_CREDENTIALS.format(where="cluster's aws = { ... }"))
        return AwsError(message, code)

    def errors(self, service: str, target: str | None = None) -> contextlib.AbstractContextManager[None]:
        """Turn botocore's exceptions raised inside into AwsError (one line, no credentials)."""
        return translated(lambda exc: self.explain(exc, service, target or self.target))
