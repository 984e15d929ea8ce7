"""Integration fixtures: one real sandbox (PostgreSQL 15 x3 + PgBouncer, S3) per test session.

If the sandbox cannot start, every test using it ERRORS with the sandbox's message: a missing
server must never turn into a silently skipped suite.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from dbops import sandbox
from dbops.sandbox.postgres import PostgresSandbox, StopMode

if TYPE_CHECKING:
    from ..fakes.kubernetes import Kube


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Everything under tests/integration needs real servers: `-m "not integration"` skips it.
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)


def make_state_dir(prefix: str) -> Path:
    """A fresh directory under /tmp the `postgres` OS user can traverse (pytest's tmp_path lives
    under a 0700 directory it cannot)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


@contextlib.contextmanager
def running_sandbox(engines: tuple[str, ...], prefix: str) -> Iterator[Path]:
    """A private sandbox of `engines` for one test module: its root, then down; the directory
    (logs) is kept when the tests failed or DBOPS_KEEP_SANDBOX is set."""
    state_dir = make_state_dir(prefix)
    root = state_dir / "sandbox"
    ok = False
    try:
        sandbox.up(engines, root=root)
        yield root
        ok = True
    finally:
        try:
            sandbox.down(root=root)
        finally:
            if ok and not os.environ.get("DBOPS_KEEP_SANDBOX"):
                shutil.rmtree(state_dir)


@dataclass
class PgSandbox:
    """What tests get from the `pg_sandbox` fixture."""

    state_dir: Path
    root: Path  # the sandbox directory, <state_dir>/sandbox
    config_path: Path
    pg: PostgresSandbox

    @property
    def password(self) -> str:
        return self.pg.password

    @property
    def pgbouncer_port(self) -> int:
        return self.pg.port("pgbouncer")

    @property
    def archive_dir(self) -> Path:
        return self.pg.archive_dir

    def port(self, member: str) -> int:
        return self.pg.port(member)

    def dsn(self, member: str, database: str = "postgres") -> str:
        """postgresql://postgres:<pw>@127.0.0.1:<port>/<database>; member may be "pgbouncer"."""
        return self.pg.dsn(member, database)

    def pid(self, member: str) -> int | None:
        return self.pg.pid(member)

    def stop_member(self, name: str, mode: StopMode = "immediate") -> None:
        self.pg.stop_member(name, mode)

    def start_member(self, name: str) -> None:
        self.pg.start_member(name)

    def wait_streaming(self, names: tuple[str, ...] = ("pg2", "pg3"), timeout: float = 30.0) -> None:
        self.pg.wait_streaming(names, timeout)

    def psql(self, member: str, sql: str, database: str = "postgres") -> str:
        """psql -At output; use for the PgBouncer admin console, which asyncpg cannot query."""
        return self.pg.psql(member, sql, database=database)

    async def fetch(self, member: str, sql: str, *args: Any, database: str = "postgres") -> list[Any]:
        """Rows of one statement on a member over TCP with the password (asyncpg)."""
        return await pg_exec(self.dsn(member, database), sql, *args)

    def down(self) -> None:
        sandbox.down(root=self.root)


def start_sandbox(state_dir: Path) -> PgSandbox:
    root = state_dir / "sandbox"
    # s3 first: the cluster's config names its bucket (pg_dump backups).
    result = sandbox.up(("s3", "postgres"), root=root)
    return PgSandbox(state_dir, root, result.config_path, PostgresSandbox(root))


@pytest.fixture(scope="session")
def pg_sandbox() -> Iterator[PgSandbox]:
    state_dir = make_state_dir("dbops-it-")
    root = state_dir / "sandbox"
    mp = pytest.MonkeyPatch()
    # Everything in the session that looks at the state dir (audit log, journals) lands here
    # too, never in the real user's.
    mp.setenv("DBOPS_STATE_DIR", str(state_dir))
    ok = False
    try:
        handle = start_sandbox(state_dir)
        yield handle
        ok = True
    finally:
        try:
            sandbox.down(root=root)
        finally:
            mp.undo()
            # Keep the directory (logs) when the sandbox failed to start, or when asked to
            # (DBOPS_KEEP_SANDBOX=1).
            if ok and not os.environ.get("DBOPS_KEEP_SANDBOX"):
                shutil.rmtree(state_dir, ignore_errors=False)


@pytest.fixture(scope="session")
def neo4j_root() -> Iterator[Path]:
    """One Neo4j sandbox (a JVM: the slowest start of all) for every module that asks for it.
    Each module's own fixture brings it up again when an earlier module stopped it on purpose
    (`sandbox up` is a no-op on a running sandbox)."""
    with running_sandbox(("neo4j",), "dbops-it-neo4j-") as root:
        yield root


@pytest.fixture(scope="session")
def kube_stand_in() -> Iterator[Kube]:
    """The Kubernetes API stand-in (tests/fakes/kubernetes.py), one JVM for every module that
    asks for it. Each module keeps to namespaces of its own and writes its own kubeconfig
    (`kube.stand_in.kubeconfig(path)`): the stand-in's objects are shared."""
    from ..fakes.kubernetes import running_stand_in

    with running_stand_in("dbops-it-k8s-") as kube:
        yield kube


async def pg_exec(dsn: str, sql: str, *args: Any) -> list[Any]:
    """Run one statement on a fresh connection and return its rows (asyncpg Records)."""
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


@dataclass
class MonitoringSandbox:
    """What tests get from the `monitoring_sandbox` fixture: PostgreSQL and Redis watched by the
    sandbox's Prometheus (exporters, alert rules) and Alertmanager."""

    root: Path
    config_path: Path
    pg: PostgresSandbox
    redis: Any  # dbops.sandbox.redis.RedisSandbox
    prometheus: Any  # dbops.sandbox.prometheus.PrometheusSandbox


@pytest.fixture(scope="session")
def monitoring_sandbox() -> Iterator[MonitoringSandbox]:
    """One sandbox of postgres, redis and prometheus for every module that asks for it. A test
    that stops a member starts it again before it ends (the others see a whole fleet)."""
    from dbops.sandbox.prometheus import PrometheusSandbox
    from dbops.sandbox.redis import RedisSandbox

    with running_sandbox(("postgres", "redis", "prometheus"), "dbops-it-mon-") as root:
        yield MonitoringSandbox(root, sandbox.config_path(root=root), PostgresSandbox(root), RedisSandbox(root),
                                PrometheusSandbox(root))
