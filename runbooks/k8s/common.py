"""What the Kubernetes runbooks share: the run's API connection, opened on first use inside a
pre-check or step (so a missing [kubernetes] or an unreachable API is a failed check saying
why, not a crash), closed by the teardown."""

from __future__ import annotations

import asyncio
from typing import Any

from dbops.runbook.model import Context


def settings(ctx: Context) -> Any:
    """The cluster's [kubernetes]; a clear error when it has none."""
    k = ctx.ref.cluster.kubernetes
    if k is None:
        raise RuntimeError(f"{ctx.ref.key} has no [kubernetes] section in the config (namespace, selector ...)")
    return k


async def connection(ctx: Context) -> Any:
    if "k8s" not in ctx.resources:
        from dbops.platform import kubernetes as k8s

        ctx.resources["k8s"] = await asyncio.to_thread(k8s.connect_ref, settings(ctx), max(ctx.ref.timeout, 5.0))
    return ctx.resources["k8s"]


async def call(ctx: Context, fn: Any, *args: Any) -> Any:
    """`fn(connection, *args)` from dbops.platform.kubernetes, off the event loop."""
    conn = await connection(ctx)
    return await asyncio.to_thread(fn, conn, *args)


async def teardown(ctx: Context) -> None:
    conn = ctx.resources.pop("k8s", None)
    if conn is not None:
        conn.close()
