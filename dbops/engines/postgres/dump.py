"""Logical backups with PostgreSQL's own tools: pg_dump (custom format) and pg_restore -j.

The tools run as asyncio subprocesses (hours of dumping must not stall the event loop). The
password reaches them in PGPASSWORD and TLS settings in PGSSL*, never on the command line
(which any local user can read in /proc), and every message is scrubbed of it. Each operation
has a `describe_*` twin giving the exact command line for the plan.
"""

from __future__ import annotations

import asyncio
import glob
import os
import re
import shlex
import shutil
from dataclasses import dataclass

from dbops.config import ClusterRef, Member
from dbops.engines.postgres.pgbackrest import communicate_or_stop
from dbops.secrets import Secret, redact, resolve, scrub_text


class DumpError(Exception):
    """pg_dump or pg_restore failed or could not be run; the message is safe to show."""


def tool(name: str) -> str:
    """The newest installed `name` (pg_dump, pg_restore): a newer pg_dump reads older servers,
    never the other way round."""
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(re.sub(r"\D", "", p.split("/")[4]) or 0))
    if candidates:
        return candidates[-1]
    found = shutil.which(name)
    if found:
        return found
    raise DumpError(f"{name} not found; install the Debian package postgresql-client-15 (or newer)")


@dataclass(frozen=True)
class Target:
    """Where a tool connects: a member's address with the cluster's user, TLS and password."""

    host: str
    port: int
    user: str
    database: str
    tls_mode: str
    ca_file: str | None
    cert_file: str | None
    key_file: str | None
    password: Secret | None

    @classmethod
    def of(cls, ref: ClusterRef, member: Member, database: str | None = None) -> Target:
        c = ref.cluster
        # A loaded config's Cluster fills both in (a PostgreSQL cluster: port 5432, user "postgres").
        assert member.port is not None and c.user is not None
        return cls(member.host, member.port, c.user, database or c.database, c.tls.mode, c.tls.ca_file,
                   c.tls.cert_file, c.tls.key_file, resolve(c.password))

    def args(self) -> list[str]:
        return ["-h", self.host, "-p", str(self.port), "-U", self.user, "-d", self.database, "--no-password"]

    def env(self) -> dict[str, str]:
        # PG* variables of the caller's shell must not redirect the tool elsewhere.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", PGSSLMODE=self.tls_mode, PGAPPNAME="dbops", PGCONNECT_TIMEOUT="10")
        for var, value in (("PGSSLROOTCERT", self.ca_file), ("PGSSLCERT", self.cert_file), ("PGSSLKEY", self.key_file)):
            if value:
                env[var] = value
        if self.password is not None:
            env["PGPASSWORD"] = self.password.reveal()
        return env


async def _run(args: list[str], target: Target, what: str, timeout: float) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=target.env(), cwd="/")
    except OSError as exc:
        raise DumpError(f"cannot run {args[0]}: {exc}") from None
    out, err = await communicate_or_stop(proc, timeout)
    if proc.returncode != 0:
        lines = [ln for ln in err.decode(errors="replace").strip().splitlines() if ln.strip()][-6:]
        detail = redact(scrub_text(" / ".join(lines)), target.password) or "no output"
        raise DumpError(f"{what} failed (exit {proc.returncode}): {detail}")
    return out.decode(errors="replace")


def _show(args: list[str]) -> list[str]:
    return ["# password from the cluster's credential reference, in PGPASSWORD (never on the command line)",
            shlex.join(args)]


# -- pg_dump ---------------------------------------------------------------------------------


def dump_args(target: Target, path: str) -> list[str]:
    return [tool("pg_dump"), *target.args(), "--format=custom", "--compress=6", f"--file={path}"]


def describe_dump(target: Target, path: str) -> list[str]:
    return _show(dump_args(target, path))


async def dump(target: Target, path: str, timeout: float) -> None:
    await _run(dump_args(target, path), target, f"pg_dump of {target.database}", timeout)


# -- pg_restore ------------------------------------------------------------------------------


def list_args(path: str) -> list[str]:
    return [tool("pg_restore"), "--list", path]


async def list_archive(path: str) -> list[str]:
    """The archive's table of contents (pg_restore --list): proves the file is a whole,
    readable custom-format archive. Comment lines dropped."""
    proc = await asyncio.create_subprocess_exec(*list_args(path), stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise DumpError(f"{path} is not a readable pg_dump archive: {scrub_text(err.decode(errors='replace').strip()[-300:])}")
    return [ln for ln in out.decode(errors="replace").splitlines() if ln.strip() and not ln.startswith(";")]


def table_data_entries(toc: list[str]) -> list[str]:
    """schema.table of every TABLE DATA entry of a table of contents."""
    found = []
    for line in toc:
        m = re.match(r"^\d+; \d+ \d+ TABLE DATA (\S+) (\S+) \S+$", line)
        if m:
            found.append(f"{m.group(1)}.{m.group(2)}")
    return found


def restore_args(target: Target, path: str, jobs: int) -> list[str]:
    # --exit-on-error: a half-restored database must fail the step, not pass it with warnings.
    return [tool("pg_restore"), *target.args(), f"--jobs={jobs}", "--exit-on-error", path]


def describe_restore(target: Target, path: str, jobs: int) -> list[str]:
    return _show(restore_args(target, path, jobs))


async def restore(target: Target, path: str, jobs: int, timeout: float) -> None:
    await _run(restore_args(target, path, jobs), target, f"pg_restore into {target.database}", timeout)
