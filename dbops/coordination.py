"""The coordination database ([locks.postgres]): a small PostgreSQL database every console
reaches and that is never a cluster under repair. Runbook locks are advisory locks held on a
connection there (the server frees them when a console dies); approvals are rows there."""

from __future__ import annotations

from typing import Any

from dbops.config import CoordinationDb


def describe(coord: CoordinationDb) -> str:
    return f"coordination database {coord.database} on {coord.host}:{coord.port}"


def _ssl(coord: CoordinationDb) -> Any:
    from dbops.tls import client_context

    if coord.tls.mode == "disable":
        return False
    if coord.tls.mode in ("prefer", "require"):
        return coord.tls.mode
    return client_context(coord.tls)


async def connect(coord: CoordinationDb, application_name: str) -> Any:
    """An asyncpg connection to the coordination database; the caller closes it. Errors say
    where, never with the password."""
    import asyncpg

    from dbops.secrets import SecretError, resolve, scrub_text

    try:
        secret = resolve(coord.password)
    except SecretError as exc:
        raise CoordinationError(f"the {describe(coord)}: {exc}") from None
    try:
        return await asyncpg.connect(
            host=coord.host, port=coord.port, user=coord.user, database=coord.database,
            password=secret.reveal() if secret is not None else None, ssl=_ssl(coord), timeout=coord.timeout,
            command_timeout=coord.timeout, server_settings={"application_name": application_name[:63], "statement_timeout": str(int(coord.timeout * 1000))},
        )
    except Exception as exc:
        raise CoordinationError(f"cannot reach the {describe(coord)}: {scrub_text(str(exc)) or type(exc).__name__}") from None


class CoordinationError(Exception):
    """The coordination database cannot be reached or used; one line, safe to show."""
