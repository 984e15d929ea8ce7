"""A lean pipelined RESP connection for bulk slot moves.

Moving thousands of slots is thousands of small commands; with redis-py's pipeline the client's
own encoding and per-reply bookkeeping is most of the cost (measured: ~70% of the wall time of a
move is client CPU). Here a whole batch is encoded in one join, written at once, and the replies
parsed by hiredis' C reader as they arrive. Used by the slot mover, a runbook session's own
reads (dbops.engines.redis.session) and the poller's node reads (dbops.engines.redis.adapter:
about half the CPU of redis-py's pipeline per node, which at a thousand targets is most of the
poller's); the runbooks' other commands keep redis-py.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from typing import Any

from dbops.config import ClusterRef
from dbops.engines.redis import client as rc


def _error_class() -> type[Exception]:
    import redis.exceptions

    class ReplyError(redis.exceptions.ResponseError):
        """An error reply (`-ERR ...`, `-ASK ...`, `-BUSYKEY ...`) of one command of a batch."""

    return ReplyError


ReplyError: type[Exception] | None = None


def reply_error(message: str) -> Exception:
    global ReplyError
    if ReplyError is None:
        ReplyError = _error_class()
    return ReplyError(message)


def _arg(a: Any) -> bytes:
    if isinstance(a, bytes):
        return bytes(a)
    if isinstance(a, str):
        return str.encode(a)
    return str(a).encode()


def pack(commands: Sequence[Sequence[Any]]) -> bytes:
    """RESP arrays of bulk strings. A move packs tens of thousands of arguments, most of them the
    same few names, node ids and numbers over and over: each str or int is encoded once per batch."""
    out: list[bytes] = []
    add = out.append
    memo: dict[str | int, bytes] = {}
    for cmd in commands:
        add(b"*%d\r\n" % len(cmd))
        for a in cmd:
            t = type(a)
            if t is bytes:  # keys and payloads: seldom repeated
                add(b"$%d\r\n%b\r\n" % (len(a), a))
            elif t is str or t is int:
                chunk = memo.get(a)
                if chunk is None:
                    b = a.encode() if t is str else b"%d" % a
                    chunk = memo[a] = b"$%d\r\n%b\r\n" % (len(b), b)
                add(chunk)
            else:
                b = _arg(a)
                add(b"$%d\r\n%b\r\n" % (len(b), b))
    return b"".join(out)


def ssl_context(ref: ClusterRef) -> ssl.SSLContext | None:
    kw = rc.tls_kwargs(ref)
    if not kw:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=kw["ssl_ca_certs"])
    if kw["ssl_certfile"]:
        ctx.load_cert_chain(kw["ssl_certfile"], kw["ssl_keyfile"])
    ctx.check_hostname = bool(kw["ssl_check_hostname"])
    ctx.verify_mode = ssl.CERT_NONE if kw["ssl_cert_reqs"] == "none" else ssl.CERT_REQUIRED
    return ctx


class _Replies(asyncio.Protocol):
    """The connection's receiving end: bytes fed to hiredis' C reader as they arrive, and the
    batch's waiter woken once, when its last reply is in. No StreamReader, no task per read."""

    def __init__(self, address: str, encoding: str | None) -> None:
        import hiredis

        self.address = address
        self.error_type = hiredis.ReplyError
        self.parser = hiredis.Reader(encoding=encoding, errors="replace") if encoding else hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.replies: list[Any] = []
        self.expected = 0
        self.waiter: asyncio.Future[list[Any]] | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        add, error_type = self.replies.append, self.error_type
        try:
            while (r := self.parser.gets()) is not False:
                add(reply_error(r.args[0] if r.args else str(r)) if isinstance(r, error_type) else r)
        except Exception as exc:  # hiredis.ProtocolError: not RESP; the connection is unusable
            self._fail(ConnectionError(f"{self.address} sent a reply that is not RESP: {exc}"))
            if self.transport is not None:
                self.transport.abort()
            return
        if self.waiter is not None and len(self.replies) >= self.expected and not self.waiter.done():
            self.waiter.set_result(self.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError(f"{self.address} closed the connection"))

    def _fail(self, exc: BaseException) -> None:
        self.lost = self.lost or exc
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)


class Wire:
    """One connection. `execute` sends a batch and returns one reply per command (error replies
    as exceptions in place, or the first one raised).

    `timeout` bounds the connect and each batch; None leaves the bound to the caller (the
    poller's asyncio.timeout around a whole node read). `encoding` decodes bulk strings (with
    replacement characters: a binary key in SLOWLOG must not fail a poll); None keeps bytes.
    `sentinel` authenticates with the sentinels' password and no username."""

    def __init__(self, ref: ClusterRef, address: str, creds: rc.Credentials, timeout: float | None, *,
                 name: str = "dbops-runbook", encoding: str | None = None, sentinel: bool = False) -> None:
        self.ref, self.address, self.creds, self.timeout = ref, address, creds, timeout
        self.name, self.encoding, self.sentinel = name, encoding, sentinel
        self._proto: _Replies | None = None

    async def _connect(self) -> None:
        host, _, port = self.address.rpartition(":")
        loop = asyncio.get_running_loop()
        proto = _Replies(self.address, self.encoding)
        connecting = loop.create_connection(lambda: proto, host, int(port), ssl=ssl_context(self.ref))
        if self.timeout is None:
            await connecting
        else:
            await asyncio.wait_for(connecting, timeout=self.timeout)
        self._proto = proto
        hello: list[tuple[Any, ...]] = []
        secret = self.creds.sentinel_password if self.sentinel else self.creds.password
        username = None if self.sentinel else self.creds.username
        if secret is not None:
            hello.append(("AUTH", username, secret.reveal()) if username else ("AUTH", secret.reveal()))
        hello.append(("CLIENT", "SETNAME", self.name))
        try:
            await self._roundtrip(hello, raise_on_error=True)
        except BaseException:
            # A refused AUTH must not leave a connection the next batch would use unauthenticated.
            self._drop()
            raise

    async def execute(self, commands: Sequence[Sequence[Any]], raise_on_error: bool = True) -> list[Any]:
        if not commands:
            return []
        try:
            if self._proto is None:
                await self._connect()
            return await self._roundtrip(commands, raise_on_error)
        except (TimeoutError, OSError, ConnectionError):
            await self.close()  # the stream is in an unknown state: the next batch reconnects
            raise
        except asyncio.CancelledError:
            # Cancelled mid-batch (a caller's own timeout): replies may still be on their way and
            # the next batch would read them as its own. Closed without awaiting: we are cancelled.
            self._drop()
            raise

    def _drop(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()

    async def _roundtrip(self, commands: Sequence[Sequence[Any]], raise_on_error: bool) -> list[Any]:
        proto = self._proto
        assert proto is not None and proto.transport is not None
        if proto.lost is not None:
            raise ConnectionError(f"connection to {self.address} lost: {proto.lost}")
        replies: list[Any] = []
        proto.replies, proto.expected = replies, len(commands)
        proto.waiter = waiter = asyncio.get_running_loop().create_future()
        proto.transport.write(pack(commands))
        try:
            if self.timeout is None:
                await waiter
            else:
                async with asyncio.timeout(self.timeout):
                    await waiter
        finally:
            proto.waiter = None
        if raise_on_error:
            for r in replies:
                if isinstance(r, Exception):
                    raise r
        return replies

    async def close(self) -> None:
        self._drop()


class WirePool:
    """A few Wires to one node, so that groups in flight do not wait for each other's replies.
    The one used last is handed out first: one caller at a time reuses one connection, and
    the others connect only when batches overlap."""

    def __init__(self, ref: ClusterRef, address: str, creds: rc.Credentials, timeout: float, size: int) -> None:
        self._free: asyncio.LifoQueue[Wire] = asyncio.LifoQueue()
        self._all = [Wire(ref, address, creds, timeout) for _ in range(size)]
        for w in self._all:
            self._free.put_nowait(w)

    async def execute(self, commands: Sequence[Sequence[Any]], raise_on_error: bool = True) -> list[Any]:
        w = await self._free.get()
        try:
            return await w.execute(commands, raise_on_error)
        finally:
            self._free.put_nowait(w)

    async def execute_command(self, *args: Any) -> Any:
        return (await self.execute([args]))[0]

    async def aclose(self) -> None:
        await asyncio.gather(*(w.close() for w in self._all))
