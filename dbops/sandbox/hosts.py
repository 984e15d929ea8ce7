"""Host operations on the sandbox's servers, which dbops runs itself: the managed implementation
of dbops.runbook.hosts.HostOps. dbops.runbook.hosts.hosts_for loads it by name for a cluster of
the sandbox environment; runbooks never import it."""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dbops.config import ClusterRef
from dbops.runbook.hosts import HostOp, HostOpsError, HostResult, Verb
from dbops.sandbox import SandboxError


class SandboxHosts:
    """The hosts of one sandbox cluster. Each operation is a blocking process or file change,
    so perform() runs it off the event loop."""

    managed = True

    def __init__(self, ref: ClusterRef):
        self.ref = ref
        self.engine = ref.cluster.engine

    @functools.cached_property
    def sandbox(self) -> Any:
        """The engine's part of the sandbox, made on first use: deciding that a cluster's hosts
        are managed (to pick a runbook's variant) reads nothing from disk."""
        if self.engine == "postgres":
            from dbops.sandbox.postgres import PostgresSandbox

            return PostgresSandbox()
        if self.engine == "redis":
            from dbops.sandbox.redis import RedisSandbox

            return RedisSandbox()
        if self.engine == "kafka":
            from dbops.sandbox.kafka import KafkaSandbox

            return KafkaSandbox()
        if self.engine == "qdrant":
            from dbops.sandbox.qdrant import QdrantSandbox

            return QdrantSandbox()
        raise HostOpsError(f"the sandbox runs no {self.engine} hosts that runbooks operate on")

    # -- which sandbox server a member is --------------------------------------------------

    def server(self, member: str) -> str:
        """The sandbox's name for `member` (a config member name, or host:port)."""
        if self.engine in ("postgres", "kafka"):
            self._same_server(member)
            return member  # the sandbox's config names its members as it does
        if self.engine == "qdrant":
            return member
        configured = next((m for m in self.ref.cluster.members if m.name == member), None)
        port = configured.port if configured is not None else int(member.rpartition(":")[2])
        name = next((n for n, v in self.sandbox.state["nodes"].items() if v["port"] == port), None)
        if name is None:
            raise HostOpsError(f"{member} is not a node of this sandbox")
        return name

    def _same_server(self, member: str) -> None:
        """The sandbox this process manages ($DBOPS_STATE_DIR's) must be the one the config
        describes: a config of another sandbox names members of the same names on other ports,
        and stopping "pg1" there would stop someone else's server (or nothing, reported done)."""
        configured = next((m for m in self.ref.cluster.members if m.name == member), None)
        if configured is None:
            return
        try:
            port = self.sandbox.port(member)
            # Kafka's brokers also listen for SASL_SSL: the TLS view of the same brokers.
            ports = {port, self.sandbox.sasl_ssl_port(member)} if self.engine == "kafka" else {port}
        except (SandboxError, KeyError) as exc:
            raise HostOpsError(f"{member} is not a server of the sandbox at {self.sandbox.root} ({exc})") from None
        if configured.port not in ports:
            raise HostOpsError(f"the sandbox at {self.sandbox.root} runs {member} on port {port}, the config on "
                               f"{configured.port}: it is another sandbox's config; set DBOPS_STATE_DIR to the directory "
                               "holding the sandbox the config was written for")

    def data_dir(self, member: str) -> Path | None:
        if self.engine == "postgres":
            return Path(self.sandbox.data_dir(member))
        return Path(self.sandbox.node_dir(self.server(member)))

    def log_file(self, member: str) -> Path | None:
        return Path(self.sandbox.log_file(self.server(member)))

    # -- rendering -------------------------------------------------------------------------

    def render(self, op: HostOp) -> list[str]:
        """What the sandbox will run, where it says so itself; otherwise the runbook's commands,
        which name the sandbox's own directories (data_dir() knows them)."""
        shown = self._shown(op)
        if shown is None:
            return list(op.manual)
        try:
            return shown()
        except (SandboxError, HostOpsError) as exc:  # the plan still renders; the step reports the problem
            what = op.args[0] if op.verb is Verb.RUN else op.verb.value
            return [f"# sandbox {what} commands unavailable: {exc}"]

    def _shown(self, op: HostOp) -> Callable[[], list[str]] | None:
        if self.engine != "postgres":
            return None
        sb, name = self.sandbox, op.member
        if op.verb is Verb.FENCE:
            return lambda: sb.show_fence_commands(name, op.args[0])
        if op.verb is Verb.RUN and op.args[0] == "rejoin":
            return lambda: sb.show_rejoin_commands(name, op.args[1])
        if op.verb is Verb.RUN and op.args[0] == "repoint-pooler":
            return lambda: sb.show_repoint_pgbouncer(op.args[1])
        return None

    # -- doing it --------------------------------------------------------------------------

    async def perform(self, op: HostOp) -> HostResult:
        return await asyncio.to_thread(self._perform, op)

    def _perform(self, op: HostOp) -> HostResult:
        if self.engine == "postgres":
            return self._postgres(op)
        if self.engine == "kafka":
            return self._kafka(op)
        if self.engine == "qdrant":
            return self._qdrant(op)
        return self._redis(op)

    def _qdrant(self, op: HostOp) -> HostResult:
        # The stand-in's own fault injection: a replica's state, as a node that missed updates
        # leaves it (a real Qdrant has no API for this: there the fault is manual).
        if op.verb is Verb.RUN and op.args[0] == "replica-state":
            collection, shard, state = op.args[1:]
            return HostResult(True, self.sandbox.mark_replica(collection, int(shard), op.member, state))
        raise HostOpsError(f"the sandbox's Qdrant hosts cannot {op.verb.value} {' '.join(op.args)}".rstrip())

    def _kafka(self, op: HostOp) -> HostResult:
        sb, name = self.sandbox, op.member
        self._same_server(name)
        if op.verb is Verb.STOP:
            sb.stop_node(name, kill=op.args[:1] != ("term",))
            return HostResult(True, f"broker {name} stopped")
        if op.verb is Verb.START:
            sb.start_node(name)
            return HostResult(True, f"broker {name} started")
        raise HostOpsError(f"the sandbox's Kafka hosts cannot {op.verb.value} {' '.join(op.args)}".rstrip())

    def _postgres(self, op: HostOp) -> HostResult:
        sb, name = self.sandbox, op.member
        if name != "pgbouncer":
            self._same_server(name)
        if op.verb is Verb.STOP:
            sb.stop_member(name, op.args[0])
            return HostResult(True, f"{name} stopped")
        if op.verb is Verb.START:
            sb.start_member(name)
            return HostResult(True, f"{name} started")
        if op.verb is Verb.FENCE:
            sb.fence_member(name, op.args[0])
            ok, detail = sb.fence_state(name)
            return HostResult(ok, detail)
        if op.verb is Verb.RUN:
            procedure, *args = op.args
            if procedure == "pgbackrest-restore":
                sb.restore_over(name, args, op.timeout)
                return HostResult(True, f"backup restored over {name}")
            if procedure == "rejoin":
                sb.rejoin_as_replica(name, args[0])
                return HostResult(True, f"{name} rewound and restarted as a replica of {args[0]}")
            if procedure == "repoint-pooler":
                sb.repoint_pgbouncer(args[0])
                return HostResult(True, f"PgBouncer points at {args[0]}")
        raise HostOpsError(f"the sandbox's PostgreSQL hosts cannot {op.verb.value} {' '.join(op.args)}".rstrip())

    def _redis(self, op: HostOp) -> HostResult:
        sb, node = self.sandbox, self.server(op.member)
        if op.verb is Verb.STOP:
            sb.stop_node(node, {"nosave": "shutdown"}.get(op.args[0], op.args[0]))
            return HostResult(True, f"{node} stopped")
        if op.verb is Verb.START:
            sb.start_node(node)
            return HostResult(True, f"{node} started")
        if op.verb is Verb.WRITE_FILE:
            name, source, suffix, *more = op.args
            d = Path(sb.node_dir(node))
            for item in (name, *more):
                if (d / item).exists() and not (d / f"{item}.{suffix}").exists():
                    os.replace(d / item, d / f"{item}.{suffix}")
            shutil.copyfile(source, d / name)
            sb.owner.own(d / name)
            return HostResult(True, f"{d / name} written; the old files kept as *.{suffix}")
        if op.verb is Verb.RUN and op.args[0] == "wipe":
            # A replacement machine on the node's address: no data, no cluster state of its own.
            d = Path(sb.node_dir(node))
            for item in ("nodes.conf", "dump.rdb"):
                (d / item).unlink(missing_ok=True)
            shutil.rmtree(d / "appendonlydir", ignore_errors=True)
            return HostResult(True, f"{node}'s data and cluster state removed ({d})")
        if op.verb is Verb.RUN and op.args[0] == "config":
            key, value = op.args[1:]
            conf = sb.conf_file(node)
            lines = [ln for ln in conf.read_text().splitlines() if not ln.startswith(f"{key} ")]
            conf.write_text("\n".join([*lines, f"{key} {value}"]) + "\n")
            return HostResult(True, f"{key} {value} in {conf}")
        raise HostOpsError(f"the sandbox's Redis hosts cannot {op.verb.value} {' '.join(op.args)}".rstrip())
