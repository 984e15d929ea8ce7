"""postgres.promote-replica: a planned switchover when the primary answers, a failover when not.

Switchover: checkpoint -> point the other replicas at the candidate (they cascade from it while
it is still a standby, so they follow its promotion instead of replaying WAL the new timeline
does not have) -> fence the old primary (read-only, client sessions ended) -> wait until the
candidate has replayed the old primary's final LSN -> pg_promote -> verify (out of recovery,
timeline + 1, a write probe) -> confirm the replicas stream from the new primary past the probe
-> rejoin the old primary as a replica (pg_rewind; automatic in the sandbox, which dbops manages,
a manual step with the exact commands elsewhere).

Failover (no member answers as primary): the fencing steps have nothing to fence and say so;
the candidate must be the most advanced replica by received LSN, or be overridden with a reason.

Every step is safe to run again after a crash (resume re-verifies the interrupted one first).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from dbops.engines.postgres import fencing
from dbops.engines.postgres import switchover as sw
from dbops.runbook.hosts import HostOp, Verb, hosts_for
from dbops.runbook.model import Check, Confirm, Context, Kind, Param, Runbook, Step, Verdict

LOCK_NOTE = "the run holds the cluster's runbook lock; a second console is refused until it ends"


# -- resources ---------------------------------------------------------------------------------


async def setup(ctx: Context) -> None:
    ctx.resources["conns"] = {m.name: sw.Conn.for_member(ctx.ref, m) for m in ctx.ref.cluster.members}


async def teardown(ctx: Context) -> None:
    await asyncio.gather(*(c.close() for c in ctx.resources.get("conns", {}).values()), return_exceptions=True)


def conn(ctx: Context, name: str) -> sw.Conn:
    return ctx.resources["conns"][name]


def member(ctx: Context, name: str) -> Any:
    return next(m for m in ctx.ref.cluster.members if m.name == name)


def app_name(ctx: Context, name: str) -> str:
    return member(ctx, name).application_name or name


def candidate(ctx: Context) -> str:
    return str(ctx.params["candidate"])


def others(ctx: Context) -> list[str]:
    """Replicas to repoint: every member but the candidate, the old primary and the members that
    did not answer at the pre-checks (in a failover, the dead primary is one of those)."""
    skip = {candidate(ctx), ctx.state.get("primary"), *ctx.state.get("unreachable", ())}
    return [m.name for m in ctx.ref.cluster.members if m.name not in skip]


# -- pre-checks --------------------------------------------------------------------------------


async def _precheck(ctx: Context) -> sw.PromotionPrecheck:
    """One read of every member, shared by the pre-check rows; the facts go to ctx.state."""
    if "precheck" not in ctx.resources:
        result = await sw.precheck(ctx.resources["conns"], candidate(ctx), int(ctx.params["max_lag_bytes"]))
        ctx.resources["precheck"] = result
        ctx.state.update(
            unreachable=[m.name for m in result.members if not m.reachable],
            mode=result.mode, primary=result.primary, timeline=result.timeline, primary_lsn=result.primary_lsn
        )
    return ctx.resources["precheck"]


def _verdict_check(check_id: str, title: str, names: tuple[str, ...], overridable: bool = False) -> Check:
    async def run(ctx: Context) -> Verdict:
        pre = await _precheck(ctx)
        mine = [v for v in pre.verdicts if _covers(names, v.name)]
        if not mine:
            return Verdict(True, "not applicable")
        bad = [v for v in mine if not v.ok]
        return Verdict(not bad, "; ".join(v.detail for v in (bad or mine)))

    return Check(check_id, title, run, overridable=overridable)


def _covers(names: tuple[str, ...], verdict: str) -> bool:
    return any(verdict == n or verdict.startswith(n + ":") for n in names)


KNOWN = (
    "candidate-known", "candidate-reachable", "candidate-in-recovery", "single-primary", "candidate-streaming",
    "primary-unreachable", "replay-not-paused", "same-timeline", "lag", "most-advanced", "no-promotion-running",
)


async def _unlisted(ctx: Context) -> Verdict:
    """A verdict no row above shows must still stop the run, never pass unseen."""
    pre = await _precheck(ctx)
    bad = [v for v in pre.verdicts if not v.ok and not _covers(KNOWN, v.name)]
    return Verdict(not bad, "; ".join(f"{v.name}: {v.detail}" for v in bad) or "nothing else to report")


async def _replicas(ctx: Context) -> list[str]:
    """Members that answer and are in recovery: the candidates a promotion can pick from."""

    async def is_replica(name: str, c: sw.Conn) -> str | None:
        try:
            return name if await c.fetchval("SELECT pg_is_in_recovery()") else None
        except Exception as exc:  # an unreachable member is simply not offered; say why
            ctx.log(f"{name} not offered: {c.error(exc)}")
            return None

    found = await asyncio.gather(*(is_replica(n, c) for n, c in ctx.resources["conns"].items()))
    return [n for n in found if n]


# -- steps -------------------------------------------------------------------------------------


def _switchover(ctx: Context) -> bool:
    return ctx.state.get("mode") == "switchover"


async def do_checkpoint(ctx: Context) -> None:
    if not _switchover(ctx):
        ctx.log("failover: no primary to checkpoint")
        return
    r = await sw.checkpoint(conn(ctx, ctx.state["primary"]))
    ctx.log(f"checkpoint on {r.member} done in {r.seconds:.1f}s at {r.lsn}")


def fence_targets(ctx: Context) -> list[Any]:
    """Failover: every member that did not answer at the pre-checks; any of them may be a
    primary dbops cannot see, and all of them are fenced before anything is promoted."""
    return [member(ctx, n) for n in ctx.state.get("unreachable", ()) if n != candidate(ctx)]


def _pooled(ctx: Context) -> bool:
    return ctx.ref.cluster.pgbouncer is not None


def _host_fence(ctx: Context) -> tuple[Any, Any]:
    """The fence method "sandbox" (fencing.fence's name for it): the managed hosts fence the
    member themselves, and say whether the fence holds. (None, None) where dbops does not run
    the hosts, which makes that method fail with its reason."""
    hosts = ctx.hosts
    if not hosts.managed:
        return None, None

    async def fence(name: str, new_primary: str) -> fencing.FenceResult:
        r = await hosts.perform(HostOp(Verb.FENCE, name, (new_primary,)))
        return fencing.FenceResult("sandbox", name, r.ok, r.detail)

    def commands(name: str, new_primary: str) -> list[str]:
        return hosts.render(HostOp(Verb.FENCE, name, (new_primary,)))

    return fence, commands


async def do_fence(ctx: Context) -> None:
    if not _switchover(ctx):
        await _fence_failover(ctx)
        return
    if _pooled(ctx):
        # Clients of PgBouncer wait (queued) from here until the pooler step RESUMEs them on the
        # new primary, instead of meeting a read-only server and failing once.
        await fencing.pause_pool(ctx.ref)
        ctx.log(f"PgBouncer: {ctx.ref.cluster.database} paused; its clients wait until the pooler step")
    r = await sw.fence_primary(conn(ctx, ctx.state["primary"]))
    ctx.state["final_lsn"] = r.final_lsn
    ctx.log(f"{r.member} is read-only; {r.terminated} client session(s) ended; final LSN {r.final_lsn}")
    for s in r.terminated_sessions:
        ctx.log(f"  ended: {s}")


async def _fence_failover(ctx: Context) -> None:
    targets = fence_targets(ctx)
    if not targets:
        ctx.state["fence"] = []
        ctx.log("failover: no member is unreachable, so there is nothing to fence")
        return
    new = member(ctx, candidate(ctx))
    results: list[fencing.FenceResult] = []

    async def attest(name: str, lines: list[str]) -> bool:
        return await ctx.attest(name, lines)

    sandbox, _ = _host_fence(ctx)
    for target in targets:
        results += await fencing.fence(ctx.ref, ctx.ref.fencing, target, new, log=ctx.log, attest=attest, sandbox=sandbox)
    ctx.state["fence"] = [dataclasses.asdict(r) for r in results]
    attested = [r.member for r in results if r.attested and r.fenced]
    ctx.step_detail["fence"] = ctx.state["fence"]
    if attested:
        note = (f"this failover relied on an attestation: the operator typed {', '.join(attested)} to say it is fenced; "
                "dbops did not verify it")
        ctx.step_detail["attested"] = attested
        ctx.state.setdefault("summary", []).append(note)
        ctx.log(note)


async def verify_fenced(ctx: Context) -> Verdict:
    if not _switchover(ctx):
        if "fence" not in ctx.state:
            return Verdict(False, "the fence has not run")
        by_member: dict[str, list[fencing.FenceResult]] = {}
        for raw in ctx.state["fence"]:
            r = fencing.FenceResult(**raw)
            by_member.setdefault(r.member, []).append(r)
        if not by_member:
            return Verdict(True, "failover: nothing to fence")
        bad = [name for name, rs in by_member.items() if not fencing.holds(rs)]
        details = "; ".join(r.describe() for rs in by_member.values() for r in rs)
        if bad:
            return Verdict(False, f"{', '.join(bad)} could not be fenced ({details}); nothing was promoted")
        return Verdict(True, details)
    value = await conn(ctx, ctx.state["primary"]).fetchval("SELECT current_setting('default_transaction_read_only')")
    return Verdict(value == "on", f"default_transaction_read_only = {value} on {ctx.state['primary']}")


def fence_cmds(ctx: Context) -> list[str]:
    if ctx.state.get("mode") == "switchover" or "mode" not in ctx.state:
        pause = [fencing.pool_admin_line(ctx.ref, f"PAUSE {ctx.ref.cluster.database}") + "   # clients wait until the pooler step"] if _pooled(ctx) else []
        return [*pause, *sw.describe_fence()]
    targets = fence_targets(ctx)
    if not targets:
        return ["# failover: every member answered; nothing to fence"]
    new = member(ctx, candidate(ctx))
    head = [f"# failover: fence {', '.join(t.name for t in targets)} by {' then '.join(ctx.ref.fencing.methods)} "
            "(the first verified fence ends the walk; none verified = nothing is promoted)"]
    return head + fencing.render(ctx.ref, ctx.ref.fencing, targets, new, sandbox_commands=_host_fence(ctx)[1])


async def do_wait_replayed(ctx: Context) -> None:
    if not _switchover(ctx):
        ctx.log("failover: promoting with what the candidate has received")
        return
    r = await sw.wait_replayed(conn(ctx, candidate(ctx)), ctx.state["final_lsn"], timeout=120)
    ctx.log(f"{r.member} replayed up to {r.replay_lsn} (target {r.target_lsn}) in {r.seconds:.1f}s")


async def do_promote(ctx: Context) -> None:
    r = await sw.promote(conn(ctx, candidate(ctx)), timeout=60)
    ctx.state["new_timeline"] = r.timeline
    ctx.log(f"{r.member} promoted: timeline {r.timeline}" + (" (it was already primary)" if r.already_primary else ""))


async def verify_promoted(ctx: Context) -> Verdict:
    in_recovery = await conn(ctx, candidate(ctx)).fetchval("SELECT pg_is_in_recovery()")
    return Verdict(in_recovery is False, f"{candidate(ctx)} {'is still in recovery' if in_recovery else 'is out of recovery'}")


async def do_verify_new_primary(ctx: Context) -> None:
    expected = int(ctx.state["timeline"]) + 1
    r = await sw.verify_new_primary(conn(ctx, candidate(ctx)), expected)
    ctx.state["probe_lsn"] = r.probe_lsn
    ctx.log(f"{r.member}: timeline {r.timeline}, write probe {r.probe_ms:.1f} ms at {r.probe_lsn}")


async def do_repoint(ctx: Context) -> None:
    new = conn(ctx, candidate(ctx))
    for name in others(ctx):
        replica = conn(ctx, name)
        slot = await replica.fetchval("SELECT nullif(current_setting('primary_slot_name'), '')")
        if slot:
            s = await sw.ensure_slot(new, slot)
            ctx.log(f"slot {s.slot_name} on {s.member}: {'created' if s.created else 'already there'}")
        r = await sw.repoint_replica(replica, new.host, new.port, app_name(ctx, name), slot)
        ctx.log(f"{name} now points at {new.name}" + ("" if r.changed else " (already did)"))
        w = await sw.wait_streaming_from(new, app_name(ctx, name), timeout=60)
        ctx.log(f"{name} streams from {new.name} (replayed {w.replay_lsn})")


async def do_follow(ctx: Context) -> None:
    new = conn(ctx, candidate(ctx))
    for name in others(ctx):
        w = await sw.wait_streaming_from(new, app_name(ctx, name), timeout=60, caught_up_to=ctx.state.get("probe_lsn"))
        ctx.log(f"{name} follows {new.name} on the new timeline (replayed {w.replay_lsn})")


async def verify_repointed(ctx: Context) -> Verdict:
    new = conn(ctx, candidate(ctx))
    streaming = {r["application_name"] for r in await new.fetch("SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'")}
    missing = [n for n in others(ctx) if app_name(ctx, n) not in streaming]
    return Verdict(not missing, f"not streaming from {new.name}: {', '.join(missing)}" if missing else f"all replicas stream from {new.name}")


async def do_rejoin(ctx: Context) -> None:
    old = ctx.state.get("primary")
    if not old:
        ctx.log("failover: the old primary is down; rejoin it later with pg_rewind (commands in the plan)")
        return
    r = await ctx.hosts.perform(HostOp(Verb.RUN, old, ("rejoin", candidate(ctx))))
    ctx.log(r.detail)


async def verify_rejoined(ctx: Context) -> Verdict:
    old = ctx.state.get("primary")
    if not old:
        return Verdict(True, "failover: nothing to rejoin now")
    # A quick look, not a wait: the rejoin itself waits until the member streams, and on resume
    # after a crash mid-rejoin a long wait here would only delay re-running it.
    try:
        w = await sw.wait_streaming_from(conn(ctx, candidate(ctx)), app_name(ctx, old), timeout=3)
    except sw.SwitchoverError as exc:
        return Verdict(False, str(exc))
    return Verdict(True, f"{old} streams from {w.member}")


def rejoin_cmds(ctx: Context) -> list[str]:
    old = ctx.state.get("primary") or "<old primary>"
    new = member(ctx, candidate(ctx))
    manual = sw.rejoin_commands(
        data_dir=f"<data directory of {old}>", new_primary_host=new.host, new_primary_port=new.port,
        application_name=app_name(ctx, old) if old in [m.name for m in ctx.ref.cluster.members] else old,
        user=ctx.ref.cluster.user,
    )
    if not ctx.state.get("primary"):  # failover: the old primary is rejoined later, by hand
        return manual
    return ctx.hosts.render(HostOp(Verb.RUN, old, ("rejoin", new.name), manual=tuple(manual)))


STEPS = (
    Step("checkpoint", "Checkpoint the primary", "Shortens the promotion: the candidate's restartpoint has less to do.",
         Kind.ACTION, lambda ctx: sw.describe_checkpoint(), do_checkpoint, timeout=600),
    Step("repoint", "Point the other replicas at the candidate", "Each other replica streams from the candidate "
         "(its slot created there first) and will follow it through the promotion; nothing is fenced yet.", Kind.ACTION,
         lambda ctx: [line for n in others(ctx) for line in sw.describe_repoint(member(ctx, candidate(ctx)).host,
                                                                                   member(ctx, candidate(ctx)).port, app_name(ctx, n))],
         do_repoint, verify_repointed, timeout=180),
    Step("fence", "Fence the old primary", "Switchover: PgBouncer paused (clients wait), the old primary read-only, "
         "its client sessions ended, so no write lands after the candidate's promotion point. Failover: the cluster's "
         "[fencing] methods, in order, until one is verified; none verified stops the run before anything is promoted.",
         Kind.ACTION, fence_cmds, do_fence, verify_fenced,
         destructive=True, confirm=Confirm.TYPE_CLUSTER, timeout=300, overridable=True, produces=("final_lsn",),
         on_failure="switchover: give writes back to the old primary (ALTER SYSTEM RESET default_transaction_read_only; "
                    "SELECT pg_reload_conf();) and RESUME the database on PgBouncer. Failover: fence the old primary by "
                    "hand, then resume; or run again with --override fence=REASON (audited) if it cannot be fenced"),
    Step("wait-replayed", "Wait for the candidate to replay the final LSN", "No committed transaction is left behind.",
         Kind.WAIT, lambda ctx: sw.describe_wait_replayed(ctx.state.get("final_lsn", "<final LSN from the fence>")),
         do_wait_replayed, timeout=150,
         on_failure="the candidate is not catching up: resume to wait again, or unfence the old primary (see the fence step)"),
    Step("promote", "Promote the candidate", "pg_promote, then poll to a definite outcome.", Kind.ACTION,
         lambda ctx: sw.describe_promote(), do_promote, verify_promoted, confirm=Confirm.YES_NO, timeout=120, produces=("new_timeline",),
         on_failure="check the candidate's log; `dbops runbook resume` re-checks whether it became primary before anything else"),
    Step("verify", "Verify the new primary", "Out of recovery, timeline + 1, and a write probe succeeds.", Kind.CHECK,
         lambda ctx: sw.describe_verify(), do_verify_new_primary, timeout=60, produces=("probe_lsn",)),
    Step("follow", "Confirm the replicas follow the new primary", "Each other replica streams from the new primary "
         "and has replayed past the write probe.", Kind.WAIT,
         lambda ctx: [line for n in others(ctx) for line in sw.describe_wait_streaming_from(app_name(ctx, n), ctx.state.get("probe_lsn", "<probe LSN>"))],
         do_follow, verify_repointed, timeout=120,
         on_failure="a replica that replayed WAL of the old timeline cannot follow: rejoin it with pg_rewind (the rejoin step's commands)"),
)

# -- PgBouncer follows the new primary ---------------------------------------------------------


async def _pooler_upstream(ctx: Context) -> tuple[str, int] | None:
    """(host, port) PgBouncer's admin console (SHOW DATABASES) gives for the cluster's database."""
    from dbops.engines.postgres.pgbouncer import SimpleQueryClient
    from dbops.secrets import resolve

    pb = ctx.ref.cluster.pgbouncer
    assert pb is not None
    client = SimpleQueryClient(pb.host, pb.port, pb.user, resolve(pb.password))
    try:
        await asyncio.wait_for(client.connect(), timeout=ctx.ref.timeout + 2)
        (rows,) = await asyncio.wait_for(client.query_many("SHOW DATABASES"), timeout=ctx.ref.timeout + 2)
    finally:
        await client.close()
    row = next((r for r in rows if r.get("name") == ctx.ref.cluster.database), None)
    return (str(row.get("host")), int(row.get("port") or 0)) if row else None


def _repoint_pooler(ctx: Context, manual: tuple[str, ...] = ()) -> HostOp:
    return HostOp(Verb.RUN, "pgbouncer", ("repoint-pooler", candidate(ctx)), manual=manual)


async def do_repoint_pooler(ctx: Context) -> None:
    try:
        await ctx.hosts.perform(_repoint_pooler(ctx))
    except Exception as exc:
        # The switchover paused PgBouncer before the fence: say so, or its clients just hang.
        db = ctx.ref.cluster.database
        resume = f"`{fencing.pool_admin_line(ctx.ref, f'RESUME {db}')}`"
        try:
            paused = await fencing.pool_paused(ctx.ref)
        except Exception as why:
            raise RuntimeError(f"{exc}; PgBouncer's {db} may still be PAUSED (cannot tell: {why}): point it at "
                               f"{candidate(ctx)}, then {resume}") from None
        if paused:
            raise RuntimeError(f"{exc}; PgBouncer's {db} is still PAUSED (its clients wait): point it at "
                               f"{candidate(ctx)}, then {resume}") from None
        raise
    ctx.log(f"PgBouncer now sends new server connections to {candidate(ctx)}")
    if await fencing.resume_pool(ctx.ref):
        ctx.log(f"PgBouncer: {ctx.ref.cluster.database} resumed; waiting clients go on, on {candidate(ctx)}")
    for line in await fencing.first_login_now(ctx.ref):
        ctx.log(f"PgBouncer: {line}")


async def verify_pooler(ctx: Context) -> Verdict:
    new = member(ctx, candidate(ctx))
    upstream = await _pooler_upstream(ctx)
    if upstream is None:
        return Verdict(False, f"PgBouncer lists no database {ctx.ref.cluster.database}")
    ok = upstream[1] == new.port and upstream[0] in (new.host, "localhost" if new.host == "127.0.0.1" else new.host)
    paused = await fencing.pool_paused(ctx.ref)
    return Verdict(ok and not paused, f"PgBouncer's {ctx.ref.cluster.database} points at {upstream[0]}:{upstream[1]}"
                       + ("" if ok else f", not at {candidate(ctx)} ({new.host}:{new.port})")
                       + (", and is still PAUSED (clients wait): RESUME it" if paused else ""))


def pooler_cmds(ctx: Context) -> list[str]:
    pb = ctx.ref.cluster.pgbouncer
    new = member(ctx, candidate(ctx)) if candidate(ctx) in {m.name for m in ctx.ref.cluster.members} else None
    if pb is None or new is None:
        return ["# known once the candidate is known"]
    db = ctx.ref.cluster.database
    if ctx.hosts.managed:
        return [*ctx.hosts.render(_repoint_pooler(ctx)),
                fencing.pool_admin_line(ctx.ref, f"RESUME {db}") + "   # only if it is paused",
                *fencing.first_login_lines(ctx.ref)]
    return ctx.hosts.render(_repoint_pooler(ctx, manual=(
        f"# on the PgBouncer host ({pb.host}:{pb.port}): in pgbouncer.ini, [databases], point {db} at the new primary:",
        f"{db} = host={new.host} port={new.port} dbname={db}",
        f"psql -h {pb.host} -p {pb.port} -U {pb.user} -d pgbouncer -c RELOAD",
        fencing.pool_admin_line(ctx.ref, f"RESUME {db}") + "   # if it is paused (the fence paused it); clients waiting go on",
        *fencing.first_login_lines(ctx.ref))))


POOLER_AUTOMATIC = Step(
    "pooler", "Point PgBouncer at the new primary", "Its database entry names the new primary, then RELOAD and RESUME: "
    "new server connections go there, and clients that waited while it was paused go on; clients stay connected. "
    "dbops then queries through it, with server_login_retry at 1 s meanwhile, so that PgBouncer logs in to the new "
    "primary at once rather than after its retry wait.", Kind.ACTION,
    pooler_cmds, do_repoint_pooler, verify_pooler, timeout=60,
    on_failure="clients of PgBouncer still reach the old (fenced, read-only) primary: edit pgbouncer.ini and RELOAD by hand",
)

POOLER_MANUAL = Step(
    "pooler", "Point PgBouncer at the new primary (manual)", "dbops cannot edit PgBouncer's configuration on its host: "
    "run these there, then confirm; dbops then checks SHOW DATABASES.", Kind.MANUAL, pooler_cmds, None, verify_pooler,
    timeout=3600,
)

REJOIN_AUTOMATIC = Step(
    "rejoin", "Rejoin the old primary as a replica", "pg_rewind against the new primary, then start it as a standby "
    "(dbops manages this sandbox's servers).", Kind.ACTION, rejoin_cmds, do_rejoin, verify_rejoined, timeout=300,
    on_failure="run the shown commands by hand; the new primary is already serving",
)

REJOIN_MANUAL = Step(
    "rejoin", "Rejoin the old primary as a replica (manual)", "dbops cannot reach the old primary's host: run these "
    "commands there as the postgres OS user, then confirm; dbops then checks it streams.", Kind.MANUAL, rejoin_cmds,
    None, verify_rejoined, timeout=3600,
)


def _book(steps: tuple[Step, ...]) -> Runbook:
    return Runbook(
        id="postgres.promote-replica",
        title="Promote a replica (switchover, or failover when the primary is down)",
        params=(
            Param("candidate", "the replica to promote", required=True, choices=_replicas),
            Param("max_lag_bytes", "refuse when the candidate is further behind (bytes)", type=int, default=sw.DEFAULT_MAX_LAG_BYTES),
        ),
        prechecks=(
            _verdict_check("topology", "one primary (or none: failover), candidate is a streaming replica",
                           ("candidate-known", "candidate-reachable", "candidate-in-recovery", "single-primary",
                            "candidate-streaming", "primary-unreachable")),
            _verdict_check("paused", "replay is not paused on the candidate", ("replay-not-paused",)),
            _verdict_check("timeline", "candidate is on the primary's timeline", ("same-timeline",)),
            _verdict_check("lag", "candidate lag within max_lag_bytes", ("lag",), overridable=True),
            _verdict_check("most-advanced", "failover: candidate is the most advanced replica", ("most-advanced",), overridable=True),
            _verdict_check("no-promotion", "no other promotion is running", ("no-promotion-running",)),
            Check("other", "nothing else stands in the way", _unlisted),
        ),
        steps=steps,
        setup=setup,
        teardown=teardown,
    )


def _variant(managed: bool, pooler: bool) -> Runbook:
    steps = list(STEPS)
    if pooler:  # right after the new primary is verified: writes through the pooler resume there
        steps.insert([s.id for s in steps].index("verify") + 1, POOLER_AUTOMATIC if managed else POOLER_MANUAL)
    return _book((*steps, REJOIN_AUTOMATIC if managed else REJOIN_MANUAL))


# Where dbops runs the servers (the sandbox) the rejoin (and PgBouncer's repointing) is automatic;
# everywhere else those are manual steps. A cluster without PgBouncer has no pooler step.
# Which variant applies is decided per cluster when the runbook is built for it.
_VARIANTS = {(m, p): _variant(m, p) for m in (True, False) for p in (True, False)}
RUNBOOK = dataclasses.replace(
    _VARIANTS[(False, False)],
    specialize=lambda ref: _VARIANTS[(hosts_for(ref).managed, ref.cluster.pgbouncer is not None)],
)
