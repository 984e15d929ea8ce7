"""Connections to Redis nodes with a cluster's credentials and TLS, and errors turned into
states and sentences an operator can use. redis-py is imported here, on first use."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from dbops.config import ClusterRef
from dbops.engines.base import classify_redacted
from dbops.model import Reachability, first_line
from dbops.secrets import Secret, resolve
from dbops.tls import check_files


def _raw(response: Any, **options: Any) -> Any:
    return response


class Credentials:
    """The resolved secrets of one cluster (resolved once per connect; never printed)."""

    def __init__(self, ref: ClusterRef) -> None:
        opts = ref.cluster.redis
        assert opts is not None
        self.username = opts.username
        self.password: Secret | None = resolve(ref.cluster.password)
        self.sentinel_password: Secret | None = resolve(opts.sentinel_password) if opts.sentinel_password else self.password


def tls_kwargs(ref: ClusterRef) -> dict[str, Any]:
    """redis-py's ssl_* arguments. Redis has no TLS negotiation: `disable` and `prefer` are
    plain connections, `require` is TLS without certificate checks, verify-ca/verify-full check."""
    tls = ref.cluster.tls
    if tls.mode in ("disable", "prefer"):
        return {}
    check_files(tls)
    return {
        "ssl": True,
        "ssl_ca_certs": tls.ca_file,
        "ssl_certfile": tls.cert_file,
        "ssl_keyfile": tls.key_file,
        "ssl_cert_reqs": "none" if tls.mode == "require" else "required",
        "ssl_check_hostname": tls.mode == "verify-full",
    }


def connect(ref: ClusterRef, address: str, *, sentinel: bool = False, timeout: float | None = None,
            creds: Credentials | None = None, decode: bool = True) -> Any:
    """A redis.asyncio.Redis for one node (no I/O until the first command). Replies are str
    (bytes with decode=False: keys and DUMP payloads); INFO is returned unparsed (dbops parses
    it, the same for every server version)."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    creds = creds or Credentials(ref)
    host, _, port = address.rpartition(":")
    secret = creds.sentinel_password if sentinel else creds.password
    t = timeout if timeout is not None else ref.timeout
    client = aioredis.Redis(
        host=host, port=int(port), username=None if sentinel else creds.username,
        password=secret.reveal() if secret is not None else None, decode_responses=decode,
        # SLOWLOG arguments and keys may be binary: shown with replacement characters, never a failed poll.
        encoding_errors="replace",
        socket_timeout=t, socket_connect_timeout=t,
        # No retries: a refused connection is DOWN now, not a TIMEOUT after redis-py's backoff.
        retry=Retry(NoBackoff(), 0),
        client_name="dbops", **tls_kwargs(ref),
    )
    client.set_response_callback("INFO", _raw)
    return client


async def close(client: Any) -> None:
    """Close a client, bounded: a stopped server must not hold up the caller."""
    try:
        await asyncio.wait_for(client.aclose(), timeout=1.0)
    except (TimeoutError, OSError, ConnectionError):
        # The socket is already dead or stuck; dropping our reference is all that is left to do.
        pass


def classify(exc: BaseException, where: str, timeout: float, *secrets: Secret | None) -> tuple[Reachability, str]:
    return classify_redacted(exc, where, timeout, _driver_reachability, *secrets)


def _driver_reachability(exc: BaseException, where: str, timeout: float) -> tuple[Reachability, str]:
    """redis-py's own errors (classify_redacted has judged the common ones), and the socket
    errors of dbops' own connections (dbops.engines.redis.wire), said the same way."""
    if isinstance(exc, ConnectionRefusedError):
        return Reachability.DOWN, f"connection refused at {where}"
    import redis.exceptions as rex

    if isinstance(exc, rex.AuthenticationError) or (isinstance(exc, rex.ResponseError) and
                                                      ("NOAUTH" in str(exc) or "WRONGPASS" in str(exc) or "NOPERM" in str(exc))):
        return Reachability.AUTH, f"{where} rejected the credentials: {first_line(str(exc))}"
    if isinstance(exc, rex.TimeoutError):
        return Reachability.TIMEOUT, f"no answer from {where} within {timeout:g}s"
    if isinstance(exc, rex.ConnectionError):
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ssl.SSLError) or "SSL" in str(exc):
            return Reachability.TLS, f"TLS with {where} failed: {first_line(str(exc))}"
        if "refused" in str(exc).lower():
            return Reachability.DOWN, f"connection refused at {where}"
        return Reachability.DOWN, f"connection to {where} failed: {first_line(str(exc))}"
    if isinstance(exc, rex.ResponseError):
        return Reachability.ERROR, f"{where} answered an error: {first_line(str(exc))}"
    if isinstance(exc, ssl.SSLError):
        return Reachability.TLS, f"TLS with {where} failed: {first_line(str(exc))}"
    if isinstance(exc, (ConnectionError, OSError)):
        return Reachability.DOWN, f"connection to {where} failed: {first_line(str(exc)) or type(exc).__name__}"
    return Reachability.ERROR, f"{where}: {type(exc).__name__}: {first_line(str(exc))}"
