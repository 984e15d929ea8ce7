"""rds.promote-read-replica: make an RDS read replica of the cluster's instance a standalone DB
instance (PromoteReadReplica), wait until RDS reports it available and detached, verify.

For PostgreSQL clusters with an [rds] section (the runbook is offered for every postgres
cluster; its first pre-check refuses the others). Promotion is irreversible: the replica stops
replicating from its source for good and becomes writable; the source keeps running and keeps
its other replicas. Pre-checks: the replica exists, is a read replica of this cluster's
instance, and is available; the source's state is reported (a failed source is the usual reason
to promote). The plan shows the exact API call with its parameters.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from dbops.runbook.model import Check, Confirm, Context, Kind, Param, Runbook, Step, Verdict
from dbops.secrets import scrub_text

MAX_WAIT = 3600.0  # the wait step's own limit; wait_timeout may not exceed it
DEFAULT_WAIT = 1800.0  # RDS takes minutes to promote (a reboot, then a backup)
START_SETTLE = 30.0  # how long the promote step looks for RDS to start on it


def _rds(ctx: Context) -> Any:
    return ctx.ref.cluster.rds


def _replica(ctx: Context) -> str:
    return str(ctx.params["replica"])


async def _describe(ctx: Context, ident: str) -> Any:
    from dbops.platform import rds

    return await asyncio.to_thread(rds.describe_instance, _rds(ctx).aws, ident)


async def check_rds(ctx: Context) -> Verdict:
    ref = _rds(ctx)
    if ctx.ref.cluster.engine != "postgres" or ref is None:
        return Verdict(False, f"{ctx.ref.name} has no [rds] section: this runbook is for PostgreSQL clusters on AWS RDS "
                              f"(add [...clusters.{ctx.ref.name}.rds] instance = \"...\")")
    wait = ctx.params.get("wait_timeout")
    if wait is not None and not 0 < float(wait) <= MAX_WAIT:
        return Verdict(False, f"wait_timeout must be between 0 and {MAX_WAIT:g} seconds, got {wait:g}")
    retention = ctx.params.get("backup_retention")
    if retention is not None and not 0 <= int(retention) <= 35:
        return Verdict(False, f"backup_retention must be 0 to 35 days (RDS's range), got {retention}")
    where = f" at {scrub_text(ref.aws.endpoint_url)}" if ref.aws.endpoint_url else ""  # a URL may carry user:password@
    return Verdict(True, f"cluster instance {ref.instance}, region {ref.aws.region}{where}")


async def check_replica(ctx: Context) -> Verdict:
    from dbops.platform import rds

    ident, source = _replica(ctx), _rds(ctx).instance
    try:
        inst = await _describe(ctx, ident)
    except rds.AwsError as exc:
        return Verdict(False, exc.message)
    if inst is None:
        return Verdict(False, f"no RDS instance {ident!r} in {_rds(ctx).aws.region}")
    if not inst.is_replica:
        return Verdict(False, f"{ident} is not a read replica (it replicates from nothing): nothing to promote")
    if inst.source != source:
        return Verdict(False, f"{ident} is a read replica of {inst.source}, not of this cluster's instance {source}")
    if inst.status != "available":
        return Verdict(False, f"{ident} is {inst.status}; promote only an available replica (wait, then run again)")
    for status, normal, message in inst.replication:
        if not normal:
            ctx.log(f"note: {ident}'s replication is {status}{': ' + message if message else ''}; it is promoted as it is")
    ctx.state["replica"] = {"id": ident, "class": inst.instance_class, "az": inst.az, "endpoint": inst.endpoint,
                            "engine": f"{inst.engine} {inst.engine_version}"}
    return Verdict(True, f"{ident} is an available read replica of {source} ({inst.instance_class}, {inst.az}); "
                         "PROMOTION IS IRREVERSIBLE: it stops replicating from "
                         f"{source} for good and becomes a standalone, writable instance")


async def check_source(ctx: Context) -> Verdict:
    from dbops.platform import rds

    source = _rds(ctx).instance
    try:
        inst = await _describe(ctx, source)
    except rds.AwsError as exc:
        return Verdict(False, exc.message)
    retention = ctx.params.get("backup_retention")
    if retention is None:
        # The promoted instance keeps the source's backup policy, and at least one day of it: a
        # new primary without point-in-time recovery is a trap.
        retention = max(1, inst.backup_retention_days) if inst is not None else 1
    ctx.state["backup_retention"] = int(retention)
    if inst is None:
        ctx.state["source_status"] = "gone"
        return Verdict(True, f"source {source} no longer exists; promoting {_replica(ctx)} makes it the standalone copy")
    ctx.state["source_status"] = inst.status
    others = [r for r in inst.replicas if r != _replica(ctx)]
    siblings = f"; its other replicas ({', '.join(others)}) stay replicas of {source}" if others else ""
    if inst.status != "available":
        return Verdict(True, f"source {source} is {inst.status}: promoting {_replica(ctx)} leaves it behind{siblings}")
    return Verdict(True, f"source {source} is available and keeps running; replication from it to "
                         f"{_replica(ctx)} stops: writes to {source} after the promotion are not in {_replica(ctx)}{siblings}")


def render_promote(ctx: Context) -> list[str]:
    from dbops.platform import rds

    if "backup_retention" not in ctx.state:
        return ["# the backup retention is decided by the pre-checks"]
    aws = _rds(ctx).aws
    params = rds.promote_request(_replica(ctx), ctx.state["backup_retention"])
    where = f"region {aws.region}" + (f", endpoint {scrub_text(aws.endpoint_url)}" if aws.endpoint_url else "")
    return [
        "PromoteReadReplica " + " ".join(f"{k}={v}" for k, v in params.items()) + f"   # RDS API, {where}",
        f"# irreversible: {_replica(ctx)} stops replicating from {_rds(ctx).instance} and becomes a standalone instance",
    ]


async def do_promote(ctx: Context) -> None:
    from dbops.platform import rds

    answer = await asyncio.to_thread(rds.promote_read_replica, _rds(ctx).aws, _replica(ctx), ctx.state["backup_retention"])
    ctx.log(f"RDS accepted PromoteReadReplica; {answer.id} is {answer.status}")


async def verify_started(ctx: Context) -> Verdict:
    """RDS is promoting it (not available while it works) or has promoted it (no source any more)."""
    deadline = time.monotonic() + START_SETTLE
    while True:
        inst = await _describe(ctx, _replica(ctx))
        if inst is None:
            return Verdict(False, f"{_replica(ctx)} is gone")
        if not inst.is_replica:
            return Verdict(True, f"{inst.id} no longer replicates from {_rds(ctx).instance} ({inst.status})")
        if inst.status != "available":
            return Verdict(True, f"RDS is promoting {inst.id} ({inst.status})")
        if time.monotonic() >= deadline:
            return Verdict(False, f"{inst.id} is still an available read replica of {inst.source}: RDS has not started "
                                  "promoting it")
        await asyncio.sleep(1.0)


async def wait_promoted(ctx: Context) -> None:
    from dbops.platform import rds

    limit = float(ctx.params.get("wait_timeout") or DEFAULT_WAIT)
    deadline = time.monotonic() + limit
    pause = 1.0
    last = ""
    while True:
        # A failed read (throttling, a network blip) during a wait of many minutes is shown and
        # read again; only the deadline ends the wait.
        try:
            inst = await _describe(ctx, _replica(ctx))
        except rds.AwsError as exc:
            now = f"in a state not known (the last read failed: {exc.message})"
        else:
            if inst is None:
                raise RuntimeError(f"{_replica(ctx)} disappeared while it was being promoted")
            now = f"{inst.status}, " + (f"still a replica of {inst.source}" if inst.is_replica else "standalone")
            if inst.status == "available" and not inst.is_replica:
                ctx.log(f"{inst.id}: {now}")
                return
        if now != last:
            ctx.log(f"{_replica(ctx)}: {now}")
            last = now
        if time.monotonic() + pause > deadline:
            raise RuntimeError(f"{_replica(ctx)} is {now} after {limit:g}s (wait_timeout); RDS may still finish: "
                               "watch it on the AWS pane (R), then resume this run")
        await asyncio.sleep(pause)
        pause = min(pause * 2, 15.0)


async def verify_promoted(ctx: Context) -> Verdict:
    ident, source = _replica(ctx), _rds(ctx).instance
    inst = await _describe(ctx, ident)
    if inst is None:
        return Verdict(False, f"{ident} is gone")
    if inst.is_replica:
        return Verdict(False, f"{ident} still reports ReadReplicaSourceDBInstanceIdentifier {inst.source}")
    if inst.status != "available":
        return Verdict(False, f"{ident} is {inst.status}, not available")
    src = await _describe(ctx, source)
    if src is not None and ident in src.replicas:
        return Verdict(False, f"{source} still lists {ident} among its read replicas")
    return Verdict(True, f"{ident} is available and standalone (backups kept {inst.backup_retention_days} day(s)); "
                         f"{source} no longer lists it as a replica")


RUNBOOK = Runbook(
    id="rds.promote-read-replica",
    engine="postgres",
    title="Promote an RDS read replica to a standalone instance",
    params=(
        Param("replica", "the read replica's DB instance identifier", required=True),
        Param("backup_retention", "days of automated backups for the promoted instance (default: the source's, at least 1)",
              type=int),
        Param("wait_timeout", f"seconds to wait for RDS to finish (at most {MAX_WAIT:g})", type=float, default=DEFAULT_WAIT),
    ),
    prechecks=(
        Check("rds", "the cluster runs on RDS", check_rds),
        Check("replica", "the replica", check_replica),
        Check("source", "the replica's source", check_source),
    ),
    steps=(
        Step("promote", "Promote the read replica",
             "PromoteReadReplica: RDS stops replication, reboots the replica as a standalone writable instance and "
             "takes a backup. Irreversible.",
             Kind.ACTION, render_promote, run=do_promote, verify=verify_started, destructive=True,
             confirm=Confirm.TYPE_CLUSTER, timeout=START_SETTLE + 60,
             on_failure="read the error: an InvalidDBInstanceState means RDS is already working on the instance; "
                        "look at it on the AWS pane (R)"),
        Step("wait", "Wait until it is available and standalone",
             "reads the instance every few seconds until RDS reports it available with no replication source, then "
             "checks that the old source no longer lists it",
             Kind.WAIT, lambda ctx: [f"DescribeDBInstances DBInstanceIdentifier={_replica(ctx)}   # until available, no "
                                     "ReadReplicaSourceDBInstanceIdentifier",
                                     f"DescribeDBInstances DBInstanceIdentifier={_rds(ctx).instance}   # no longer lists "
                                     f"{_replica(ctx)}"],
             run=wait_promoted, verify=verify_promoted, timeout=MAX_WAIT + 60,
             on_failure="RDS may still be working: watch the instance on the AWS pane (R) and resume this run"),
    ),
)
