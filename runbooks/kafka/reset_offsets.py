"""kafka.reset-consumer-offsets: move a consumer group's committed offsets on one topic.

`to` is earliest, latest, an ISO 8601 timestamp (the first record at or after it; the log end
where there is none) or an offset (kept within each partition's log). Refused while the group
has members: they would overwrite the new offsets with their next commit, and the broker refuses
such a commit anyway. The plan shows old -> new per partition; the offsets are committed through
a consumer that is assigned the partitions and never joins the group, then read back.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from dbops.runbook.model import Check, Confirm, Context, Kind, Param, Runbook, Step, Verdict
from dbops.runbooks.kafka import common

INACTIVE = ("Empty", "Dead")


def target(raw: str) -> tuple[str, Any]:
    """('earliest'|'latest', None), ('time', epoch ms) or ('offset', n); ValueError says why."""
    value = raw.strip()
    if value.lower() in ("earliest", "latest"):
        return value.lower(), None
    if value.lstrip("-").isdigit():
        n = int(value)
        if n < 0:
            raise ValueError(f"to={raw!r}: an offset cannot be negative")
        return "offset", n
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"to={raw!r}: expected earliest, latest, an ISO timestamp (2026-11-22T03:00:00Z) or an offset") from None
    if when.tzinfo is None:
        raise ValueError(f"to={raw!r}: give the timestamp's zone (Z or +hh:mm); a bare time is ambiguous at 3 a.m.")
    return "time", int(when.astimezone(UTC).timestamp() * 1000)


async def _group(ctx: Context) -> dict[str, Any]:
    gid = ctx.params["group"]
    client = await common.admin(ctx)
    node = await asyncio.wait_for(client.find_coordinator(gid), timeout=ctx.ref.timeout)
    responses = await asyncio.wait_for(client.describe_consumer_groups([gid], group_coordinator_id=node), timeout=ctx.ref.timeout)
    g = responses[0].to_object()["groups"][0]
    offsets = await asyncio.wait_for(client.list_consumer_group_offsets(gid, group_coordinator_id=node), timeout=ctx.ref.timeout)
    return {"state": g["state"], "members": [f"{m['client_id']}@{m['client_host'].lstrip('/')}" for m in g["members"]],
            "offsets": {(k.topic, k.partition): v.offset for k, v in offsets.items() if v.offset >= 0}}


async def check_inactive(ctx: Context) -> Verdict:
    try:
        target(ctx.params["to"])
    except ValueError as exc:
        return Verdict(False, str(exc))
    try:
        g = await _group(ctx)
    except Exception as exc:
        return Verdict(False, f"group {ctx.params['group']} could not be read: {common.describe(ctx, exc)}")
    ctx.state["group_state"] = g["state"]
    ctx.state["group_known"] = bool(g["offsets"]) or g["state"] != "Dead"
    if g["members"] or g["state"] not in INACTIVE:
        return Verdict(False, f"group {ctx.params['group']} is {g['state']} with {len(g['members'])} member(s) "
                              f"({', '.join(g['members'][:4])}): stop its consumers first, or they overwrite the new offsets")
    return Verdict(True, f"group {ctx.params['group']} is {g['state']}: no member consumes")


async def check_known(ctx: Context) -> Verdict:
    """A group that has no member and no committed offset does not exist (yet): most likely a
    mistyped name, since the commit would create it. Overridable, to seed a new group on purpose."""
    if ctx.state.get("group_known", True):
        return Verdict(True, f"group {ctx.params['group']} exists")
    return Verdict(False, f"no group {ctx.params['group']!r} in {ctx.ref.name} (no member, no committed offset): "
                          "check the name; committing would create it (override to seed a new group on purpose)")


async def check_plan(ctx: Context) -> Verdict:
    """Reads the topic's partitions, their log bounds and the group's offsets into the plan."""
    from aiokafka import TopicPartition

    topic = ctx.params["topic"]
    brokers, topics, _ = await common.metadata(ctx)
    t = next((t for t in topics if t.name == topic), None)
    if t is None:
        return Verdict(False, f"no topic {topic!r} in {ctx.ref.name}")
    offline = [common.tp(p) for p in t.partitions if p.offline]
    if offline:
        return Verdict(False, f"partitions without a leader cannot be read or reset: {', '.join(offline)}")
    g = await _group(ctx)
    tps = [TopicPartition(topic, p.partition) for p in t.partitions]
    c = await common.consumer(ctx)
    starts, ends = await asyncio.gather(asyncio.wait_for(c.beginning_offsets(tps), ctx.ref.timeout),
                                        asyncio.wait_for(c.end_offsets(tps), ctx.ref.timeout))
    how, value = target(ctx.params["to"])
    at_time: dict[Any, Any] = {}
    if how == "time":
        at_time = await asyncio.wait_for(c.offsets_for_times({tp: value for tp in tps}), ctx.ref.timeout)
    plan, notes = {}, []
    for tp in tps:
        start, end = starts[tp], ends[tp]
        if how == "earliest":
            new = start
        elif how == "latest":
            new = end
        elif how == "time":
            found = at_time.get(tp)
            new = found.offset if found is not None else end
        else:
            new = min(max(value, start), end)
            if new != value:
                notes.append(f"{topic}/{tp.partition}: {value} is outside the log [{start}, {end}], {new} is used")
        plan[str(tp.partition)] = [g["offsets"].get((topic, tp.partition)), new, start, end]
    ctx.state["plan"] = plan
    skipped = sum(new - (old if old is not None else start) for old, new, start, _ in plan.values()
                  if new > (old if old is not None else start))
    reread = sum((old or 0) - new for old, new, _, _ in plan.values() if old is not None and new < old)
    what = []
    if skipped:
        what.append(f"{skipped} records will be skipped")
    if reread:
        what.append(f"{reread} records will be read again")
    return Verdict(True, f"{len(plan)} partition(s) of {topic}: " + ("; ".join(what) or "no offset changes")
                   + ("; " + "; ".join(notes) if notes else ""))


def render(ctx: Context) -> list[str]:
    plan = ctx.state.get("plan")
    if plan is None:
        return ["# the plan is made by the pre-checks (old -> new offset per partition)"]
    lines = [f"OffsetCommit group={ctx.params['group']} (generation -1: the group has no member)"]
    for part, (old, new, start, end) in sorted(plan.items(), key=lambda kv: int(kv[0])):
        lines.append(f"  {ctx.params['topic']}/{part}: {old if old is not None else 'none'} -> {new}   (log {start}..{end})")
    return lines


def _changes(ctx: Context) -> bool:
    return any(old != new for old, new, _, _ in ctx.state.get("plan", {}).values())


async def do_commit(ctx: Context) -> None:
    from aiokafka import TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    # The group must still be empty: a consumer started since the pre-check would race us.
    verdict = await check_inactive(ctx)
    if not verdict.ok:
        raise RuntimeError(verdict.detail)
    topic = ctx.params["topic"]
    offsets = {TopicPartition(topic, int(p)): OffsetAndMetadata(new, "reset by dbops run " + ctx.run_id)
               for p, (_old, new, _s, _e) in ctx.state["plan"].items()}
    # A consumer bound to the group, assigned (never subscribed): it commits without joining.
    c = await common.consumer(ctx, group_id=ctx.params["group"])
    c.assign(list(offsets))
    await asyncio.wait_for(c.commit(offsets), timeout=ctx.ref.timeout * 2)
    ctx.log(f"committed {len(offsets)} offset(s) for group {ctx.params['group']} on {topic}")


async def verify_commit(ctx: Context) -> Verdict:
    g = await _group(ctx)
    topic = ctx.params["topic"]
    wrong = [f"{topic}/{p}: {g['offsets'].get((topic, int(p)))} (wanted {new})"
             for p, (_old, new, _s, _e) in ctx.state["plan"].items() if g["offsets"].get((topic, int(p))) != new]
    if wrong:
        return Verdict(False, "the group's offsets are not the planned ones: " + "; ".join(wrong))
    return Verdict(True, f"group {ctx.params['group']} reads back the planned offset on every partition of {topic}")


RUNBOOK = Runbook(
    id="kafka.reset-consumer-offsets",
    title="Reset a consumer group's offsets on a topic",
    params=(
        Param("group", "the consumer group", required=True),
        Param("topic", "the topic whose offsets move", required=True),
        Param("to", "earliest, latest, an ISO timestamp with zone (2026-11-22T03:00:00Z) or an offset", required=True),
    ),
    prechecks=(
        Check("inactive", "the group has no member (stopped consumers)", check_inactive),
        Check("known", "the group exists (a typo would create a new one)", check_known, overridable=True),
        Check("plan", "old and new offset of every partition", check_plan),
    ),
    steps=(
        Step("commit", "Commit the new offsets", "OffsetCommit of the planned offset of every partition, for the group",
             Kind.ACTION, render, run=do_commit, verify=verify_commit, destructive=True, confirm=Confirm.TYPE_CLUSTER,
             timeout=60.0, applies=_changes,
             on_failure="nothing half-done is possible per partition; run again after the group is empty"),
    ),
    teardown=common.teardown,
)
