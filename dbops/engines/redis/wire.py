"""A lean pipelined RESP connection for bulk slot moves.

Moving thousands of slots is thousands of small commands; with redis-py's pipeline the client's
own encoding and per-reply bookkeeping is most of the cost (measured: ~70% of the wall time of a
move is client CPU). Here a whole batch is encoded in one join, written at once, and the replies
parsed by hiredis' C reader as they arrive. Used by the slot mover and a runbook session's own
reads (dbops.engines.redis.session); the poller and the runbooks' other commands keep redis-py.
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


class Wire:
    """One connection. `execute` sends a batch and returns one reply per command (error replies
    as exceptions in place, or the first one raised)."""

    def __init__(self, ref: ClusterRef, address: str, creds: rc.Credentials, timeout: float) -> None:
        self.ref, self.address, self.creds, self.timeout = ref, address, creds, timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        host, _, port = self.address.rpartition(":")
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(host, int(port), ssl=ssl_context(self.ref)), timeout=self.timeout)
        hello: list[tuple[Any, ...]] = []
        if self.creds.password is not None:
            auth = (self.creds.username, self.creds.password.reveal()) if self.creds.username else (self.creds.password.reveal(),)
            hello.append(("AUTH", *auth))
        hello.append(("CLIENT", "SETNAME", "dbops-runbook"))
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
            if self._writer is None:
                await self._connect()
            return await self._roundtrip(commands, raise_on_error)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ConnectionError):
            await self.close()  # the stream is in an unknown state: the next batch reconnects
            raise
        except asyncio.CancelledError:
            # Cancelled mid-batch (a caller's own timeout): replies may still be on their way and
            # the next batch would read them as its own. Closed without awaiting: we are cancelled.
            self._drop()
            raise

    def _drop(self) -> None:
        w, self._writer, self._reader = self._writer, None, None
        if w is not None:
            w.close()

    async def _roundtrip(self, commands: Sequence[Sequence[Any]], raise_on_error: bool) -> list[Any]:
        import hiredis

        assert self._reader is not None and self._writer is not None
        self._writer.write(pack(commands))
        await self._writer.drain()
        parser = hiredis.Reader()
        replies: list[Any] = []
        while len(replies) < len(commands):
            chunk = await asyncio.wait_for(self._reader.read(1 << 16), timeout=self.timeout)
            if not chunk:
                raise ConnectionError(f"{self.address} closed the connection")
            parser.feed(chunk)
            while (r := parser.gets()) is not False:
                replies.append(reply_error(r.args[0] if r.args else str(r)) if isinstance(r, hiredis.ReplyError) else r)
        if raise_on_error:
            for r in replies:
                if isinstance(r, Exception):
                    raise r
        return replies

    async def close(self) -> None:
        w, self._writer, self._reader = self._writer, None, None
        if w is not None:
            w.close()
            try:
                await asyncio.wait_for(w.wait_closed(), timeout=1.0)
            except (TimeoutError, OSError, ConnectionError):
                pass  # already gone: nothing more to release


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
