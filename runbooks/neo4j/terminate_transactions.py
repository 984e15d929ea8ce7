"""neo4j.terminate-transactions: end the transactions an operator selects, after showing exactly which.

Select by age (`--param older_than=30s`; ms, s, m, h; a bare number is seconds), user, query
text (a case-insensitive substring), database, and/or explicit ids (`--param ids=neo4j-transaction-12,...`);
every given selector must match. At least one selector is required: this runbook never ends every
transaction on a server. `member` limits it to one server (default: every member is read).

Pre-checks read SHOW TRANSACTIONS on every member and list the matching transactions; when none
matches, the run is refused ("nothing to do"). The plan shows each one (id, user, elapsed,
query) and the exact TERMINATE TRANSACTIONS statement per server; after a yes/no confirmation
(the cluster's name on production) it runs, and verification waits until they are gone.
dbops' own statements are never listed, so never terminated.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from typing import Any

from dbops.config import ClusterRef
from dbops.engines.neo4j.assess import excerpt
from dbops.engines.neo4j.data import Transaction, terminate_statement
from dbops.model import human_seconds
from dbops.runbook.model import Check, Confirm, Context, Kind, Param, Runbook, Step, Verdict
from dbops.runbooks.neo4j import common

GONE_SECONDS = 30.0  # a terminated transaction stops at its next check for termination
SELECTORS = ("older_than", "user", "query", "database", "ids")
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_age_ms(raw: str) -> float:
    """'500ms', '30s', '2m', '1h', or a bare number of seconds -> milliseconds."""
    m = _AGE.match(raw)
    if m is None:
        raise ValueError(f"--param older_than={raw!r}: expected a number with ms, s, m or h (e.g. 30s, 500ms)")
    return float(m.group(1)) * {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}[m.group(2) or "s"]


def _ids(ctx: Context) -> list[str]:
    return [i.strip() for i in str(ctx.params.get("ids") or "").split(",") if i.strip()]


def selection(ctx: Context) -> str:
    """The selectors in words, for the plan and the refusals."""
    p = ctx.params
    parts = []
    if p.get("older_than"):
        parts.append(f"older than {p['older_than']}")
    for key in ("user", "database"):
        if p.get(key):
            parts.append(f"{key} {p[key]}")
    if p.get("query"):
        parts.append(f"query containing {p['query']!r}")
    if _ids(ctx):
        parts.append("id " + ", ".join(_ids(ctx)))
    if p.get("member"):
        parts.append(f"on {p['member']}")
    return ", ".join(parts)


def matches(ctx: Context, t: Transaction, min_ms: float | None) -> bool:
    p = ctx.params
    return ((min_ms is None or t.elapsed_ms > min_ms)
            and (not p.get("user") or t.user == p["user"])
            and (not p.get("database") or t.database == p["database"])
            and (not p.get("query") or str(p["query"]).lower() in t.query.lower())
            and (not _ids(ctx) or t.id in _ids(ctx)))


# -- pre-checks ---------------------------------------------------------------------------------


async def check_selection(ctx: Context) -> Verdict:
    if not any(ctx.params.get(k) for k in SELECTORS):
        return Verdict(False, "give at least one of --param older_than=, user=, query=, database=, ids=: "
                              "this runbook never ends every transaction on a server")
    if ctx.params.get("older_than"):
        try:
            parse_age_ms(str(ctx.params["older_than"]))
        except ValueError as exc:
            return Verdict(False, str(exc))
    member = ctx.params.get("member")
    if member and member not in {m.name for m in ctx.ref.cluster.members}:
        return Verdict(False, f"no member {member!r} in {ctx.ref.name}; members: "
                              + ", ".join(m.name for m in ctx.ref.cluster.members))
    return Verdict(True, selection(ctx))


async def check_matches(ctx: Context) -> Verdict:
    min_ms = parse_age_ms(str(ctx.params["older_than"])) if ctx.params.get("older_than") else None
    names = [ctx.params["member"]] if ctx.params.get("member") else [m.name for m in ctx.ref.cluster.members]
    targets: list[dict[str, Any]] = []
    seen = 0
    for name in names:
        a = common.adapter(ctx, name)
        try:
            found = await a.transactions()
        except Exception as exc:  # a member that cannot be read may hold matching transactions
            await a.close()
            return Verdict(False, f"{name} cannot be read ({a.classify(exc)[1]}); "
                                  f"its transactions are unknown (limit the run with --param member=...)")
        seen += len(found)
        targets += [{"member": name, "id": t.id, "user": t.user, "database": t.database, "elapsed_ms": t.elapsed_ms,
                     "query": excerpt(t.query)} for t in found if matches(ctx, t, min_ms)]
    ctx.state["targets"] = targets
    if not targets:
        return Verdict(False, f"nothing to do: no transaction matches ({selection(ctx)}) among the {seen} open on "
                              + ", ".join(names))
    ambiguous = sorted({t["id"] for t in targets if sum(1 for u in targets if u["id"] == t["id"]) > 1})
    if ambiguous and not ctx.params.get("member"):
        # Every server numbers its own transactions: an id alone may name one on each.
        return Verdict(False, f"{', '.join(ambiguous)} match on more than one server "
                              f"({', '.join(sorted({t['member'] for t in targets if t['id'] in ambiguous}))}): "
                              "name the server with --param member=...")
    missing = [i for i in _ids(ctx) if i not in {t["id"] for t in targets}]
    note = f"; not found: {', '.join(missing)}" if missing else ""
    return Verdict(True, f"{len(targets)} transaction(s) match: " + ", ".join(t["id"] for t in targets) + note)


# -- steps --------------------------------------------------------------------------------------


def _by_member(ctx: Context) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for t in ctx.state.get("targets", []):
        out.setdefault(t["member"], []).append(t)
    return out


def terminate_commands(ctx: Context) -> list[str]:
    groups = _by_member(ctx)
    if not groups:
        return ["# no matching transaction (see the pre-checks)"]
    out = []
    for member, txs in groups.items():
        out.append(f"# on {member} ({common.where(ctx, member)}), database system:")
        for t in txs:
            out.append(f"#   {t['id']}  {t['user'] or '?'}  {human_seconds(t['elapsed_ms'] / 1000)}  {t['query']}")
        out.append(terminate_statement([t["id"] for t in txs]))
    return out


async def terminate(ctx: Context) -> None:
    """Terminates the planned ids that are still the planned transactions: a resumed run (or a
    server restarted meanwhile) may find an id reused by another transaction, which is refused."""
    answers: dict[str, str] = {}
    for member, planned in _by_member(ctx).items():
        now = {t.id: t for t in await common.adapter(ctx, member).transactions()}
        changed = [p["id"] for p in planned if p["id"] in now and
                   (now[p["id"]].user, now[p["id"]].database, excerpt(now[p["id"]].query)) != (p["user"], p["database"], p["query"])]
        if changed:
            raise RuntimeError(f"on {member}, {', '.join(changed)} now name other transactions than the plan showed; "
                               "nothing was terminated there: run the runbook again for a fresh plan")
        txs = [p for p in planned if p["id"] in now]
        for p in planned:
            if p["id"] not in now:
                ctx.log(f"{member} {p['id']}: already ended")
        if not txs:
            continue
        got = await common.adapter(ctx, member).terminate([t["id"] for t in txs])
        answers.update(got)
        for t in txs:
            ctx.log(f"{member} {t['id']}: {got.get(t['id'], 'no answer')}")
    ctx.state["answers"] = answers


async def verify_gone(ctx: Context) -> Verdict:
    deadline = time.monotonic() + GONE_SECONDS
    while True:
        left = []
        for member, txs in _by_member(ctx).items():
            open_now = {t.id: t for t in await common.adapter(ctx, member).transactions()}
            left += [f"{t['id']} on {member} ({open_now[t['id']].status})" for t in txs if t["id"] in open_now]
        if not left:
            return Verdict(True, f"{len(ctx.state.get('targets', []))} transaction(s) gone: "
                                 + ", ".join(t["id"] for t in ctx.state.get("targets", [])))
        if time.monotonic() > deadline:
            return Verdict(False, f"still open after {GONE_SECONDS:g}s: " + ", ".join(left))
        await asyncio.sleep(0.5)


PARAMS = (
    Param("older_than", "only transactions running longer than this (500ms, 30s, 5m; a bare number is seconds)"),
    Param("user", "only this user's transactions"),
    Param("query", "only transactions whose query contains this text (case-insensitive)"),
    Param("database", "only transactions on this database"),
    Param("ids", "only these transaction ids, comma-separated (as the pane shows them)"),
    Param("member", "only this server (default: every member)"),
)

STEP = Step("terminate", "Terminate the transactions", "TERMINATE TRANSACTIONS for exactly the ids listed; their clients "
            "get an error and the transactions roll back", Kind.ACTION, terminate_commands, run=terminate,
            verify=verify_gone, confirm=Confirm.YES_NO, timeout=60.0,
            on_failure="a transaction that stays open is in a step that does not check for termination: see its "
                       "status in the pane; run the runbook again, or restart the client that holds it")


def _book(step: Step) -> Runbook:
    return Runbook(
        id="neo4j.terminate-transactions",
        title="Terminate selected Neo4j transactions",
        params=PARAMS,
        prechecks=(
            Check("selection", "at least one selector, and valid", check_selection),
            Check("matches", "the matching transactions, read now", check_matches),
        ),
        steps=(step,),
        setup=common.setup,
        teardown=common.teardown,
    )


PRODUCTION = _book(dataclasses.replace(STEP, confirm=Confirm.TYPE_CLUSTER))


def _specialize(ref: ClusterRef) -> Runbook | None:
    # Production asks for the cluster's name: a yes typed out of habit must not end its transactions.
    return PRODUCTION if ref.production else None


RUNBOOK = dataclasses.replace(_book(STEP), specialize=_specialize)
