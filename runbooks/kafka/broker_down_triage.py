"""kafka.broker-down-triage: what a down broker took with it, and what comes back when. Read-only.

For each down broker (one configured but absent from the metadata, or the one named): the
partitions that lost it from their ISR, those it led and who leads them now, partitions left
without any leader (unavailable until it returns), partitions below min.insync.replicas
(producers with acks=all fail now), and whether consumer groups lost their coordinator (it
led __consumer_offsets partitions). Then what recovers
when: ISR membership as soon as it has caught up after its restart, offline partitions when it
returns (or never without it if unclean election is off and it held the only copy), leadership
only through a preferred-leader election (automatic per the cluster's settings, or
kafka.preferred-leader-election).
"""

from __future__ import annotations

import asyncio

from dbops.engines.kafka.data import Broker, Partition
from dbops.runbook.model import Check, Context, Kind, Param, Runbook, Step, Verdict
from dbops.runbooks.kafka import common

BROKER_SETTINGS = ("auto.leader.rebalance.enable", "leader.imbalance.check.interval.seconds",
                   "leader.imbalance.per.broker.percentage", "unclean.leader.election.enable", "replica.lag.time.max.ms")
LIST = 8  # partitions named per line; the rest are counted


async def _settings(ctx: Context, live: list[Broker]) -> dict[str, str]:
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    if not live:
        return {}
    responses = await asyncio.wait_for((await common.admin(ctx)).describe_configs(
        [ConfigResource(ConfigResourceType.BROKER, str(live[0].node_id), {k: None for k in BROKER_SETTINGS})]), ctx.ref.timeout)
    out = {}
    for response in responses:
        for resource in response.resources:
            for entry in resource[4]:
                if entry[0] in BROKER_SETTINGS:
                    out[entry[0]] = entry[1]
    return out


def _names(parts: list[Partition]) -> str:
    shown = ", ".join(common.tp(p) for p in parts[:LIST])
    return shown + (f" and {len(parts) - LIST} more" if len(parts) > LIST else "")


async def check_read(ctx: Context) -> Verdict:
    try:
        brokers, topics, controller = await common.metadata(ctx)
    except Exception as exc:
        return Verdict(False, f"the cluster's metadata could not be read: {common.describe(ctx, exc)}")
    wanted = ctx.params.get("broker") or ""
    down = [b for b in brokers if not b.up]
    if wanted:
        match = [b for b in brokers if wanted in (b.name, b.address, str(b.node_id))]
        if not match:
            return Verdict(False, f"no broker {wanted!r}: known are {', '.join(b.name for b in brokers)}")
        down = match
    ctx.resources["view"] = (brokers, topics, controller, down)
    if not down:
        return Verdict(True, f"every broker is up ({', '.join(b.name for b in brokers)}); the report covers replication only")
    return Verdict(True, f"down: {', '.join(b.name for b in down)}")


async def do_report(ctx: Context) -> None:
    brokers, topics, _, down = ctx.resources["view"]
    live = [b for b in brokers if b.up]
    settings = await _settings(ctx, live)
    parts = [p for t in topics for p in t.partitions]
    min_isr = {t.name: t.min_isr for t in topics}
    lines: list[str] = []
    if not down:
        under = [p for p in parts if p.under_replicated]
        lines.append(f"no broker is down; {len(under)} under-replicated partition(s)" + (f": {_names(under)}" if under else ""))
    for b in down:
        nid = b.node_id
        if nid is None:
            lines.append(f"{b.name}: its broker id cannot be told from the metadata; name it by id (--param broker=ID)")
            continue
        mine = [p for p in parts if nid in p.replicas]
        lost_isr = [p for p in mine if nid not in p.isr]
        led = [p for p in mine if p.preferred_leader == nid]
        moved = [p for p in led if not p.offline and p.leader != nid]
        offline = [p for p in mine if p.offline]
        only_copy = [p for p in offline if p.isr in ((), (nid,))]
        below = [p for p in mine if not p.offline and min_isr.get(p.topic) is not None and len(p.isr) < min_isr[p.topic]]
        lines.append(f"{b.name} (id {nid}) is down: replica of {len(mine)} partition(s), preferred leader of {len(led)}")
        lines.append(f"  lost from the ISR: {len(lost_isr)}" + (f" ({_names(lost_isr)})" if lost_isr else ""))
        if moved:
            by_leader: dict[str, int] = {}
            for p in moved:
                name = common.broker_label(brokers, p.leader)
                by_leader[name] = by_leader.get(name, 0) + 1
            lines.append(f"  leadership moved away: {len(moved)} partition(s), now led by "
                         + ", ".join(f"{n} ({c})" for n, c in sorted(by_leader.items())))
        lines.append(f"  without a leader (unavailable): {len(offline)}" + (f" ({_names(offline)})" if offline else ""))
        coordinators = [p for p in moved if p.topic == "__consumer_offsets"]
        if coordinators:
            lines.append(f"  coordinated consumer groups: {len(coordinators)} __consumer_offsets partition(s) moved, "
                         "so their groups have a new coordinator and their consumers rejoined (a rebalance)")
        if below:
            lines.append(f"  below min.insync.replicas, producers with acks=all fail: {len(below)} ({_names(below)})")
        lines.append("  when it returns:")
        lines.append(f"    - it rejoins the ISR of {len(lost_isr)} partition(s) once it has fetched up to each leader "
                     f"(followers within replica.lag.time.max.ms={settings.get('replica.lag.time.max.ms', '?')} count as caught up)")
        if offline:
            unclean = settings.get("unclean.leader.election.enable", "?")
            lines.append(f"    - {len(offline)} offline partition(s) get a leader again"
                         + (f"; {len(only_copy)} of them had it as their only in-sync copy (unclean.leader.election.enable={unclean}: "
                            "they wait for it" + (", or lose records" if unclean == "true" else "") + ")" if only_copy else ""))
        auto = settings.get("auto.leader.rebalance.enable", "?")
        if led:
            how = (f"automatically within leader.imbalance.check.interval.seconds={settings.get('leader.imbalance.check.interval.seconds', '?')} "
                   f"once its imbalance exceeds leader.imbalance.per.broker.percentage={settings.get('leader.imbalance.per.broker.percentage', '?')}%"
                   if auto == "true" else "only by an election (auto.leader.rebalance.enable=false)")
            lines.append(f"    - leadership of {len(led)} partition(s) returns {how}; "
                         "kafka.preferred-leader-election does it at once")
    for line in lines:
        ctx.log(line)
    ctx.state["report"] = lines


RUNBOOK = Runbook(
    id="kafka.broker-down-triage",
    title="Broker down: what lost ISR or leadership, and what recovers when",
    params=(Param("broker", "the broker to look at (name, address or id; default: every down broker)", default=""),),
    prechecks=(Check("read", "the cluster's metadata can be read", check_read),),
    steps=(
        Step("report", "Report", "partitions that lost ISR members or leaders, groups, and what recovers when",
             Kind.CHECK, lambda ctx: ["Metadata, DescribeConfigs (broker settings)   # reads only"], run=do_report,
             timeout=30.0, produces=("report",)),
    ),
    teardown=common.teardown,
)
