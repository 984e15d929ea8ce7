"""What the Qdrant runbooks share: one adapter per run reading with the runbook's key (so what a
step judges by is read with the key it acts with), a node's client for the changes, the check
that the key may change the cluster at all, and the cluster's S3 backup location."""

from __future__ import annotations

import asyncio
from typing import Any

from dbops.engines.qdrant.adapter import QdrantAdapter
from dbops.engines.qdrant.client import READ_ONLY_HINT, NodeClient, QdrantError, runbook_key, scheme
from dbops.engines.qdrant.data import QdrantData
from dbops.model import Reachability
from dbops.runbook.model import Context, Verdict

KIND = "qdrant-snapshot"  # the manifests' kind (the backups pane looks for it)
ACTION_TIMEOUT = 600.0  # one snapshot, recovery or cluster change on a node


def adapter(ctx: Context) -> QdrantAdapter:
    """The run's adapter, made on first use (inside a check or step: a key that cannot be read
    fails that check with the reason)."""
    if "adapter" not in ctx.resources:
        ref = ctx.ref
        ctx.resources["adapter"] = QdrantAdapter(ref, ref.cluster.members[0], key=runbook_key(ref))
    return ctx.resources["adapter"]


async def teardown(ctx: Context) -> None:
    a = ctx.resources.pop("adapter", None)
    if a is not None:
        await a.close()


def node(ctx: Context, name: str) -> NodeClient:
    return adapter(ctx).client(name)


async def refresh(ctx: Context) -> QdrantData:
    """Every node's view now (QdrantError when none answers)."""
    from dbops.engines.qdrant.adapter import NoNodeAnswers

    try:
        return await adapter(ctx).collect()
    except NoNodeAnswers as exc:
        raise QdrantError(f"no node answers: {exc.message}", exc.reachability) from None


def location(ctx: Context) -> Any:
    return ctx.ref.cluster.backups.s3


def location_text(ctx: Context) -> str:
    loc = location(ctx)
    return f"s3://{loc.bucket}/{loc.prefix}" if loc is not None else "(no S3 location)"


async def check_location(ctx: Context) -> Verdict:
    from dbops.platform import s3

    loc = location(ctx)
    if loc is None:
        return Verdict(False, f"no backup location for {ctx.ref.name}: add [...clusters.{ctx.ref.name}.backups] "
                              "s3 = { bucket = ... }")
    try:
        found = await asyncio.to_thread(s3.list_backups, loc, KIND)
    except s3.S3Error as exc:
        return Verdict(False, exc.message)
    mine = [m for m in found if m.meta.get("cluster") == ctx.ref.name]
    return Verdict(True, f"{location_text(ctx)} answers: {len(mine)} Qdrant snapshot(s) of {ctx.ref.name}")


async def check_key(ctx: Context) -> Verdict:
    """Qdrant answers 403 to a read-only key asked to change anything. An empty alias change
    (POST /collections/aliases with no actions) changes nothing and tells the two apart."""
    errors = []
    for m in ctx.ref.cluster.members:
        c = node(ctx, m.name)
        try:
            await c.request("POST", "/collections/aliases", body={"actions": []}, doing="an empty alias change")
        except QdrantError as exc:
            if exc.status == 403:
                return Verdict(False, f"the runbook's API key may only read: {READ_ONLY_HINT}")
            if exc.reachability is Reachability.AUTH:
                return Verdict(False, exc.message)
            errors.append(exc.message)
            continue
        return Verdict(True, f"{m.name} accepts the runbook's key for changes"
                             + (" (qdrant.manage_api_key)" if _has_manage_key(ctx) else " (the cluster's password)"))
    return Verdict(False, "no node answers: " + "; ".join(errors))


def _has_manage_key(ctx: Context) -> bool:
    opts = ctx.ref.cluster.qdrant
    return opts is not None and opts.manage_api_key is not None


def address(ctx: Context, name: str) -> str:
    m = next(x for x in ctx.ref.cluster.members if x.name == name)
    return f"{m.host}:{m.port}"


def base_url(ctx: Context, name: str) -> str:
    """The node's URL as the plans show it: https when the cluster's tls.mode asks for it."""
    return f"{scheme(ctx.ref)}://{address(ctx, name)}"
