"""Operations on the host of a cluster's member: stop or start its server, write a file there,
run a command there, fence it. Runbooks describe each as a HostOp; one protocol, HostOps,
renders it for the plan and performs it, in two kinds of implementation:

- ManualHosts, wherever dbops cannot reach the hosts: it renders the commands an operator runs
  there (the runbook's own: it knows its engine's commands) and performs nothing; the runbook
  makes those steps MANUAL (or attestations) and verifies the outcome from its own connections.
- a managed implementation, for an environment whose servers dbops runs itself (the sandbox):
  it performs each operation, and renders what it will do.

A runbook never imports a managed implementation: `hosts_for` loads it by name, and only when a
cluster's environment is managed (as the engine registry loads adapters), so a runbook works the
same against servers dbops runs and servers it does not.
"""

from __future__ import annotations

import enum
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dbops.config import ClusterRef


class Verb(str, enum.Enum):
    STOP = "stop"  # args: (how,): the engine's shutdown mode ("fast", "immediate", "nosave")
    START = "start"
    # args: (name in the member's data directory, source path, suffix, *more names): the source
    # is copied over `name`; `name` and the other names, when present, are kept beside as
    # NAME.SUFFIX (once: a repeated operation keeps the first copies).
    WRITE_FILE = "write-file"
    # args: (procedure, *its arguments): a procedure the engine needs on the host, such as
    # "pgbackrest-restore" (its arguments), "rejoin" (the new primary), "repoint-pooler" (the new
    # primary) or "config" (a setting and its value in the server's configuration file).
    RUN = "run"
    FENCE = "fence"  # args: (new primary,): the member can never again accept writes by itself


@dataclass(frozen=True)
class HostOp:
    """One operation on the host of `member` (its name in the config, or host:port)."""

    verb: Verb
    member: str
    args: tuple[str, ...] = ()
    # What an operator runs on that host to do it by hand, with a line saying which host: the
    # runbook knows its engine's commands and how it names the hosts.
    manual: tuple[str, ...] = ()
    timeout: float = 600.0


@dataclass(frozen=True)
class HostResult:
    ok: bool
    detail: str


class HostOpsError(Exception):
    pass


class HostOps(Protocol):
    """The hosts of one cluster's members, as a runbook sees them."""

    # True when dbops performs the operations itself: a runbook's host steps are then actions,
    # otherwise manual steps showing render()'s lines.
    managed: bool

    def render(self, op: HostOp) -> list[str]:
        """The exact commands `op` amounts to, for the plan (secrets shown as ***)."""
        ...

    async def perform(self, op: HostOp) -> HostResult:
        """Do `op`; for a fence, whether it holds (verified, not assumed)."""
        ...

    def data_dir(self, member: str) -> Path | None:
        """Where `member` keeps its data, known even while it is down; None when unknown."""
        ...

    def log_file(self, member: str) -> Path | None:
        """`member`'s server log, when dbops can read it; None otherwise."""
        ...


class ManualHosts:
    """Hosts dbops cannot reach: every operation is shown to an operator, never performed."""

    managed = False

    def __init__(self, ref: ClusterRef):
        self.ref = ref

    def where(self, member: str) -> str:
        found = next((m for m in self.ref.cluster.members if m.name == member), None)
        return f"{member}'s host ({found.host}:{found.port})" if found is not None else f"the host of {member}"

    def render(self, op: HostOp) -> list[str]:
        return list(op.manual)

    async def perform(self, op: HostOp) -> HostResult:
        raise HostOpsError(f"dbops does not manage {self.where(op.member)}: {op.verb.value} is a manual step there "
                           f"(run its commands by hand, then confirm)")

    def data_dir(self, member: str) -> Path | None:
        return None

    def log_file(self, member: str) -> Path | None:
        return None


# Managed implementations by name, "module:attribute", imported on first use. The sandbox's is
# the only one: its environment is the one whose servers dbops runs.
MANAGED = {"sandbox": "dbops.sandbox.hosts:SandboxHosts"}


def hosts_for(ref: ClusterRef) -> HostOps:
    """The host operations of `ref`'s cluster: managed where dbops runs the servers."""
    if not ref.env.sandbox:
        return ManualHosts(ref)
    module, _, attr = MANAGED["sandbox"].partition(":")
    managed: HostOps = getattr(importlib.import_module(module), attr)(ref)
    return managed
