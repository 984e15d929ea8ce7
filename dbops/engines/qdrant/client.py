"""Talking to one Qdrant node: qdrant-client (AsyncQdrantClient, REST) for the runbooks' points,
snapshots and aliases, and httpx for the rest (/readyz, /cluster, /collections/{c}/cluster,
/telemetry, streaming a snapshot down, and the pane's whole refresh: see the adapter).

Both libraries are imported on first use, off the event loop's thread. Every failure becomes a
QdrantError whose message is one line, names the node and never holds the API key; its
`reachability` says how the pane shows it (DOWN, TIMEOUT, AUTH, TLS, ERROR).

API keys: the key travels in the `api-key` header. Qdrant answers 401 to a wrong or missing key
and 403 to a read-only key asked to change something.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dbops.config import ClusterRef, Member
from dbops.engines.base import import_off_loop, tls_reachability
from dbops.model import Reachability, first_line
from dbops.secrets import Secret, redact, resolve, scrub_text
from dbops.tls import client_context

READ_ONLY_HINT = ("the API key is read-only; give the runbook a key that may manage the cluster "
                  "(qdrant.manage_api_key)")

class QdrantError(Exception):
    """A failed call to a node. `message` is one line, safe to show."""

    def __init__(self, message: str, reachability: Reachability = Reachability.ERROR, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.reachability = reachability
        self.status = status


def scheme(ref: ClusterRef) -> str:
    return "http" if ref.cluster.tls.mode in ("disable", "prefer") else "https"


def verify_option(ref: ClusterRef) -> bool | ssl.SSLContext:
    """httpx's `verify`: `require` encrypts without checking the certificate; verify-ca and
    verify-full check it (with tls.ca_file when given)."""
    tls = ref.cluster.tls
    if tls.mode in ("disable", "prefer"):
        return True
    if tls.mode == "require" and not (tls.ca_file or tls.cert_file):
        return False
    return client_context(tls)


def runbook_key(ref: ClusterRef) -> Secret | None:
    """The key runbooks change things with: qdrant.manage_api_key, else the cluster's password."""
    opts = ref.cluster.qdrant
    return resolve(opts.manage_api_key if opts is not None and opts.manage_api_key is not None else ref.cluster.password)


def reading_key(ref: ClusterRef) -> Secret | None:
    return resolve(ref.cluster.password)


def _server_message(body: bytes | str) -> str:
    """Qdrant's error text from an ErrorResponse body ({"status": {"error": "..."}})."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except ValueError:
        return first_line(text)
    if isinstance(data, dict):
        status = data.get("status")
        if isinstance(status, dict) and status.get("error"):
            return first_line(str(status["error"]))
        if isinstance(status, str) and status != "ok":
            return first_line(status)
    return first_line(text)


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in out and len(out) < 10:
        out.append(e)
        e = getattr(e, "source", None) or e.__cause__ or e.__context__
    return out


class NodeClient:
    """One node, one key. `what` in messages names the node (its configured name and address)."""

    def __init__(self, ref: ClusterRef, member: Member, key: Secret | None, timeout: float | None = None,
                 secrets: tuple[Secret | None, ...] = ()):
        self.ref = ref
        self.member = member
        self.key = key
        self.timeout = timeout or ref.timeout
        self.secrets = (key, *secrets)
        self.address = f"{member.host}:{member.port}"
        self.url = f"{scheme(ref)}://{self.address}"
        self._http: Any = None
        self._qdrant: Any = None

    @property
    def what(self) -> str:
        return f"{self.member.name} ({self.address})"

    def _headers(self) -> dict[str, str]:
        return {"api-key": self.key.reveal()} if self.key is not None and self.key.reveal() else {}

    async def http(self) -> Any:
        if self._http is None:
            httpx = await import_off_loop("httpx")
            self._http = httpx.AsyncClient(base_url=self.url, headers={**self._headers(), "User-Agent": "dbops"},
                                           timeout=self.timeout, verify=verify_option(self.ref), follow_redirects=False)
        return self._http

    async def qdrant(self) -> Any:
        """The node's AsyncQdrantClient (REST). No compatibility check: it would cost a request
        at every connect and warn on stderr."""
        if self._qdrant is None:
            qc = await import_off_loop("qdrant_client")
            extra: dict[str, Any] = {}
            if scheme(self.ref) == "https":
                extra["verify"] = verify_option(self.ref)
            self._qdrant = qc.AsyncQdrantClient(url=self.url, headers=self._headers(), timeout=max(1, math.ceil(self.timeout)),
                                                check_compatibility=False, **extra)
        return self._qdrant

    async def close(self) -> None:
        http, self._http = self._http, None
        qdrant, self._qdrant = self._qdrant, None
        if http is not None:
            await http.aclose()
        if qdrant is not None:
            await qdrant.close()

    # -- errors ----------------------------------------------------------------------------------

    def safe(self, text: str) -> str:
        return " ".join(scrub_text(redact(text, *self.secrets)).split())

    def error(self, exc: BaseException, doing: str) -> QdrantError:
        """Any exception from a call -> a QdrantError saying what failed and why, in one line."""
        if isinstance(exc, QdrantError):
            return exc
        reach, text = self._classify(exc, doing)
        return QdrantError(self.safe(text), reach, getattr(exc, "status_code", None) or _status_of(exc))

    def refused(self, status: int, body: bytes | str, doing: str) -> QdrantError:
        msg = _server_message(body)
        if status == 401:
            detail = msg.removeprefix("Unauthorized").lstrip(": ")
            return QdrantError(self.safe(f"{self.what} rejected the API key (401 Unauthorized) on {doing}"
                                         + (f": {detail}" if detail else "")), Reachability.AUTH, status)
        if status == 403:
            return QdrantError(self.safe(f"{self.what} refused {doing} (403 Forbidden): {READ_ONLY_HINT}"
                                         + (f" ({msg})" if msg else "")), Reachability.AUTH, status)
        return QdrantError(self.safe(f"{self.what}: {doing}: HTTP {status}" + (f": {msg}" if msg else "")), Reachability.ERROR, status)

    def _classify(self, exc: BaseException, doing: str) -> tuple[Reachability, str]:
        chain = _chain(exc)
        for e in chain:
            status = getattr(e, "status_code", None)
            if isinstance(status, int) and hasattr(e, "content"):
                err = self.refused(status, e.content or b"", doing)
                return err.reachability, err.message
        if any(isinstance(e, (asyncio.TimeoutError, TimeoutError)) or type(e).__name__.endswith("Timeout")
               or type(e).__name__ in ("TimeoutException", "ReadTimeout", "ConnectTimeout", "PoolTimeout", "WriteTimeout")
               for e in chain):
            return Reachability.TIMEOUT, f"no answer from {self.what} within {self.timeout:g}s ({doing})"
        tls = tls_reachability(chain, self.what)
        if tls is not None:
            return tls
        text = " ".join(str(e) for e in chain)
        if any(isinstance(e, ConnectionRefusedError) for e in chain) or "refused" in text.lower() or "Errno 111" in text:
            return Reachability.DOWN, f"connection refused at {self.what}"
        if any(type(e).__name__ in ("ConnectError", "RemoteProtocolError", "ReadError", "WriteError") or isinstance(e, OSError)
               for e in chain):
            said = next((first_line(str(e)) for e in chain if first_line(str(e))), "")
            return Reachability.DOWN, f"cannot reach {self.what}: {said or 'the connection closed without an answer'}"
        if any(type(e).__name__ == "ValidationError" for e in chain):
            return Reachability.ERROR, f"{self.what} answered something qdrant-client cannot read ({doing}): {first_line(str(exc))}"
        return Reachability.ERROR, f"{self.what}: {doing}: {type(exc).__name__}: {first_line(str(exc))}"

    # -- REST over httpx ---------------------------------------------------------------------------

    async def request(self, method: str, path: str, *, params: dict[str, Any] | None = None, body: Any = None,
                      ok: tuple[int, ...] = (200,), doing: str | None = None, whole: bool = False,
                      timeout: float | None = None) -> Any:
        """One REST call; the parsed `result` of a JSON answer (the whole object with `whole`;
        the text of a plain answer). A status outside `ok` raises QdrantError with Qdrant's own
        message."""
        doing = doing or f"{method} {path}"
        client = await self.http()
        try:
            response = await asyncio.wait_for(
                client.request(method, path, params=params, json=body, timeout=timeout or self.timeout),
                timeout=timeout or self.timeout)
        except Exception as exc:
            raise self.error(exc, doing) from None
        if response.status_code not in ok:
            raise self.refused(response.status_code, response.content, doing)
        if response.headers.get("content-type", "").startswith("application/json"):
            try:
                answer = response.json()
                return answer if whole else answer.get("result")
            except (ValueError, AttributeError):
                raise QdrantError(self.safe(f"{self.what}: {doing}: the answer is not Qdrant's JSON"), Reachability.ERROR) from None
        return response.text

    async def status_text(self, path: str) -> tuple[int, str]:
        """(HTTP status, text) of a probe such as /readyz, whatever the status."""
        client = await self.http()
        try:
            response = await asyncio.wait_for(client.get(path), timeout=self.timeout)
        except Exception as exc:
            raise self.error(exc, f"GET {path}") from None
        return response.status_code, first_line(response.text, 120)

    async def download(self, path: str, dest: Path, progress: Callable[[int, int | None], None] | None = None,
                       timeout: float = 3600.0) -> tuple[int, str]:
        """Stream GET `path` into `dest`; (bytes, SHA-256 hex). The per-read timeout is the
        node's; the whole transfer is bounded by `timeout`."""
        httpx = await import_off_loop("httpx")
        client = await self.http()
        digest = hashlib.sha256()
        size = 0

        async def fetch() -> None:
            nonlocal size
            async with client.stream("GET", path, timeout=httpx.Timeout(self.timeout, read=max(self.timeout, 60.0))) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise self.refused(response.status_code, response.content, f"GET {path}")
                total = int(response.headers["content-length"]) if response.headers.get("content-length", "").isdigit() else None
                with open(dest, "wb") as out:
                    async for chunk in response.aiter_bytes(1024 * 1024):
                        out.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                        if progress is not None:
                            progress(size, total)

        try:
            await asyncio.wait_for(fetch(), timeout=timeout)
        except QdrantError:
            raise
        except OSError as exc:
            if exc.errno is not None and not type(exc).__module__.startswith("http"):
                raise QdrantError(f"writing {dest}: {exc.strerror or exc}") from None
            raise self.error(exc, f"GET {path}") from None
        except Exception as exc:
            raise self.error(exc, f"GET {path}") from None
        return size, digest.hexdigest()

    # -- qdrant-client ---------------------------------------------------------------------------

    async def call(self, doing: str, fn: Callable[[Any], Any], timeout: float | None = None) -> Any:
        """await fn(AsyncQdrantClient) under a time bound, its failures as QdrantError."""
        client = await self.qdrant()
        try:
            return await asyncio.wait_for(fn(client), timeout=timeout or self.timeout)
        except Exception as exc:
            raise self.error(exc, doing) from None


def _status_of(exc: BaseException) -> int | None:
    for e in _chain(exc):
        s = getattr(e, "status_code", None)
        if isinstance(s, int):
            return s
    return None
