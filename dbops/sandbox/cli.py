"""`dbops sandbox ...`: real local servers for the demo, drills and tests.

Imports stay light (click and the stdlib-only sandbox package); engine modules load on use.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from dbops import sandbox as sb

F = TypeVar("F", bound=Callable[..., Any])


def _friendly(fn: F) -> F:
    """SandboxError -> `error: ...` on stderr and exit 1, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except sb.SandboxError as exc:
            click.echo(f"error: {exc.message}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def _progress(message: str) -> None:
    click.echo(f"  {message}", err=True)


def _split_engines(values: tuple[str, ...]) -> tuple[str, ...]:
    # Accept both `--engines postgres,redis` and `--engines postgres --engines redis`.
    return tuple(part.strip() for v in values for part in v.split(",") if part.strip())


def _print_status(rows: list[sb.ProcessStatus]) -> None:
    if not rows:
        click.echo(f"no sandbox under {sb.sandbox_dir()}")
        return
    click.echo(f"{'ENGINE':<9} {'NAME':<10} {'ROLE':<15} {'STATE':<5} {'PORT':>5} {'PID':>7}  DETAIL")
    for r in rows:
        state = click.style("up", fg="green") + "   " if r.running else click.style("down", fg="red") + " "
        click.echo(
            f"{r.engine:<9} {r.name:<10} {r.role:<15} {state} {r.port or '-':>5} {r.pid or '-':>7}  {r.detail}"
        )


@click.group()
def sandbox() -> None:
    """Real local servers to try dbops against: PostgreSQL (primary, 2 replicas, PgBouncer, a
    pgBackRest stanza), S3 (moto) and, with --engines redis, Redis 7 (Sentinel and a Cluster);
    with prometheus, Prometheus and Alertmanager watching those through their exporters.

    Lives under $DBOPS_STATE_DIR/sandbox (default: the user state directory).
    """


@sandbox.command()
@click.option(
    "--engines",
    multiple=True,
    default=sb.DEFAULT_ENGINES,
    show_default=True,
    help=f"Engines to start, comma-separated or repeated; known: {', '.join(sb.KNOWN_ENGINES)}.",
)
@_friendly
def up(engines: tuple[str, ...]) -> None:
    """Start the sandbox (left as is if already up) and write its dbops config."""
    started = time.monotonic()
    click.echo(f"sandbox in {sb.sandbox_dir()}", err=True)
    result = sb.up(_split_engines(engines), progress=_progress)
    if result.already_up:
        click.echo("sandbox is already up")
    else:
        click.echo(f"sandbox up in {time.monotonic() - started:.1f} s")
    _print_status(sb.status())
    click.echo(f"\nconfig: {result.config_path}")
    click.echo(f"try:    dbops --config {result.config_path}")


@sandbox.command()
@click.option("--purge", is_flag=True, help="Also delete the sandbox directory (data, logs, WAL archive, config).")
@_friendly
def down(purge: bool) -> None:
    """Stop every server the sandbox started (safe to repeat)."""
    sb.down(purge=purge, progress=_progress)
    click.echo("sandbox is down" + (" and removed" if purge else ""))


@sandbox.command()
@_friendly
def status() -> None:
    """Show each sandbox server: up or down, port and pid."""
    _print_status(sb.status())


@sandbox.command()
@_friendly
def config() -> None:
    """Print the path of the dbops config written for the running sandbox."""
    click.echo(str(sb.config_path()))


@sandbox.group()
def qdrant() -> None:
    """Fault injection on the sandbox's (fake) Qdrant: a Dead replica, a slow node."""


def _qdrant_sandbox() -> Any:
    from dbops.sandbox.qdrant import QdrantSandbox  # on use: the group is listed on every start

    return QdrantSandbox()


@qdrant.command("mark-dead")
@click.option("--collection", required=True, help="Collection (or alias), e.g. docs.")
@click.option("--shard", required=True, type=int, help="Shard id, e.g. 0.")
@click.option("--peer", required=True, help="The node holding the replica: q1, q2, q3 or its peer id.")
@click.option("--state", default="Dead", show_default=True, help="The replica state to set (Active brings it back by hand).")
@_friendly
def qdrant_mark_dead(collection: str, shard: int, peer: str, state: str) -> None:
    """Mark one shard replica Dead (as after a failed write); qdrant.recover-dead-replica repairs it."""
    click.echo(_qdrant_sandbox().mark_replica(collection, shard, peer, state))


@qdrant.command("latency")
@click.option("--node", required=True, help="q1, q2, q3 or a peer id.")
@click.option("--ms", required=True, type=click.FloatRange(min=0), help="Delay added to every request; 0 removes it.")
@_friendly
def qdrant_latency(node: str, ms: float) -> None:
    """Make one node answer every request `--ms` milliseconds late."""
    click.echo(_qdrant_sandbox().set_latency(node, ms))
