"""What the Kafka runbooks share: one admin client per run, the cluster's metadata read into the
engine's own values, and broker names as the config gives them."""

from __future__ import annotations

import asyncio
from typing import Any

from dbops.engines.kafka import client as kc
from dbops.engines.kafka.adapter import topic_from_metadata
from dbops.engines.kafka.data import Broker, Partition, Topic, with_inferred_ids
from dbops.runbook.model import Context


async def teardown(ctx: Context) -> None:
    clients = [ctx.resources.pop(k) for k in list(ctx.resources) if k == "admin" or k.startswith("consumer")]
    await asyncio.gather(*(kc.close(c) for c in clients))


def _password(ctx: Context) -> Any:
    if "creds" not in ctx.resources:
        ctx.resources["creds"] = kc.Credentials(ctx.ref)  # SecretError: the check that asked fails, saying why
    return ctx.resources["creds"].password


async def admin(ctx: Context) -> Any:
    """The run's admin client, connected on first use: inside a pre-check or step, so a cluster
    that cannot be reached (or a wrong password) fails that check with the reason, not the run
    with a traceback."""
    if "admin" not in ctx.resources:
        ctx.resources["admin"] = await asyncio.wait_for(kc.admin(ctx.ref, _password(ctx)), timeout=ctx.ref.timeout * 2)
    return ctx.resources["admin"]


async def consumer(ctx: Context, group_id: str | None = None) -> Any:
    """The run's consumer, one per group id (None: reads offsets only). It is only ever assigned
    partitions, never subscribed, so it never joins a group."""
    key = f"consumer:{group_id or ''}"
    if key not in ctx.resources:
        ctx.resources[key] = await asyncio.wait_for(
            kc.consumer(ctx.ref, _password(ctx), group_id=group_id), timeout=ctx.ref.timeout * 2)
    return ctx.resources[key]


def describe(ctx: Context, exc: BaseException) -> str:
    creds = ctx.resources.get("creds")
    return kc.classify(exc, ctx.ref.name, ctx.ref.timeout, creds.password if creds is not None else None)[1]


async def metadata(ctx: Context) -> tuple[list[Broker], list[Topic], int | None]:
    """Brokers (configured ones that the metadata lacks are down), topics and the controller id."""
    client = await admin(ctx)
    meta = await kc.metadata_from_each_broker(client, ctx.ref.timeout)
    cluster, topics = meta, meta["topics"]
    names = {f"{m.host}:{m.port}": m.name for m in ctx.ref.cluster.members}
    found = {f"{b['host']}:{b['port']}": b for b in cluster.get("brokers", [])}
    brokers = [Broker(b["node_id"], a, names.get(a, a), True, b.get("rack")) for a, b in found.items()]
    # A broker killed a moment ago stays in the metadata until the controller fences it (seconds):
    # ask each one something small, as the pane does, and count the silent ones as down.
    answers = await asyncio.gather(*(asyncio.wait_for(client.list_consumer_groups(broker_ids=[b.node_id]),
                                                      timeout=max(0.5, ctx.ref.timeout * 0.3)) for b in brokers),
                                   return_exceptions=True)
    brokers = [b if not isinstance(a, BaseException) else Broker(b.node_id, b.address, b.name, False, b.rack,
                                                                 f"in the metadata but not answering: {describe(ctx, a)}")
               for b, a in zip(brokers, answers)]
    brokers += [Broker(None, a, n, False, error="not in the cluster's metadata") for a, n in names.items() if a not in found]
    parsed = [topic_from_metadata(t) for t in topics]
    return with_inferred_ids(brokers, parsed), parsed, cluster.get("controller_id")


def broker_label(brokers: list[Broker], node_id: int) -> str:
    b = next((b for b in brokers if b.node_id == node_id), None)
    return f"{b.name} (id {node_id})" if b is not None and b.name != str(node_id) else f"broker {node_id}"


def replica_names(brokers: list[Broker], ids: tuple[int, ...]) -> str:
    by_id = {b.node_id: b.name for b in brokers}
    return ",".join(by_id.get(i, str(i)) for i in ids) or "-"


def tp(p: Partition) -> str:
    return f"{p.topic}/{p.partition}"
