"""Fencing: making sure an old primary cannot take writes before a replica is promoted.

A cluster's [fencing] lists methods, tried in order (dbops.config.Fencing):

- pgbouncer: KILL the database on PgBouncer's admin console (its server connections are
  dropped and new clients wait, paused, until the pooler step RESUMEs it on the new primary);
  verified by SHOW DATABASES (paused) and SHOW SERVERS (no connection to the old primary).
  It fences the pool, not the host: the walk goes on to the host methods after it.
- kubernetes: CloudNativePG's own fencing (the cnpg.io/fencedInstances annotation on the
  Cluster) when the cluster names one, else deleting the old primary's pod; verified by reading
  the objects back.
- command: an operator-supplied command with {host}, {member} and {port} filled in (each value
  shell-quoted); its exit status is the verdict; its output is scrubbed before it is shown.
- sandbox: dbops' own sandbox hosts, fenced for real (stopped, and able to start again only as a
  standby of the new primary).
- manual: the operator types the old primary's member name to attest that it is fenced; the
  audit record and the run's summary say the failover relied on an attestation.

The first host method whose fence is verified ends the walk. When none is, the fence step fails
and nothing is promoted (fail closed), unless the operator overrides it with a reason.
"""

from __future__ import annotations

import asyncio
import json
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dbops.config import ClusterRef, Fencing, Member
from dbops.secrets import scrub_text

if TYPE_CHECKING:
    from dbops.platform.kubernetes import Connection

POOL_METHODS = ("pgbouncer",)
CNPG_FENCE_ANNOTATION = "cnpg.io/fencedInstances"


@dataclass(frozen=True)
class FenceResult:
    method: str
    member: str
    fenced: bool
    detail: str
    attested: bool = False  # the verdict is the operator's word, not something dbops checked

    def describe(self) -> str:
        verdict = "attested" if self.attested else ("verified" if self.fenced else "NOT fenced")
        return f"{self.method} fence of {self.member}: {verdict}: {self.detail}"


# Asks the operator to type `expected` (the member's name) to attest it is fenced.
Attest = Callable[[str, list[str]], Awaitable[bool]]


def render(ref: ClusterRef, fencing: Fencing, targets: list[Member], new_primary: Member | None,
           sandbox_commands: Callable[[str, str], list[str]] | None = None) -> list[str]:
    """Every method's exact commands for every target, in the order they would be tried."""
    lines: list[str] = []
    for method in fencing.methods:
        for m in targets:
            lines.append(f"# fence {m.name} ({m.host}:{m.port}) by {method}:")
            lines += commands(ref, fencing, method, m, new_primary, sandbox_commands)
    return lines


def commands(ref: ClusterRef, fencing: Fencing, method: str, m: Member, new_primary: Member | None,
             sandbox_commands: Callable[[str, str], list[str]] | None = None) -> list[str]:
    new_name = new_primary.name if new_primary is not None else "<candidate>"
    if method == "pgbouncer":
        pb = ref.cluster.pgbouncer
        assert pb is not None  # config refuses a pgbouncer fence without [pgbouncer]
        admin = f"psql -h {pb.host} -p {pb.port} -U {pb.user} -d pgbouncer -c"
        db = ref.cluster.database
        return [f"{admin} 'KILL {db}'   # drops its server connections; new clients wait (paused)",
                f"{admin} 'SHOW DATABASES'   # verify: {db} paused",
                f"{admin} 'SHOW SERVERS'   # verify: no connection to {m.host}:{m.port}"]
    if method == "kubernetes":
        k = ref.cluster.kubernetes
        assert k is not None
        if k.cnpg_cluster:
            patch = json.dumps({"metadata": {"annotations": {CNPG_FENCE_ANNOTATION: json.dumps([m.name])}}})
            return [f"kubectl -n {k.namespace} annotate cluster.postgresql.cnpg.io {k.cnpg_cluster} --overwrite "
                    f"'{CNPG_FENCE_ANNOTATION}={json.dumps([m.name])}'   # merge patch {patch}",
                    f"kubectl -n {k.namespace} get cluster.postgresql.cnpg.io {k.cnpg_cluster} "
                    f"-o jsonpath='{{.metadata.annotations}}'   # verify: {m.name} is fenced"]
        return [f"kubectl -n {k.namespace} delete pod {m.name} --wait=false",
                f"kubectl -n {k.namespace} get pod {m.name} -o jsonpath='{{.metadata.uid}}'   # verify: gone, or a new pod"]
    if method == "command":
        return [command_line(fencing, m) + f"   # exit 0 = fenced (timeout {fencing.command_timeout:g}s)"]
    if method == "sandbox":
        if sandbox_commands is None:
            return ["# the sandbox's fence (only in a sandbox environment)"]
        return sandbox_commands(m.name, new_name)
    if method == "manual":
        return [f"# on {m.host}: stop PostgreSQL and keep it from starting as a primary "
                "(e.g. systemctl stop + mask, or create standby.signal), or cut it off at the network,",
                f"# then type the member's name ({m.name}) to attest that it is fenced; the audit log records the attestation"]
    raise ValueError(f"unknown fencing method {method!r}")


def command_line(fencing: Fencing, m: Member) -> str:
    """The operator's command with the placeholders filled in, each value shell-quoted."""
    assert fencing.command is not None
    return fencing.command.format(host=shlex.quote(m.host), member=shlex.quote(m.name), port=shlex.quote(str(m.port)))


# -- the methods ---------------------------------------------------------------------------------


async def fence_pgbouncer(ref: ClusterRef, m: Member) -> FenceResult:
    from dbops.engines.postgres.pgbouncer import SimpleQueryClient
    from dbops.secrets import resolve

    pb = ref.cluster.pgbouncer
    assert pb is not None
    db = ref.cluster.database
    client = SimpleQueryClient(pb.host, pb.port, pb.user, resolve(pb.password))
    limit = ref.timeout + 5
    try:
        await asyncio.wait_for(client.connect(), timeout=limit)
        await asyncio.wait_for(client.query_many(f"KILL {db}"), timeout=limit)
        dbs, servers = await asyncio.wait_for(client.query_many("SHOW DATABASES", "SHOW SERVERS"), timeout=limit)
    finally:
        await client.close()
    row = next((r for r in dbs if r.get("name") == db), None)
    if row is None:
        return FenceResult("pgbouncer", m.name, False, f"PgBouncer lists no database {db}")
    paused = str(row.get("paused") or "0") == "1"
    to_old = [s for s in servers if s.get("database") == db and _same_server(s.get("addr"), s.get("port"), m)]
    if not paused:
        return FenceResult("pgbouncer", m.name, False, f"{db} is not paused on PgBouncer after KILL")
    if to_old:
        return FenceResult("pgbouncer", m.name, False, f"PgBouncer still has {len(to_old)} server connection(s) to {m.host}:{m.port}")
    return FenceResult("pgbouncer", m.name, True, f"{db} paused on PgBouncer, no server connection to {m.host}:{m.port}")


def _same_server(addr: Any, port: Any, m: Member) -> bool:
    local = {"127.0.0.1", "localhost", "::1"}
    same_host = addr == m.host or (addr in local and m.host in local)
    return bool(same_host and str(port) == str(m.port))


async def fence_kubernetes(ref: ClusterRef, m: Member) -> FenceResult:
    return await asyncio.to_thread(_fence_kubernetes, ref, m)


def _fence_kubernetes(ref: ClusterRef, m: Member) -> FenceResult:
    from dbops.platform import kubernetes as k8s

    k = ref.cluster.kubernetes
    assert k is not None
    conn = k8s.connect_ref(k)
    try:
        if k.cnpg_cluster:
            current = k8s.get_cnpg_cluster(conn, k.cnpg_cluster)
            fenced = _fenced_instances(current)
            if m.name not in fenced and "*" not in fenced:
                patch = {"metadata": {"annotations": {CNPG_FENCE_ANNOTATION: json.dumps(sorted({*fenced, m.name}))}}}
                conn.call(f"annotate CNPG Cluster {k.namespace}/{k.cnpg_cluster}", conn.custom.patch_namespaced_custom_object,
                          k8s.CNPG_GROUP, k8s.CNPG_VERSION, k.namespace, k8s.CNPG_PLURAL, k.cnpg_cluster, patch)
            after = _fenced_instances(k8s.get_cnpg_cluster(conn, k.cnpg_cluster))
            ok = m.name in after or "*" in after
            return FenceResult("kubernetes", m.name, ok, f"CNPG Cluster {k.cnpg_cluster} fences {', '.join(after) or 'nothing'}")
        pod = _read_pod(conn, k.namespace, m.name)
        if pod is None:
            return FenceResult("kubernetes", m.name, True, f"pod {k.namespace}/{m.name} does not exist")
        uid = (pod.get("metadata") or {}).get("uid")
        conn.call(f"delete pod {k.namespace}/{m.name}", conn.core.delete_namespaced_pod, m.name, k.namespace)
        again = _read_pod(conn, k.namespace, m.name)
        if again is None:
            return FenceResult("kubernetes", m.name, True, f"pod {k.namespace}/{m.name} deleted")
        new_uid = (again.get("metadata") or {}).get("uid")
        deleting = bool((again.get("metadata") or {}).get("deletionTimestamp"))
        if new_uid != uid:
            return FenceResult("kubernetes", m.name, True, f"pod {k.namespace}/{m.name} deleted (its StatefulSet made a new one)")
        return FenceResult("kubernetes", m.name, deleting, f"pod {k.namespace}/{m.name} " + ("is terminating" if deleting else "is still there"))
    finally:
        conn.close()


def _read_pod(conn: Connection, namespace: str, name: str) -> Any:
    """The pod, or None when the API server answers 404 (no such pod is what fencing wants; any
    other error is raised)."""
    from dbops.platform import kubernetes as k8s  # as in the caller: only a Kubernetes fence needs it

    try:
        return conn.call(f"read pod {namespace}/{name}", conn.core.read_namespaced_pod, name, namespace)
    except k8s.KubernetesError as exc:
        if exc.status == 404:
            return None
        raise


def _fenced_instances(cluster: dict[str, Any]) -> list[str]:
    raw = ((cluster.get("metadata") or {}).get("annotations") or {}).get(CNPG_FENCE_ANNOTATION)
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except ValueError:
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


async def fence_command(fencing: Fencing, m: Member, log: Callable[[str], None]) -> FenceResult:
    line = command_line(fencing, m)
    proc = await asyncio.create_subprocess_shell(line, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                 stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=fencing.command_timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return FenceResult("command", m.name, False, f"did not finish within {fencing.command_timeout:g}s (killed)")
    for text in scrub_text(out.decode("utf-8", "replace")).splitlines()[-20:]:
        log(f"  | {text}")
    if proc.returncode == 0:
        return FenceResult("command", m.name, True, "the fencing command exited 0")
    return FenceResult("command", m.name, False, f"the fencing command exited {proc.returncode}")


async def fence_manual(m: Member, lines: list[str], attest: Attest) -> FenceResult:
    if await attest(m.name, lines):
        return FenceResult("manual", m.name, True, f"the operator typed {m.name} to attest it is fenced", attested=True)
    return FenceResult("manual", m.name, False, f"the operator did not attest that {m.name} is fenced")


async def fence(ref: ClusterRef, fencing: Fencing, target: Member, new_primary: Member, *, log: Callable[[str], None],
                attest: Attest, sandbox: Callable[[str, str], Awaitable[FenceResult]] | None = None,
                sandbox_commands: Callable[[str, str], list[str]] | None = None) -> list[FenceResult]:
    """Walk the methods in order for one old primary and return every attempt (holds() judges
    them). A pool method never ends the walk; the first verified host method does."""
    results: list[FenceResult] = []
    for method in fencing.methods:
        try:
            if method == "pgbouncer":
                r = await fence_pgbouncer(ref, target)
            elif method == "kubernetes":
                r = await fence_kubernetes(ref, target)
            elif method == "command":
                r = await fence_command(fencing, target, log)
            elif method == "sandbox":
                if sandbox is None:
                    r = FenceResult("sandbox", target.name, False, "only a sandbox environment's hosts can be fenced by dbops itself")
                else:
                    r = await sandbox(target.name, new_primary.name)
            elif method == "manual":
                r = await fence_manual(target, commands(ref, fencing, "manual", target, new_primary), attest)
            else:
                r = FenceResult(method, target.name, False, f"unknown fencing method {method!r}")
        except Exception as exc:  # a method that cannot run is a fence not verified: try the next
            r = FenceResult(method, target.name, False, f"could not run: {scrub_text(str(exc)) or type(exc).__name__}")
        results.append(r)
        log(r.describe())
        if r.fenced and method not in POOL_METHODS:
            break
    return results


def holds(results: list[FenceResult]) -> bool:
    """A host fence was verified; or, when only pool fences are listed, every one of them was.
    (A pool fence fences the pooler's clients only: a host fence is what stops the server.)"""
    pools = [r for r in results if r.method in POOL_METHODS]
    hosts = [r for r in results if r.method not in POOL_METHODS]
    if hosts:
        return any(r.fenced for r in hosts)
    return bool(pools) and all(r.fenced for r in pools)


# -- PgBouncer's pause around a switchover -------------------------------------------------------


def pool_admin_line(ref: ClusterRef, command: str) -> str:
    pb = ref.cluster.pgbouncer
    assert pb is not None
    return f"psql -h {pb.host} -p {pb.port} -U {pb.user} -d pgbouncer -c '{command}'"


async def _pool_admin(ref: ClusterRef, *commands: str, timeout: float) -> list[list[dict[str, str | None]]]:
    from dbops.engines.postgres.pgbouncer import SimpleQueryClient
    from dbops.secrets import resolve

    pb = ref.cluster.pgbouncer
    assert pb is not None
    client = SimpleQueryClient(pb.host, pb.port, pb.user, resolve(pb.password))
    try:
        await asyncio.wait_for(client.connect(), timeout=ref.timeout + 2)
        return await asyncio.wait_for(client.query_many(*commands), timeout=timeout)
    finally:
        await client.close()


async def pool_paused(ref: ClusterRef) -> bool:
    (dbs,) = await _pool_admin(ref, "SHOW DATABASES", timeout=ref.timeout + 2)
    row = next((r for r in dbs if r.get("name") == ref.cluster.database), None)
    return row is not None and str(row.get("paused") or "0") == "1"


async def pause_pool(ref: ClusterRef, timeout: float = 30.0) -> None:
    """PAUSE the cluster's database on PgBouncer: it returns once the transactions in flight have
    finished; from then on clients wait (queued, not refused) until RESUME. Idempotent."""
    from dbops.engines.postgres.pgbouncer import ServerError

    if await pool_paused(ref):
        return
    try:
        await _pool_admin(ref, f"PAUSE {ref.cluster.database}", timeout=timeout)
    except TimeoutError:
        # PgBouncer goes on pausing after we stop waiting: give its clients back before failing.
        await _pool_admin(ref, f"RESUME {ref.cluster.database}", timeout=ref.timeout + 2)
        raise TimeoutError(f"PgBouncer's PAUSE {ref.cluster.database} did not return within {timeout:g}s "
                           "(a client holds a transaction or session open); it was RESUMEd, nothing was fenced") from None
    except ServerError:
        if not await pool_paused(ref):
            raise


async def resume_pool(ref: ClusterRef) -> bool:
    """RESUME the database on PgBouncer; False when it was not paused. Idempotent."""
    if not await pool_paused(ref):
        return False
    await _pool_admin(ref, f"RESUME {ref.cluster.database}", timeout=ref.timeout + 2)
    return True


# PgBouncer waits server_login_retry (15 s by default) after a failed server login before it tries
# again, and a RELOAD that points it at another server does not end that wait: right after a
# failover its clients would hang that long, although the new primary is up (measured by the
# pg-primary-loss drill: 13 s of the 15 s RTO). One successful login ends the wait for every client.
LOGIN_RETRY_WHILE_REPOINTING = 1


def first_login_lines(ref: ClusterRef) -> list[str]:
    return [
        pool_admin_line(ref, f"SET server_login_retry = {LOGIN_RETRY_WHILE_REPOINTING}")
        + "   # PgBouncer would wait out server_login_retry after the failed logins to the old primary",
        f"SELECT pg_is_in_recovery();  -- through PgBouncer as {ref.cluster.user}: its first login to the new primary (expect f)",
        pool_admin_line(ref, "SET server_login_retry = <as it was>") + "   # back to the value SHOW CONFIG gave",
    ]


async def first_login_now(ref: ClusterRef) -> list[str]:
    """Have PgBouncer log in to the (new) server now: server_login_retry lowered to 1 s while dbops
    queries through the pool as a client, then set back to what it was. Raises only when that
    query answers from a server in recovery; the lines say what was done, or why it could not be."""
    from dbops.engines.postgres.pgbouncer import ServerError

    (config,) = await _pool_admin(ref, "SHOW CONFIG", timeout=ref.timeout + 2)
    retry = next((str(r.get("value")) for r in config if r.get("key") == "server_login_retry"), None)
    lines: list[str] = []
    lowered = False
    if retry is not None and retry != str(LOGIN_RETRY_WHILE_REPOINTING):
        try:
            await _pool_admin(ref, f"SET server_login_retry = {LOGIN_RETRY_WHILE_REPOINTING}", timeout=ref.timeout + 2)
            lowered = True
        except ServerError as exc:  # an admin user without SET rights: the wait stays, say so
            lines.append(f"server_login_retry stays {retry}s (SET refused: {scrub_text(str(exc))}): "
                         f"clients may wait that long for their first server connection")
    in_recovery: bool | None
    try:
        in_recovery = await asyncio.wait_for(_query_through_pool(ref), timeout=ref.timeout * 3 + LOGIN_RETRY_WHILE_REPOINTING)
    except Exception as exc:  # dbops' own way in through the pool (its user, TLS): said, the repoint stands
        in_recovery = None
        lines.append(f"could not query through PgBouncer as {ref.cluster.user} ({scrub_text(str(exc)) or type(exc).__name__}): "
                     f"its clients may wait up to server_login_retry ({retry}s) for their first server connection")
    finally:
        if lowered:
            await _pool_admin(ref, f"SET server_login_retry = {retry}", timeout=ref.timeout + 2)
    if in_recovery:
        raise RuntimeError("a query through PgBouncer reached a server in recovery, not the new primary")
    if in_recovery is not None:
        lines.append("a query through PgBouncer reached the new primary (pg_is_in_recovery() = f)"
                     + (f"; server_login_retry was {LOGIN_RETRY_WHILE_REPOINTING}s for it, set back to {retry}" if lowered else ""))
    return lines


async def _query_through_pool(ref: ClusterRef) -> bool:
    """pg_is_in_recovery() through PgBouncer, as the cluster's user (its clients' way in)."""
    from dbops.engines.base import import_off_loop
    from dbops.engines.postgres.adapter import PostgresAdapter
    from dbops.secrets import resolve

    asyncpg = await import_off_loop("asyncpg")
    pb = ref.cluster.pgbouncer
    assert pb is not None
    secret = resolve(ref.cluster.password)
    # The members' TLS settings, as the pool's clients have them; no startup settings PgBouncer
    # would refuse, no prepared statements (transaction pooling).
    ssl = PostgresAdapter(ref, Member(name="pgbouncer", host=pb.host, port=pb.port))._ssl()
    conn = await asyncpg.connect(host=pb.host, port=pb.port, user=ref.cluster.user, database=ref.cluster.database,
                                 password=secret.reveal() if secret is not None else None, ssl=ssl,
                                 timeout=ref.timeout + LOGIN_RETRY_WHILE_REPOINTING, statement_cache_size=0)
    try:
        return bool(await conn.fetchval("SELECT pg_is_in_recovery()"))
    finally:
        await conn.close()
