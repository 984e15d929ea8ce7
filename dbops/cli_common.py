"""What the command groups share (dbops.cli, dbops.audit_cli, dbops.runbook.cli): finding and
reading the config for a command, and its problems as error lines. It imports none of them, so
none of them has to import another back (dbops.cli registers the other two as its subcommands).

Only click at module level: `dbops --help` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

if TYPE_CHECKING:
    from dbops.config import Config, ConfigError


def fail_config(exc: ConfigError, code: int) -> NoReturn:
    for p in exc.problems:
        click.echo(f"error: {p}", err=True)
    sys.exit(code)


def load_config(path: str | None, code: int = 2) -> Config:
    """The config a command runs with (--config, $DBOPS_CONFIG, ./dbops.toml, the user config
    dir), or its problems on stderr and exit `code`."""
    from dbops.config import ConfigError, find_config, load

    try:
        return load(find_config(path))
    except ConfigError as exc:
        fail_config(exc, code)


def optional_config_path(path: str | None) -> Path | None:
    """The config file dbops would use, or None when there is none anywhere it looks: for the
    commands that need no cluster (`runbook list`, `config path`). A file named by --config or
    $DBOPS_CONFIG is returned even when missing: the operator asked for that one."""
    from dbops.config import ConfigError, find_config

    try:
        return find_config(path)
    except ConfigError:  # find_config's only refusal: no file in any of the places it looks
        return None


def config_places() -> str:
    """Where dbops looks for a config, in order, in words."""
    from dbops.config import user_config_path

    return f"--config PATH, $DBOPS_CONFIG, ./dbops.toml, {user_config_path()}"
