"""postgres.reindex-concurrently: REINDEX INDEX CONCURRENTLY of the indexes the operator names, on
the primary, one after the other, each verified valid (pg_index.indisvalid) afterwards.

Pre-checks (read-only): the primary answers; every name is a plain index the cluster's user may
rebuild concurrently (not a system catalog's, not an exclusion constraint's, not a partitioned
index); no earlier failed REINDEX CONCURRENTLY left a copy of it behind (overridable).

REINDEX CONCURRENTLY builds a new copy beside the index (<index>_ccnew), swaps it in, and drops
the old one (<index>_ccold) without blocking reads or writes; it needs the index's size again in
free disk while it runs, and waits at each phase for the transactions older than it. When it
fails, the copy it leaves is invalid (unused by queries but updated by every write): the step
drops exactly what this run left (DROP INDEX CONCURRENTLY) and says what to do if it cannot.
"""

from __future__ import annotations

import time
from typing import Any

from dbops.engines.postgres import maintenance as mt
from dbops.model import human_bytes
from dbops.runbook.model import Check, Confirm, Context, Kind, Param, Runbook, Step, Verdict
from dbops.runbooks.postgres import common
from dbops.runbooks.postgres import relations as rel
from dbops.secrets import scrub_text

STATEMENT_TIMEOUT = 4 * 3600.0  # one index's REINDEX
STEP_TIMEOUT = 12 * 3600.0
CLEANUP_TIMEOUT = 120.0


def _judge(r: mt.Relation) -> str | None:
    if r.kind == "I":
        return "a partitioned index: name the index of each partition"
    if r.kind != "i":
        return f"a {rel.kind_name(r.kind)}, not an index"
    if r.system:
        return "a system catalog's index: these cannot be rebuilt concurrently"
    if r.exclusion:
        return "backs an exclusion constraint: PostgreSQL cannot rebuild those concurrently"
    if not r.owned:
        return "the cluster's user neither owns its table nor is a superuser"
    return None


def lock_wait(ctx: Context) -> float:
    value = float(ctx.params.get("lock_wait") or 0)
    if value <= 0:
        raise ValueError(f"lock_wait must be a number of seconds above 0, not {ctx.params.get('lock_wait')!r}")
    return value


async def check_indexes(ctx: Context) -> Verdict:
    found, problems = await rel.resolve_all(ctx, "indexes", _judge)
    if problems:
        return Verdict(False, "; ".join(problems))
    ctx.state["indexes"] = [{"oid": r.oid, "quoted": r.quoted, "display": r.display, "name": r.name,
                             "table_oid": r.table_oid, "table": r.table_name, "size": r.size_bytes, "valid": r.valid}
                            for r in found]
    return Verdict(True, "; ".join(f"{r.display} on {r.table_name} ({human_bytes(r.size_bytes)}"
                                   f"{', INVALID now' if not r.valid else ''})" for r in found))


def own_leftovers(index: dict, invalid: list[str], before: list[str] | None = None) -> list[str]:
    """The invalid copies of `index` REINDEX CONCURRENTLY left (<name>_ccnew/_ccold, the name
    perhaps cut to fit 63 bytes), among the table's invalid indexes; new since `before`."""
    out = []
    for name in mt.leftovers(before or [], invalid):
        bare = name.rsplit(".", 1)[-1].strip('"').replace('""', '"')
        base = mt.CONCURRENT_LEFTOVER.sub("", bare)
        if base and index["name"].startswith(base):
            out.append(name)
    return out


async def check_leftovers(ctx: Context) -> Verdict:
    if "indexes" not in ctx.state:
        return Verdict(False, "not checked: the indexes named did not all resolve (see above)")
    conn = rel.primary(ctx)
    found = []
    for index in ctx.state["indexes"]:
        found += own_leftovers(index, await mt.invalid_indexes(conn, index["table_oid"], None))
    if found:
        return Verdict(False, "an earlier REINDEX CONCURRENTLY " + mt.leftover_advice(found))
    return Verdict(True, "no invalid _ccnew/_ccold copy of them exists")


async def check_lock_wait(ctx: Context) -> Verdict:
    try:
        return Verdict(True, f"lock_timeout {lock_wait(ctx):g}s at each wait")
    except ValueError as exc:
        return Verdict(False, str(exc))


def statement(index: dict) -> str:
    return f"REINDEX INDEX CONCURRENTLY {index['quoted']}"


def reindex_commands(ctx: Context) -> list[str]:
    indexes = ctx.state["indexes"]
    return [f"-- on {ctx.state['primary']} (the primary), one index after the other, "
            f"statement_timeout {STATEMENT_TIMEOUT / 3600:g}h each:",
            f"SET lock_timeout = '{lock_wait(ctx):g}s'",
            *(statement(i) for i in indexes),
            "-- meanwhile, every 0.5 s on a second connection: SELECT phase, blocks_done, blocks_total FROM "
            "pg_stat_progress_create_index WHERE pid = <the REINDEX's pid>",
            "-- after each: SELECT indisvalid AND indisready FROM pg_index WHERE indexrelid = '<index>'::regclass",
            "-- if one fails: DROP INDEX CONCURRENTLY each invalid <index>_ccnew/_ccold it left"]


async def _cleanup(ctx: Context, watch: Any, index: dict, before: list[str], wait: float) -> tuple[list[str], list[str]]:
    """Drop what a failed REINDEX of `index` left: (dropped, what could not be, each with why)."""
    left = own_leftovers(index, await mt.invalid_indexes(watch, index["table_oid"], CLEANUP_TIMEOUT), before)
    dropped, kept = [], []
    for name in left:
        try:
            await watch.execute(f"DROP INDEX CONCURRENTLY {name}", timeout=wait + CLEANUP_TIMEOUT)
            dropped.append(name)
        except Exception as exc:  # named in the step's error, with why and what to do about it
            kept.append(f"{name} ({rel.primary(ctx).error(exc)})")
    return dropped, kept


def _failure(index: dict, exc: BaseException, dropped: list[str], kept: list[str]) -> str:
    text = scrub_text(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    out = f"{statement(index)} failed: {text}"
    if dropped:
        out += f"; dropped the invalid copy it left: {', '.join(dropped)}"
    if kept:
        out += "; could not drop " + ", ".join(kept) + "; " + mt.leftover_advice([k.split(" (", 1)[0] for k in kept])
    if not dropped and not kept:
        out += "; it left no invalid copy"
    return out


async def do_reindex(ctx: Context) -> None:
    indexes = ctx.state["indexes"]
    wait = lock_wait(ctx)
    progress = rel.StepProgress(ctx)
    async with rel.connections(ctx, STATEMENT_TIMEOUT) as (work, watch):
        await work.execute(f"SET lock_timeout = '{wait:g}s'")
        await watch.execute(f"SET lock_timeout = '{wait:g}s'")
        pid = work.get_server_pid()
        for n, index in enumerate(indexes, 1):
            ctx.log(f"{statement(index)} ({n} of {len(indexes)}), backend pid {pid}")
            progress.reset()
            before = await mt.invalid_indexes(watch, index["table_oid"], CLEANUP_TIMEOUT)
            started = time.monotonic()
            try:
                await mt.watched(work.execute(statement(index), timeout=STATEMENT_TIMEOUT + 5),
                                 lambda: mt.read_progress(watch, pid, 10.0), progress.report, progress.failed)
            except Exception as exc:
                try:
                    dropped, kept = await _cleanup(ctx, watch, index, before, wait)
                except Exception as cleanup_exc:
                    raise RuntimeError(f"{statement(index)} failed: {scrub_text(str(exc))}; the invalid copies it may have "
                                       f"left could not be listed ({rel.primary(ctx).error(cleanup_exc)}): look for "
                                       f"{index['name']}_ccnew / _ccold on {index['table']} and drop them with "
                                       "DROP INDEX CONCURRENTLY") from exc
                raise RuntimeError(_failure(index, exc, dropped, kept)) from exc
            row = await watch.fetchrow(mt.INDEX_VALID, index["quoted"])
            size = int(row["size_bytes"]) if row is not None else None
            ctx.log(f"{index['display']}: rebuilt in {time.monotonic() - started:.1f}s; "
                    f"{human_bytes(index['size'])} -> {human_bytes(size)}")


async def verify_valid(ctx: Context) -> Verdict:
    conn = rel.primary(ctx)
    problems, facts = [], []
    for index in ctx.state["indexes"]:
        row = await conn.fetchrow(mt.INDEX_VALID, index["quoted"])
        left = own_leftovers(index, await mt.invalid_indexes(conn, index["table_oid"], None))
        if row is None:
            problems.append(f"{index['display']} does not exist any more")
        elif not row["valid"]:
            problems.append(f"{index['display']} is not valid (pg_index.indisvalid/indisready false)")
        if left:
            problems.append(mt.leftover_advice(left))
        if row is not None and row["valid"] and not left:
            facts.append(f"{index['display']} ({human_bytes(int(row['size_bytes']))})")
    if problems:
        return Verdict(False, "; ".join(problems))
    return Verdict(True, "valid (pg_index.indisvalid), no copy left: " + ", ".join(facts))


RUNBOOK = Runbook(
    id="postgres.reindex-concurrently",
    title="REINDEX INDEX CONCURRENTLY chosen indexes, verified valid",
    params=(
        Param("indexes", "indexes to rebuild, comma-separated (schema.index; a bare name is looked up in the search_path)",
              required=True),
        Param("lock_wait", "seconds the REINDEX may wait at each of its waits for older transactions (lock_timeout)",
              type=float, default=300.0),
    ),
    prechecks=(
        Check("primary", "the primary answers", rel.check_primary),
        Check("indexes", "every name is an index that can be rebuilt concurrently", check_indexes),
        Check("leftovers", "no invalid copy from an earlier REINDEX CONCURRENTLY", check_leftovers, overridable=True),
        Check("lock-wait", "the lock wait is a positive number of seconds", check_lock_wait),
    ),
    steps=(
        Step("reindex", "REINDEX INDEX CONCURRENTLY the indexes", "Rebuilds each index beside the old one, swaps it in "
             "and drops the old one, without blocking reads or writes; needs each index's size in free disk while it "
             "runs. A failed rebuild's invalid copy is dropped.", Kind.ACTION, reindex_commands, do_reindex, verify_valid,
             confirm=Confirm.YES_NO, timeout=STEP_TIMEOUT,
             on_failure="the error says which index and why (a lock timeout: a transaction older than the REINDEX stayed "
                        "open longer than lock_wait; see the Activity tab). The indexes before it are rebuilt; the one "
                        "that failed keeps its old, valid copy. If an invalid <index>_ccnew/_ccold is named as left "
                        "behind, drop it with the DROP INDEX CONCURRENTLY shown, then run again"),
    ),
    setup=common.setup,
    teardown=common.teardown,
)
