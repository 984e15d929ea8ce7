"""neo4j.restore: load a dump into a database on the host, guided, then verify it against its manifest.

`--param database=neo4j --param dump=...`: the dump is a path on the Neo4j host (/backups/neo4j.dump),
or an S3 key in the cluster's backups.s3 (anything not starting with /). Its node and relationship
counts come from a manifest: for a host path, `--param manifest=<file on the dbops host>`; for
an S3 key, the dbops manifest beside it (<key>.manifest.json, its meta holding nodes and
relationships), unless a manifest file is given.

The manifest file (written by the neo4j.count-manifest runbook, or by hand) is JSON:

    {"format": "dbops-neo4j-counts/1", "database": "neo4j", "nodes": 1200, "relationships": 3400,
     "created": "2025-01-31T02:00:00+00:00", "cluster": "prod-graph", "server_version": "5.26.2"}

`nodes` and `relationships` (non-negative integers) are required; the rest is shown.

Pre-checks only read: the manifest, the server's edition and the database's state. Then one
manual step shows the exact commands for the operator to run on the host (community: stop the
server, `neo4j-admin database load --overwrite-destination=true`, start it; enterprise: STOP
DATABASE / load / START DATABASE, or from S3 CREATE DATABASE ... OPTIONS {seedURI: ...}).
dbops then waits for the database to be online and compares its node and relationship counts
with the manifest's.
"""

from __future__ import annotations

import asyncio
import json
import posixpath
import time
from pathlib import Path
from typing import Any

from dbops.runbook.model import Check, Confirm, Context, Kind, Param, Runbook, Step, Verdict
from dbops.runbooks.neo4j import common

MANIFEST_FORMAT = "dbops-neo4j-counts/1"
ONLINE_SECONDS = 300.0  # a large store may take minutes to recover and come online after a load
S3_MANIFEST_KIND = "neo4j-dump"


def read_manifest(text: str, origin: str) -> dict[str, Any]:
    """A counts manifest from JSON text; ValueError naming `origin` and what is wrong."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{origin}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{origin}: not a JSON object")
    if data.get("format") not in (None, MANIFEST_FORMAT):
        raise ValueError(f"{origin}: format {data.get('format')!r}; this dbops reads {MANIFEST_FORMAT}")
    for key in ("nodes", "relationships"):
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{origin}: {key} must be a non-negative integer, not {value!r}")
    return data


def from_s3(ctx: Context) -> bool:
    return not str(ctx.params.get("dump", "")).startswith("/")


def s3_url(ctx: Context) -> str:
    loc = ctx.ref.cluster.backups.s3
    return f"s3://{loc.bucket}/{ctx.params['dump']}" if loc else f"s3://<backups.s3 not set>/{ctx.params['dump']}"


# -- pre-checks ---------------------------------------------------------------------------------


async def check_manifest(ctx: Context) -> Verdict:
    path = ctx.params.get("manifest")
    if path:
        try:
            text = await asyncio.to_thread(Path(str(path)).expanduser().read_text, encoding="utf-8")
            data = read_manifest(text, str(path))
        except OSError as exc:
            return Verdict(False, f"manifest {path} cannot be read: {exc.strerror or type(exc).__name__}")
        except ValueError as exc:
            return Verdict(False, str(exc))
        origin = str(path)
    elif from_s3(ctx):
        from dbops.platform import s3

        loc = ctx.ref.cluster.backups.s3
        if loc is None:
            return Verdict(False, f"dump {ctx.params['dump']!r} is not a host path (/...) and {ctx.ref.name} has no "
                                  "backups.s3; give the dump's path on the Neo4j host")
        try:
            m = await asyncio.to_thread(s3.read_manifest, loc, str(ctx.params["dump"]))
            data = read_manifest(json.dumps({k: int(v) if k in ("nodes", "relationships") else v for k, v in m.meta.items()}),
                                 f"{s3_url(ctx)}.manifest.json meta")
        except s3.S3Error as exc:
            return Verdict(False, str(exc))
        except ValueError as exc:  # int() of a meta value, or the counts missing
            return Verdict(False, f"{s3_url(ctx)}.manifest.json: no node and relationship counts in its meta ({exc})")
        origin = f"{s3_url(ctx)}.manifest.json"
    else:
        return Verdict(False, "a host-path dump needs --param manifest=<the counts manifest on this host> "
                              "(see `dbops runbook run neo4j.count-manifest`)")
    ctx.state.update(nodes=data["nodes"], relationships=data["relationships"], manifest=origin)
    taken = f", taken {data['created']}" if data.get("created") else ""
    source = f" of {data['database']}" if data.get("database") else ""
    return Verdict(True, f"{origin}{source}: {data['nodes']} nodes, {data['relationships']} relationships{taken}")


async def check_server(ctx: Context) -> Verdict:
    name, a = await common.first_answering(ctx)
    data = await a.collect()
    db = str(ctx.params["database"])
    rows = data.database_rows(db)
    ctx.state.update(member=name, edition=data.edition, version=data.version, exists=bool(rows))
    if db == "system":
        return Verdict(False, "the system database is not restored with this runbook")
    if data.edition == "community" and from_s3(ctx):
        ctx.state["note"] = "community: the dump is copied from S3 to the host first"
    state = f"{db} is {rows[0].current_status}" if rows else f"{db} does not exist yet"
    if rows and rows[0].current_status == "online":
        nodes, rels = await a.counts(db)
        state += f" with {nodes} nodes and {rels} relationships now (these will be replaced)"
    return Verdict(True, f"{name}: Neo4j {data.version} {data.edition}; {state}")


# -- the manual step ----------------------------------------------------------------------------


def host_commands(ctx: Context) -> list[str]:
    db = str(ctx.params["database"])
    dump = str(ctx.params["dump"])
    edition = ctx.state.get("edition", "community")
    member = ctx.state.get("member") or ctx.ref.cluster.members[0].name
    if edition == "enterprise" and from_s3(ctx):
        # Enterprise seeds a database from a URI: every server hosting it reads the dump itself.
        return [
            f"# cypher-shell -a <{member}'s Bolt address> -d system, as an admin user:",
            f"DROP DATABASE `{db}` IF EXISTS WAIT;   # destroys the current {db}",
            f"CREATE DATABASE `{db}` OPTIONS {{seedURI: '{s3_url(ctx)}'}} WAIT;",
        ]
    out = [f"# on the Neo4j host of {member} ({common.where(ctx, member)}), as the neo4j user:"]
    if from_s3(ctx):
        folder = f"/var/tmp/dbops-restore-{ctx.run_id}"
        out += [f"mkdir -p {folder} && aws s3 cp {s3_url(ctx)} {folder}/{db}.dump"]
    else:
        folder = posixpath.dirname(dump) or "."
        # neo4j-admin loads <from-path>/<database>.dump: a dump named otherwise is linked under that name.
        if posixpath.basename(dump) != f"{db}.dump":
            staged = f"/var/tmp/dbops-restore-{ctx.run_id}"
            out += [f"mkdir -p {staged} && ln -s {dump} {staged}/{db}.dump"]
            folder = staged
    if edition == "enterprise":
        out += [f"cypher-shell -d system 'STOP DATABASE `{db}` WAIT;'",
                f"neo4j-admin database load --from-path={folder} --overwrite-destination=true {db}",
                f"cypher-shell -d system 'START DATABASE `{db}` WAIT;'"]
    else:
        # Community cannot stop one database: the whole server stops for the load.
        out += ["neo4j stop",
                f"neo4j-admin database load --from-path={folder} --overwrite-destination=true {db}",
                "neo4j start"]
    return out


# -- verification -------------------------------------------------------------------------------


async def wait_online(ctx: Context) -> None:
    db = str(ctx.params["database"])
    deadline = time.monotonic() + ONLINE_SECONDS
    last = "no answer yet"
    while time.monotonic() < deadline:
        for name, a in ctx.resources["adapters"].items():
            try:
                rows = await a.run("SHOW DATABASE $db YIELD name, currentStatus, statusMessage", db=db)
            except Exception as exc:  # the server is still starting after the load: ask again
                await a.close()
                last = f"{name}: {a.classify(exc)[1]}"
                continue
            states = {str(r["currentStatus"]) for r in rows}
            if states == {"online"}:
                ctx.log(f"{db} is online on {name}")
                ctx.state["online_on"] = name
                return
            last = f"{name}: {db} is " + (", ".join(sorted(states)) or "not there")
        await asyncio.sleep(1.0)
    raise RuntimeError(f"{db} is not online after {ONLINE_SECONDS:g}s ({last})")


async def counts_match(ctx: Context) -> Verdict:
    db = str(ctx.params["database"])
    member = ctx.state.get("online_on") or ctx.state["member"]
    nodes, rels = await common.adapter(ctx, member).counts(db)
    want_nodes, want_rels = ctx.state["nodes"], ctx.state["relationships"]
    if (nodes, rels) == (want_nodes, want_rels):
        return Verdict(True, f"{db} holds {nodes} nodes and {rels} relationships, as the manifest says")
    return Verdict(False, f"{db} holds {nodes} nodes and {rels} relationships; the manifest ({ctx.state['manifest']}) "
                          f"says {want_nodes} nodes and {want_rels} relationships")


async def verify_counts(ctx: Context) -> None:
    (await counts_match(ctx)).require(ctx.log)


RUNBOOK = Runbook(
    id="neo4j.restore",
    title="Restore a Neo4j database from a dump (guided), then verify its counts",
    params=(
        Param("database", "the database to restore into", required=True),
        Param("dump", "the dump: a path on the Neo4j host (/backups/neo4j.dump) or an S3 key in backups.s3", required=True),
        Param("manifest", "the counts manifest (JSON) on this host; default for an S3 dump: <key>.manifest.json"),
    ),
    prechecks=(
        Check("manifest", "the manifest gives the node and relationship counts", check_manifest),
        Check("server", "a member answers; its edition and the database's state", check_server),
    ),
    steps=(
        Step("load", "Load the dump (on the Neo4j host)", "the exact commands for the operator: the database's "
             "current contents are replaced", Kind.MANUAL, host_commands, destructive=True, confirm=Confirm.TYPE_CLUSTER,
             on_failure="the load did not replace the store: read neo4j-admin's output; the old store is intact "
                        "unless the load began writing"),
        Step("online", "Wait for the database to be online", "SHOW DATABASE until currentStatus is online", Kind.WAIT,
             lambda ctx: [f"SHOW DATABASE `{ctx.params['database']}` YIELD currentStatus   # until online"],
             run=wait_online, timeout=ONLINE_SECONDS + 30, produces=("online_on",)),
        Step("verify", "Verify the counts", "node and relationship counts equal the manifest's", Kind.CHECK,
             lambda ctx: ["MATCH (n) RETURN count(n)", "MATCH ()-[r]->() RETURN count(r)"],
             run=verify_counts, timeout=120.0),
    ),
    setup=common.setup,
    teardown=common.teardown,
)
