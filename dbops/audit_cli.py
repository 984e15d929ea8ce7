"""`dbops audit verify` (--shipped), `dbops audit ship` and `dbops audit show`.

verify exits 0 when the chain and its head file agree, 1 when they do not (naming the first
bad record), 2 when the log cannot be read at all. rich is imported inside `show` only.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from dbops.audit import LOG_NAME, VerifyResult, verify_and_read

EXIT_INTACT = 0
EXIT_TAMPERED = 1
EXIT_UNREADABLE = 2

_PATH = click.argument(
    "path",
    required=False,
    type=click.Path(dir_okay=False, path_type=Path),
)


def _default_path() -> Path:
    from dbops.config import state_dir

    return state_dir() / LOG_NAME


def _read_or_exit(path: Path) -> tuple[VerifyResult, list[dict]]:
    """The verdict and the records, or a message on stderr and exit 2 when the log cannot be read."""
    if not path.exists():
        click.echo(f"audit log {path} does not exist", err=True)
        raise SystemExit(EXIT_UNREADABLE)
    try:
        return verify_and_read(path)
    except IsADirectoryError:
        click.echo(f"audit log {path} is a directory, not a file", err=True)
        raise SystemExit(EXIT_UNREADABLE) from None
    except OSError as exc:
        click.echo(f"cannot read audit log {path}: {exc.strerror or exc}", err=True)
        raise SystemExit(EXIT_UNREADABLE) from None


def _line_text(path: Path, number: int, limit: int = 400) -> str | None:
    """The text of line `number` (1-based) for display, shortened; None past the end."""
    with path.open("rb") as fh:
        for i, raw in enumerate(fh, start=1):
            if i == number:
                text = raw.rstrip(b"\n").decode("utf-8", "replace")
                return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"
    return None


@click.group(name="audit")
def audit() -> None:
    """Check and read the tamper-evident audit log."""


def _shipping(ctx: click.Context) -> object:
    """The config's [audit.ship], or a message and exit 2 when there is none."""
    from dbops.cli_common import load_config

    root = ctx.find_root()
    cfg = load_config((root.obj or {}).get("config_path") if isinstance(root.obj, dict) else None)
    if cfg.audit.ship is None:
        click.echo("audit shipping is not configured: add [audit.ship] with s3 = { bucket = ... } (a bucket with "
                   "Object Lock) to the config", err=True)
        raise SystemExit(EXIT_UNREADABLE)
    return cfg.audit.ship


@audit.command(name="ship")
@_PATH
@click.pass_context
def ship_cmd(ctx: click.Context, path: Path | None) -> None:
    """Ship the audit log now to the [audit.ship] bucket, as one object locked in COMPLIANCE mode.

    Exit 0: shipped (or already shipped). Exit 1: shipping failed. Exit 2: not configured.
    """
    from dbops.audit_ship import ShipError, ship

    shipping = _shipping(ctx)
    path = path or _default_path()
    try:
        result = ship(path, shipping)  # type: ignore[arg-type]
    except ShipError as exc:
        click.echo(f"error: {exc.message}", err=True)
        raise SystemExit(EXIT_TAMPERED) from None
    click.echo(result.summary())


def _verify_shipped(ctx: click.Context, path: Path) -> bool:
    from dbops.audit_ship import ShipError, verify_shipped

    shipping = _shipping(ctx)
    try:
        check = verify_shipped(path, shipping)  # type: ignore[arg-type]
    except ShipError as exc:
        click.echo(f"shipped copy: {exc.message}")
        return False
    click.echo(f"shipped copy s3://{shipping.s3.bucket}/{check.key}: {check.chain.summary()}")  # type: ignore[attr-defined]
    click.echo(f"shipped copy vs local log: {'consistent' if check.consistent else 'INCONSISTENT'}: {check.consistency}")
    return check.ok


@audit.command(name="verify")
@click.option("--shipped", is_flag=True, help="Also download the newest shipped copy ([audit.ship]), verify its chain "
                                               "and check that the local log begins with it.")
@_PATH
@click.pass_context
def verify_cmd(ctx: click.Context, shipped: bool, path: Path | None) -> None:
    """Verify the hash chain of the audit log (default: the state directory's log).

    Exit 0: intact. Exit 1: tampered or damaged (the first bad record is named), or with
    --shipped, the shipped copy does not verify or does not match. Exit 2: the log is missing
    or unreadable (with --shipped, the shipped copy is still checked and shown).
    """
    path = path or _default_path()
    if shipped and not path.exists():
        # A log that is gone is when the shipped copy matters most: show what it held.
        click.echo(f"audit log {path} does not exist", err=True)
        _verify_shipped(ctx, path)
        raise SystemExit(EXIT_UNREADABLE)
    result, _records = _read_or_exit(path)
    if result.ok:
        click.echo(f"{path}: {result.summary()}")
        if shipped and not _verify_shipped(ctx, path):
            raise SystemExit(EXIT_TAMPERED)
        return
    click.echo(f"{path}: {result.summary()}")
    if result.first_bad_line is not None:
        try:
            text = _line_text(path, result.first_bad_line)
        except OSError as exc:
            text = None
            click.echo(f"(cannot re-read line {result.first_bad_line}: {exc.strerror or exc})", err=True)
        if text is not None:
            click.echo(f"line {result.first_bad_line}: {text}")
    click.echo(f"{result.count} record(s) before it verified.")
    if shipped:
        _verify_shipped(ctx, path)  # the shipped copy says what the log held before it was damaged
    raise SystemExit(EXIT_TAMPERED)


def _target(rec: dict) -> str:
    parts = [str(rec.get(k)) for k in ("environment", "cluster", "member") if rec.get(k)]
    return "/".join(parts)


def _operator(rec: dict) -> str:
    op = rec.get("operator")
    if not isinstance(op, dict):
        return ""
    who = str(op.get("login") or f"uid {op.get('uid')}")
    if op.get("sudo_user"):
        who += f" (sudo from {op['sudo_user']})"
    if op.get("ssh_client"):
        who += f" @{op['ssh_client']}"
    return who


@audit.command(name="show")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON lines.")
@click.option("--limit", "-n", type=click.IntRange(min=1), default=None, help="Only the newest N records.")
@_PATH
def show_cmd(as_json: bool, limit: int | None, path: Path | None) -> None:
    """Show the audit log, oldest first (with --limit, the newest N), and the verify verdict.

    Exits 0 whenever the log could be read (use `verify` for a pass/fail exit code), 2 when not.
    """
    path = path or _default_path()
    result, records = _read_or_exit(path)
    if limit is not None:
        records = records[-limit:]

    if as_json:
        for rec in records:
            click.echo(json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
        if not result.ok:
            click.echo(result.summary(), err=True)
        return

    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=str(path), box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    # fold, never ellipsis: an audit display must not hide part of a value
    for col, kw in (
        ("seq", {"justify": "right", "no_wrap": True}),
        ("ts (UTC)", {"no_wrap": True}),
        ("phase", {}),
        ("operator", {}),
        ("target", {}),
        ("action", {}),
        ("outcome", {}),
        ("error / reason", {}),
    ):
        table.add_column(col, overflow="fold", **kw)
    outcome_style = {"ok": "green", "failed": "red", "declined": "yellow"}
    for rec in records:
        outcome = rec.get("outcome")
        outcome_text = "" if outcome is None else str(outcome)
        if rec.get("duration_ms") is not None:
            outcome_text += f" {rec['duration_ms']}ms"
        note = rec.get("error") or rec.get("reason") or ""
        table.add_row(
            Text(str(rec.get("seq", ""))),
            Text(str(rec.get("ts", ""))),
            Text(str(rec.get("phase", ""))),
            Text(_operator(rec)),
            Text(_target(rec)),
            Text(str(rec.get("action", ""))),
            Text(outcome_text, style=outcome_style.get(str(outcome), "")),
            Text(str(note)),
        )
    console = Console()
    console.print(table)
    console.print(Text(result.summary(), style="bold green" if result.ok else "bold red"))
