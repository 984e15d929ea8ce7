"""One HTTP request to Alertmanager's or Prometheus' API, with the [alertmanager] / [prometheus]
section's auth and TLS; every failure is a MonitoringError whose message says which service, at
which URL, what went wrong and what to check, and never holds a credential.

httpx is imported when the first request is made, in a worker thread (the UI's event loop never
waits for it), never when dbops starts.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import socket
import ssl
import urllib.parse
from typing import Any

from dbops.config import TLS, HttpService
from dbops.model import first_line
from dbops.secrets import Secret, SecretError, redact, resolve, scrub_text
from dbops.tls import TLSConfigError, client_context


class MonitoringError(Exception):
    """Alertmanager or Prometheus could not be asked, or answered something unusable. `message`
    is one line, safe to show (no credential, no traceback)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


_httpx: Any = None


async def _import_httpx() -> Any:
    global _httpx
    if _httpx is None:
        _httpx = await asyncio.to_thread(importlib.import_module, "httpx")
    return _httpx


def shown_url(url: str) -> str:
    """The URL as messages show it: without a user:password@ it may carry."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url.rstrip("/")
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)).rstrip("/")


def _verify(tls: TLS) -> bool | ssl.SSLContext:
    """httpx's `verify`, as the engines read `tls`: require encrypts without checking the
    certificate; verify-ca / verify-full check it (against ca_file when given)."""
    if tls.mode in ("disable", "prefer"):
        return True
    if tls.mode == "require" and not (tls.ca_file or tls.cert_file):
        return False
    return client_context(tls)


class Service:
    """One configured service (`section` is "alertmanager" or "prometheus") and its credentials."""

    def __init__(self, section: str, options: HttpService):
        self.section = section
        self.options = options
        self.url = options.url.rstrip("/")
        self.where = f"{section} at {shown_url(options.url)}"
        self._secrets: list[Secret] = []

    def _fail(self, what: str) -> MonitoringError:
        text = redact(what, *self._secrets)
        # The URL's own user:password@, if the config put one there, is a credential too.
        parts = urllib.parse.urlsplit(self.options.url)
        if parts.password:
            text = text.replace(parts.password, "***")
        return MonitoringError(f"{self.where}: {text}")

    @staticmethod
    def _said(text: str, limit: int = 200) -> str:
        """What a server or a library said, as one line, with any credential written in it
        (a URL's user:password@, password=...) removed: it is not ours to trust."""
        return scrub_text(first_line(text, limit))

    def _auth(self) -> tuple[dict[str, str], tuple[str, str] | None]:
        o = self.options
        try:
            if o.bearer_token is not None:
                token = resolve(o.bearer_token)
                if token is None or not token.reveal():
                    raise self._fail(f"[{self.section}] bearer_token ({o.bearer_token.describe()}) is empty")
                self._secrets.append(token)
                return {"Authorization": f"Bearer {token.reveal()}"}, None
            if o.user is not None and o.password is not None:
                password = resolve(o.password)
                if password is None:
                    raise self._fail(f"[{self.section}] password is not set")
                self._secrets.append(password)
                return {}, (o.user, password.reveal())
        except SecretError as exc:
            key = "bearer_token" if o.bearer_token is not None else "password"
            raise self._fail(f"[{self.section}] {key}: {exc}") from None
        return {}, None

    async def request(self, method: str, path: str, *, params: dict[str, str] | None = None,
                      body: Any = None, want_json: bool = True) -> Any:
        """The decoded JSON answer (None when `want_json` is false); MonitoringError otherwise."""
        httpx = await _import_httpx()
        headers, auth = self._auth()
        try:
            verify = _verify(self.options.tls)
        except TLSConfigError as exc:
            raise self._fail(f"[{self.section}] tls: {exc}") from None
        what = f"{method} {path}"
        timeout = self.options.timeout
        try:
            async with httpx.AsyncClient(timeout=timeout, verify=verify, follow_redirects=False,
                                         headers={"User-Agent": "dbops", **headers}) as client:
                response = await client.request(method, self.url + path, params=params, json=body, auth=auth)
        except httpx.TimeoutException:
            raise self._fail(f"{what}: no answer within {timeout:g} s ([{self.section}] timeout)") from None
        except httpx.ConnectError as exc:
            raise self._fail(self._connect_failure(exc)) from None
        except httpx.HTTPError as exc:
            raise self._fail(f"{what}: {type(exc).__name__}: {self._said(str(exc)) or 'no detail'}") from None
        except httpx.InvalidURL:  # not an HTTPError; the config's own check catches most
            # (Its words can quote a piece of the URL, a password's included: not repeated.)
            raise self._fail(f"[{self.section}] url: not a URL httpx can request") from None
        status = response.status_code
        if status in (401, 403):
            how = "bearer_token" if self.options.bearer_token is not None else "user/password"
            given = "" if (self.options.bearer_token or self.options.user) else " (none is configured)"
            raise self._fail(f"HTTP {status} on {what}: check [{self.section}] {how}{given}")
        if status >= 400:
            raise self._fail(f"HTTP {status} on {what}: {self._said(self._server_message(response.text)) or response.reason_phrase}")
        if status >= 300:
            raise self._fail(f"HTTP {status} on {what}: redirected to {self._said(response.headers.get('location', '?'))}; "
                             f"give [{self.section}] url the address it answers at")
        if not want_json:
            return None
        try:
            return response.json()
        except (ValueError, UnicodeDecodeError):
            start = self._said(response.text, 60) or "an empty body"
            raise self._fail(f"{what} answered something that is not JSON ({start!r}): is the URL "
                             f"{self.section}'s?") from None

    def _connect_failure(self, exc: BaseException) -> str:
        """What a failed connect was: the cause httpx wraps ("All connection attempts failed")."""
        chain: list[BaseException] = []
        e: BaseException | None = exc
        while e is not None and e not in chain and len(chain) < 10:
            chain.append(e)
            e = e.__cause__ or e.__context__
        if any(isinstance(c, ConnectionRefusedError) for c in chain) or "refused" in str(exc).lower():
            return "connection refused (is it running, and is the URL right?)"
        tls = next((c for c in chain if isinstance(c, ssl.SSLError)), None)
        if tls is not None:
            return f"TLS: {self._said(str(tls)) or type(tls).__name__} (check [{self.section}] tls)"
        dns = next((c for c in chain if isinstance(c, socket.gaierror)), None)
        if dns is not None:
            return f"cannot resolve the host name: {self._said(str(dns))}"
        last = chain[-1]
        return f"cannot connect: {self._said(str(last)) or type(last).__name__}"

    @staticmethod
    def _server_message(text: str) -> str:
        """The server's error: Prometheus' {"error": ...}, Alertmanager's JSON string or text."""
        try:
            data = json.loads(text)
        except ValueError:
            return first_line(text)
        if isinstance(data, dict):
            for key in ("error", "message", "msg"):
                if isinstance(data.get(key), str):
                    return first_line(data[key])
        if isinstance(data, str):
            return first_line(data)
        return first_line(text)

    def bad_answer(self, what: str, why: str) -> MonitoringError:
        """An answer of the wrong shape: say where and how, not a KeyError."""
        return self._fail(f"unexpected answer to {what}: {why}")
