"""Read PgBouncer's admin console: SHOW POOLS, SHOW STATS, SHOW DATABASES.

The admin console speaks only the simple query protocol. asyncpg runs every row-returning
query through the extended protocol (PgBouncer answers "extended query protocol not
supported by admin console"), and its simple-query path (`Connection.execute`) discards the
rows. So this module carries a minimal client of its own: startup, cleartext / md5 /
SCRAM-SHA-256 authentication, 'Q' messages, text rows. No TLS: the admin console is read over
a trusted network or a local socket in every deployment we know of.

A PgBouncer failure never fails a member's poll: `PgBouncerReader.read()` returns
PgBouncerData with `error` set instead of raising.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import struct

from dbops.engines.postgres.data import PgBouncerData, PoolRow
from dbops.secrets import Secret, redact

PROTOCOL_V3 = 196608

log = logging.getLogger(__name__)


class PgBouncerError(Exception):
    """A failure talking to PgBouncer; the message is safe to show (no secret)."""


class ServerError(PgBouncerError):
    """An ErrorResponse from the server."""

    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = fields
        self.code = fields.get("C", "")
        super().__init__(fields.get("M", "server error"))


# ---------------------------------------------------------------------------------------------
# Wire protocol


def _msg(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!I", len(payload) + 4) + payload


def _cstr(s: str) -> bytes:
    return s.encode("utf-8") + b"\0"


def _parse_error(payload: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


class _Scram:
    """SCRAM-SHA-256 client side (RFC 5802/7677), without channel binding."""

    def __init__(self, password: str) -> None:
        self.password = password.encode("utf-8")
        self.nonce = base64.b64encode(os.urandom(18)).decode("ascii")
        self.first_bare = f"n=,r={self.nonce}"
        self.server_signature: bytes | None = None

    def first(self) -> bytes:
        return ("n,," + self.first_bare).encode("ascii")

    def final(self, server_first: bytes) -> bytes:
        text = server_first.decode("ascii")
        attrs = dict(item.split("=", 1) for item in text.split(","))
        nonce, salt, iterations = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
        if not nonce.startswith(self.nonce):
            raise PgBouncerError("SCRAM authentication failed: the server's nonce does not extend ours")
        salted = hashlib.pbkdf2_hmac("sha256", self.password, salt, iterations)
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self.first_bare},{text},{without_proof}".encode("ascii")
        signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
        self.server_signature = hmac.new(server_key, auth_message, hashlib.sha256).digest()
        return f"{without_proof},p={base64.b64encode(proof).decode('ascii')}".encode("ascii")

    def verify(self, server_final: bytes) -> None:
        attrs = dict(item.split("=", 1) for item in server_final.decode("ascii").split(","))
        if "e" in attrs:
            raise PgBouncerError(f"SCRAM authentication failed: {attrs['e']}")
        if self.server_signature is None or base64.b64decode(attrs.get("v", "")) != self.server_signature:
            raise PgBouncerError("SCRAM authentication failed: the server's signature does not match")


class SimpleQueryClient:
    """One connection to a PostgreSQL-protocol server that runs simple queries only."""

    def __init__(self, host: str, port: int, user: str, password: Secret | None, database: str = "pgbouncer") -> None:
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.database = database
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def _read_message(self) -> tuple[bytes, bytes]:
        assert self._reader is not None
        header = await self._reader.readexactly(5)
        kind, length = header[:1], struct.unpack("!I", header[1:])[0]
        payload = await self._reader.readexactly(length - 4)
        return kind, payload

    def _send(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)

    def _need_password(self) -> str:
        if self.password is None or not self.password.reveal():
            raise PgBouncerError(f"PgBouncer at {self.host}:{self.port} asked for a password but none is configured")
        return self.password.reveal()

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        params = _cstr("user") + _cstr(self.user) + _cstr("database") + _cstr(self.database)
        params += _cstr("application_name") + _cstr("dbops") + b"\0"
        body = struct.pack("!I", PROTOCOL_V3) + params
        self._send(struct.pack("!I", len(body) + 4) + body)
        await self._writer.drain()
        scram: _Scram | None = None
        while True:
            kind, payload = await self._read_message()
            if kind == b"R":
                code = struct.unpack("!I", payload[:4])[0]
                if code == 0:  # AuthenticationOk
                    continue
                if code == 3:  # cleartext
                    self._send(_msg(b"p", _cstr(self._need_password())))
                elif code == 5:  # md5 with a 4-byte salt
                    password, salt = self._need_password(), payload[4:8]
                    inner = hashlib.md5(password.encode("utf-8") + self.user.encode("utf-8")).hexdigest()
                    outer = hashlib.md5(inner.encode("ascii") + salt).hexdigest()
                    self._send(_msg(b"p", _cstr("md5" + outer)))
                elif code == 10:  # SASL: a list of mechanisms
                    mechanisms = [m.decode() for m in payload[4:].split(b"\0") if m]
                    if "SCRAM-SHA-256" not in mechanisms:
                        raise PgBouncerError(f"PgBouncer offers no supported SASL mechanism ({', '.join(mechanisms)})")
                    scram = _Scram(self._need_password())
                    first = scram.first()
                    self._send(_msg(b"p", _cstr("SCRAM-SHA-256") + struct.pack("!I", len(first)) + first))
                elif code == 11:  # SASLContinue
                    if scram is None:
                        raise PgBouncerError("PgBouncer sent SASLContinue before SASL started")
                    self._send(_msg(b"p", scram.final(payload[4:])))
                elif code == 12:  # SASLFinal
                    if scram is None:
                        raise PgBouncerError("PgBouncer sent SASLFinal before SASL started")
                    scram.verify(payload[4:])
                    continue
                else:
                    raise PgBouncerError(f"PgBouncer asked for an unsupported authentication method (code {code})")
                await self._writer.drain()
            elif kind == b"E":
                raise ServerError(_parse_error(payload))
            elif kind == b"Z":
                return
            # ParameterStatus ('S'), BackendKeyData ('K'), NoticeResponse ('N'): nothing to do.

    async def query_many(self, *sqls: str) -> list[list[dict[str, str | None]]]:
        """Send every query at once (pipelined 'Q' messages), then read each one's rows.

        Values are the server's text; NULL is None. The first server error is raised after
        all replies were read, so the connection stays in step.
        """
        if not self.connected:
            raise PgBouncerError("not connected")
        assert self._writer is not None
        for sql in sqls:
            self._send(_msg(b"Q", _cstr(sql)))
        await self._writer.drain()
        results: list[list[dict[str, str | None]]] = []
        error: ServerError | None = None
        for _ in sqls:
            names: list[str] = []
            rows: list[dict[str, str | None]] = []
            while True:
                kind, payload = await self._read_message()
                if kind == b"T":
                    (count,) = struct.unpack("!H", payload[:2])
                    pos, names = 2, []
                    for _i in range(count):
                        end = payload.index(b"\0", pos)
                        names.append(payload[pos:end].decode("utf-8"))
                        pos = end + 1 + 18  # table oid, attnum, type oid, typlen, typmod, format
                elif kind == b"D":
                    (count,) = struct.unpack("!H", payload[:2])
                    pos = 2
                    values: list[str | None] = []
                    for _i in range(count):
                        (size,) = struct.unpack("!i", payload[pos:pos + 4])
                        pos += 4
                        if size < 0:
                            values.append(None)
                        else:
                            values.append(payload[pos:pos + size].decode("utf-8", "replace"))
                            pos += size
                    rows.append(dict(zip(names, values)))
                elif kind == b"E":
                    error = error or ServerError(_parse_error(payload))
                elif kind == b"Z":
                    break
                # CommandComplete ('C'), NoticeResponse ('N'), EmptyQueryResponse ('I'): nothing to keep.
            results.append(rows)
        if error is not None:
            raise error
        return results

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is None:
            return
        if not writer.is_closing():
            writer.write(_msg(b"X", b""))  # Terminate; a transport whose peer is gone drops it
            writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 1.0)
        except (TimeoutError, OSError) as exc:
            # A dead peer cannot acknowledge the close; the socket is released either way.
            log.debug("closing the PgBouncer connection to %s:%s: %r", self.host, self.port, exc)


# ---------------------------------------------------------------------------------------------
# Parsing SHOW output


def _int(value: str | None) -> int:
    if value is None or value == "":
        return 0
    return int(value)


def _opt_int(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    return int(value)


def parse_pools(
    pools: list[dict[str, str | None]], databases: list[dict[str, str | None]]
) -> tuple[PoolRow, ...]:
    by_db = {d.get("name"): d for d in databases}
    out = []
    for p in pools:
        db = p.get("database") or ""
        if db == "pgbouncer":  # the admin console: dbops itself
            continue
        conf = by_db.get(db, {})
        pool_mode = p.get("pool_mode") or conf.get("pool_mode") or None
        out.append(
            PoolRow(
                database=db,
                user=p.get("user") or "",
                cl_active=_int(p.get("cl_active")),
                cl_waiting=_int(p.get("cl_waiting")),
                sv_active=_int(p.get("sv_active")),
                sv_idle=_int(p.get("sv_idle")),
                sv_used=_int(p.get("sv_used")),
                maxwait_seconds=_int(p.get("maxwait")) + _int(p.get("maxwait_us")) / 1_000_000,
                pool_size=_opt_int(conf.get("pool_size")),
                pool_mode=pool_mode,
            )
        )
    return tuple(out)


def parse_stats(stats: list[dict[str, str | None]]) -> tuple[tuple[str, int, int, int], ...]:
    out = []
    for s in stats:
        db = s.get("database") or ""
        if db == "pgbouncer":
            continue
        out.append((db, _int(s.get("total_xact_count")), _int(s.get("total_query_count")), _int(s.get("avg_wait_time"))))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# The reader an adapter keeps


class PgBouncerReader:
    """Keeps one admin-console connection; reconnects after any failure."""

    def __init__(self, host: str, port: int, user: str, password: Secret | None, timeout: float) -> None:
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.timeout = timeout
        self._client: SimpleQueryClient | None = None

    async def _read(self) -> PgBouncerData:
        if self._client is None or not self._client.connected:
            client = SimpleQueryClient(self.host, self.port, self.user, self.password)
            try:
                await client.connect()
            except BaseException:
                await client.close()
                raise
            self._client = client
        pools, stats, databases = await self._client.query_many("SHOW POOLS", "SHOW STATS", "SHOW DATABASES")
        return PgBouncerData(pools=parse_pools(pools, databases), stats=parse_stats(stats))

    async def read(self) -> PgBouncerData:
        """Never raises for a PgBouncer problem: the message lands in PgBouncerData.error."""
        try:
            return await asyncio.wait_for(self._read(), self.timeout)
        except Exception as exc:  # every failure becomes the error shown in the pane
            await self.close()
            return PgBouncerData(pools=(), stats=(), error=self.describe(exc))
        except asyncio.CancelledError:
            await self.close()
            raise

    def describe(self, exc: BaseException) -> str:
        where = f"{self.host}:{self.port}"
        if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            msg = f"PgBouncer at {where} did not answer within {self.timeout:g}s"
        elif isinstance(exc, ConnectionRefusedError):
            msg = f"PgBouncer refused the connection at {where}"
        elif isinstance(exc, asyncio.IncompleteReadError):
            msg = f"PgBouncer at {where} closed the connection"
        elif isinstance(exc, ServerError):
            if exc.code in ("28P01", "28000") or "password" in str(exc).lower() or "auth" in str(exc).lower():
                msg = f"PgBouncer at {where} rejected user {self.user}: {exc}"
            else:
                msg = f"PgBouncer at {where}: {exc}"
        elif isinstance(exc, PgBouncerError):
            msg = str(exc)
        elif isinstance(exc, OSError):
            msg = f"cannot reach PgBouncer at {where}: {exc.strerror or type(exc).__name__}"
        else:
            msg = f"cannot read PgBouncer at {where}: {type(exc).__name__}: {exc}"
        return redact(msg, self.password)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()
