"""neo4j.count-manifest: write a database's node and relationship counts to a JSON manifest for neo4j.restore.

Run it when the dump is taken, with no writes in between (community dumps a stopped database:
run this just before stopping it): `--param database=neo4j --param out=/backups/neo4j.manifest.json`.
The counts come from Neo4j's count store, in constant time. It changes nothing on the server,
so it runs in read-only environments too. The format is neo4j.restore's (see that runbook).
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime
from pathlib import Path

from dbops.runbook.model import Check, Context, Kind, Param, Runbook, Step, Verdict
from dbops.runbooks.neo4j import common
from dbops.runbooks.neo4j.restore import MANIFEST_FORMAT


async def check_out(ctx: Context) -> Verdict:
    out = Path(str(ctx.params["out"])).expanduser()
    if out.exists() and not ctx.params.get("replace"):
        return Verdict(False, f"{out} exists; pass --param replace=true to overwrite it")
    if not out.parent.is_dir():
        return Verdict(False, f"{out.parent} is not a directory")
    return Verdict(True, f"writes {out}")


async def check_database(ctx: Context) -> Verdict:
    name, a = await common.first_answering(ctx)
    data = await a.collect()
    rows = data.database_rows(str(ctx.params["database"]))
    if not rows or rows[0].current_status != "online":
        return Verdict(False, f"database {ctx.params['database']} is " + (rows[0].current_status if rows else "not there")
                              + f" on {name}; its counts can be read only while it is online")
    ctx.state.update(member=name, version=data.version)
    return Verdict(True, f"{ctx.params['database']} is online on {name} (Neo4j {data.version} {data.edition})")


async def write_manifest(ctx: Context) -> None:
    db = str(ctx.params["database"])
    nodes, rels = await common.adapter(ctx, ctx.state["member"]).counts(db)
    manifest = {"format": MANIFEST_FORMAT, "database": db, "nodes": nodes, "relationships": rels,
                "created": datetime.now(UTC).isoformat(timespec="seconds"), "cluster": ctx.ref.name,
                "server_version": ctx.state.get("version")}
    out = Path(str(ctx.params["out"])).expanduser()
    tmp = out.with_name(out.name + ".tmp")
    # Written whole or not at all: a half-written manifest must never vouch for a restore.
    await asyncio.to_thread(tmp.write_text, json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    await asyncio.to_thread(os.replace, tmp, out)
    ctx.log(f"{out}: {nodes} nodes, {rels} relationships")


RUNBOOK = Runbook(
    id="neo4j.count-manifest",
    title="Write a Neo4j database's counts to a manifest (for neo4j.restore)",
    params=(
        Param("database", "the database to count", required=True),
        Param("out", "the manifest file to write on this host", required=True),
        Param("replace", "overwrite an existing manifest file", type=bool, default=False),
    ),
    prechecks=(
        Check("out", "the manifest file can be written", check_out),
        Check("database", "the database is online", check_database),
    ),
    steps=(
        Step("count", "Count and write the manifest", "node and relationship counts from the count store, "
             "written atomically", Kind.CHECK,
             lambda ctx: ["MATCH (n) RETURN count(n)", "MATCH ()-[r]->() RETURN count(r)",
                          f"# written to {ctx.params['out']}"], run=write_manifest, timeout=60.0),
    ),
    setup=common.setup,
    teardown=common.teardown,
)
