"""Frozen data for UI tests: a hub (dbops.hub.Hub, as PollerHub) that serves fixed snapshots.

Only dbops' own hub is replaced: the snapshots are judged by the real assessment code, and the
screens render them exactly as they would live. Integration tests drive the UI on real servers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
from datetime import UTC
from typing import Any

from dbops.config import ClusterRef, Config, parse
from dbops.engines.postgres.data import Archiver, PgMemberData, ReplicaRow, Session, Slot, Statement, WalReceiver
from dbops.engines.postgres.history import PgHistoryPoint
from dbops.health import assess_cluster
from dbops.hub import AlertsState, HistoryPoint, Hub
from dbops.model import ClusterHealth, Reachability, Snapshot
from dbops.platform.backups import ClusterBackups

NOW = 1_790_000_000.0

CONFIG = """
[environments.production]
mode = "read-only"
[environments.production.clusters.orders-db]
engine = "postgres"
password = { env = "X" }
members = [
  { name = "pg1", host = "10.0.0.1", role = "primary" },
  { name = "pg2", host = "10.0.0.2", role = "replica" },
  { name = "pg3", host = "10.0.0.3", role = "replica" },
]
[environments.production.clusters.orders-db.backups]
s3 = { bucket = "orders-backups", prefix = "dumps/" }
[environments.staging]
mode = "operator"
[environments.staging.clusters.billing]
engine = "postgres"
password = { env = "X" }
members = [{ name = "b1", host = "10.1.0.1", role = "primary" }]
"""

MiB = 1024 * 1024


def replica_row(name: str, lag: int, secs: float) -> ReplicaRow:
    return ReplicaRow(
        pid=900 + len(name), application_name=name, client_addr="10.0.0.9", state="streaming", sync_state="async",
        sent_lsn="0/9000000", replay_lsn="0/8000000", write_lag_bytes=0, flush_lag_bytes=0, replay_lag_bytes=lag,
        write_lag_seconds=0.0, flush_lag_seconds=0.0, replay_lag_seconds=secs, slot_name=name if name == "pg2" else None,
    )


def sessions() -> tuple[Session, ...]:
    return (
        Session(101, "app", "orders", "10.0.5.1", "orders", "idle in transaction", "Client", "ClientRead",
                "UPDATE orders SET state = 'paid' WHERE id = 42", 300.0, 320.0, 300.0),
        Session(102, "app", "orders", "10.0.5.2", "orders", "active", "Lock", "transactionid",
                "UPDATE orders SET state = 'shipped' WHERE id = 42", 95.0, 96.0, 95.0, blocked_by=(101,)),
        Session(103, "report", "psql", "10.0.5.3", "orders", "active", None, None,
                "SELECT count(*) FROM order_lines JOIN orders USING (order_id) GROUP BY region", 130.0, 130.0, 130.0),
        Session(104, "app", "orders", "10.0.5.4", "orders", "active", None, None, "SELECT 1", 0.01, 0.01, 0.01),
    )


def primary_data() -> PgMemberData:
    return PgMemberData(
        server_version="15.18", in_recovery=False, timeline=3, current_lsn="0/9000000", max_connections=100,
        connections_by_state=(("active", 3), ("idle", 10), ("idle in transaction", 1)), connections_total=17,
        replicas=(replica_row("pg2", 2 * MiB, 0.4), replica_row("pg3", 40 * MiB, 14.0)),
        slots=(Slot("pg2", "physical", True, "reserved", 2 * MiB), Slot("old_etl", "logical", False, "extended", 3 * 1024 * MiB, "orders")),
        sessions=sessions(),
        statements=(
            Statement(1, "UPDATE orders SET state = $1 WHERE id = $2", 5400, 81000.0, 15.0, 5400, 120, 1800.0),
            Statement(2, "SELECT * FROM orders WHERE customer_id = $1", 99000, 45000.0, 0.45, 99000, 2200, 990.0),
        ),
        cache_hit_ratio=99.7, max_xid_age=210_000_000, max_xid_age_database="orders",
        archiver=Archiver(5200, 0, "000000030000000000000008", 12.0, None, None, "on"),
    )


def replica_data(lag: int, secs: float) -> PgMemberData:
    return PgMemberData(
        server_version="15.18", in_recovery=True, timeline=3, current_lsn="0/8000000", max_connections=100,
        connections_by_state=(("active", 1),), connections_total=6,
        wal_receiver=WalReceiver("streaming", "10.0.0.1", 5432, None, "0/9000000", "0/8000000", lag, secs, False, 0.2),
        sessions=(), statements=None, statements_note="pg_stat_statements not installed",
        cache_hit_ratio=99.9, max_xid_age=210_000_000, max_xid_age_database="orders",
    )


def snap(ref, member: str, data: Any, reach: Reachability = Reachability.UP, error: str | None = None) -> Snapshot:
    if reach is Reachability.UP:
        return Snapshot(ref.environment, ref.name, member, "postgres", reach, NOW, 12.0, data=data, seq=5)
    return Snapshot(ref.environment, ref.name, member, "postgres", reach, NOW, 3000.0, error=error,
                    last_good=data, last_good_at=NOW - 42, seq=5)


class FrozenHub(Hub):
    """PollerHub's interface over fixed snapshots; records submitted actions."""

    def __init__(self, config: Config | None = None, snapshots: dict[str, dict[str, Snapshot]] | None = None) -> None:
        """`snapshots`: each cluster's snapshots by member; by default orders-db (pg3 lags) and
        billing (its only member is down) of CONFIG."""
        self.config = config or parse(CONFIG)
        self.refs = self.config.clusters()
        self._paused = False
        if snapshots is None:
            orders, billing = self.refs
            snapshots = {
                orders.key: {
                    "pg1": snap(orders, "pg1", primary_data()),
                    "pg2": snap(orders, "pg2", replica_data(2 * MiB, 0.4)),
                    "pg3": snap(orders, "pg3", replica_data(40 * MiB, 14.0)),
                },
                billing.key: {"b1": snap(billing, "b1", primary_data(), Reachability.DOWN, "connection refused at 10.1.0.1:5432")},
            }
        self._snapshots = snapshots
        self._health: dict[str, ClusterHealth] = {ref.key: assess_cluster(ref, snapshots[ref.key], now=NOW) for ref in self.refs}
        self.submitted: list[tuple[str, str]] = []
        self.backup_refreshes: list[str | None] = []
        self.adapter = FrozenAdapter()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def drain(self) -> dict[str, ClusterHealth]:
        return {}

    def health(self) -> list[ClusterHealth]:
        return list(self._health.values())

    def cluster_health(self, key: str) -> ClusterHealth:
        return self._health[key]

    def snapshots(self, key: str) -> dict[str, Snapshot]:
        return dict(self._snapshots[key])

    def history(self, key: str, member: str) -> list[HistoryPoint]:
        lag = [i * MiB for i in (1, 2, 4, 8, 12, 16, 20, 26, 30, 34, 38, 40)] if member == "pg3" else [2 * MiB] * 12
        return [PgHistoryPoint(NOW - 2 * (12 - i), v, None, None) for i, v in enumerate(lag)]

    def drain_notices(self) -> list[tuple[str, str]]:
        return []

    def refresh_backups(self, key: str | None = None) -> None:
        self.backup_refreshes.append(key)

    def ref(self, key: str) -> ClusterRef:
        return next(r for r in self.refs if r.key == key)

    # Alertmanager's alerts: none unless a test sets `self.alert_state` (an AlertsState).
    alert_state: AlertsState | None = None
    watch_calls: list[str | None] = []
    _watched: str | None = None

    def alerts(self, key: str | None = None) -> AlertsState:
        state = self.alert_state or AlertsState((), None, None, configured=False)
        if key is None:
            return state
        return dataclasses.replace(state, alerts=tuple(a for a in state.alerts if a.cluster == key))

    def refresh_alerts(self) -> None:
        pass

    def watch(self, key: str | None) -> None:
        self.watch_calls = [*self.watch_calls, key]
        self._watched = key

    @property
    def watched(self) -> str | None:
        return self._watched

    def interval_of(self, key: str) -> float:
        return self.ref(key).refresh_interval

    @property
    def fleet_mode(self) -> bool:
        return False

    def backup_state(self, key: str, now: float) -> ClusterBackups | None:
        """orders-db's backups as the watcher would have read them: daily pg_dumps, the newest
        30 h old (WARN against the 26 h default), in a versioned bucket without Object Lock."""
        from datetime import datetime, timedelta

        from dbops.platform.backups import BackupEntry, Fetched, KindFetched, judge

        if key != "production/orders-db":
            return None
        newest = datetime.fromtimestamp(NOW, tz=UTC) - timedelta(hours=30)
        entries = tuple(BackupEntry(f"dumps/orders-{i}.dump", newest - timedelta(days=i), (120 - i) * MiB) for i in range(6))
        fetched = Fetched(key, NOW, (KindFetched("pg_dump", "s3://orders-backups/dumps/", entries, 6),),
                          ("s3://orders-backups/dumps/",),
                          {"bucket": "orders-backups", "versioning": "Enabled", "mfa_delete": None, "object_lock": None})
        return judge(fetched, self.ref(key).cluster.backups, now)

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    def submit(self, fn, key: str, member: str) -> concurrent.futures.Future:
        """Run `fn` against FrozenAdapter, as PollerHub runs it against the member's adapter."""
        self.submitted.append((key, member))
        fut: concurrent.futures.Future = concurrent.futures.Future()
        try:
            fut.set_result(asyncio.run(fn(self.adapter)))
        except Exception as exc:
            fut.set_exception(exc)
        return fut


class FrozenAdapter:
    """The adapter calls actions make, over the frozen sessions. `now_running` replaces a pid's
    query (a pooled connection reused between the refresh and the confirmation)."""

    def __init__(self) -> None:
        self.sessions = {s.pid: s for s in sessions()}
        self.signalled: list[tuple[str, int]] = []

    async def session(self, pid: int):
        return self.sessions.get(pid)

    async def cancel_backend(self, pid: int) -> bool:
        self.signalled.append(("cancel", pid))
        return pid in self.sessions

    async def terminate_backend(self, pid: int) -> bool:
        self.signalled.append(("terminate", pid))
        return self.sessions.pop(pid, None) is not None


# -- a fleet: many clusters across environments, for the fleet overview and its benchmark ------

FLEET_ENVIRONMENTS = ("production", "staging", "qa", "dev")
FLEET_SERVICES = ("orders", "billing", "search", "sessions", "ledger", "catalog", "users", "events")


def fleet_name(i: int) -> str:
    """The i-th cluster's name: a service and a number (orders-000, billing-001 ...)."""
    engine = "redis" if i % 3 == 2 else "pg"
    return f"{FLEET_SERVICES[i % len(FLEET_SERVICES)]}-{engine}-{i:03d}"


def fleet_config(n: int) -> str:
    """TOML for `n` clusters spread over FLEET_ENVIRONMENTS: PostgreSQL (a primary and two
    replicas) and, every third, a standalone Redis (a primary and a replica)."""
    lines = []
    for env in FLEET_ENVIRONMENTS:
        lines += [f"[environments.{env}]", 'mode = "read-only"']
    for i in range(n):
        env = FLEET_ENVIRONMENTS[i % len(FLEET_ENVIRONMENTS)]
        head = f"[environments.{env}.clusters.{fleet_name(i)}]"
        host = f"10.{i // 250}.{i % 250}"
        if i % 3 == 2:
            lines += [head, 'engine = "redis"',
                      f'members = [{{ name = "r1", host = "{host}.1" }}, {{ name = "r2", host = "{host}.2" }}]']
        else:
            lines += [head, 'engine = "postgres"', 'password = { env = "X" }', "members = [",
                      f'  {{ name = "pg1", host = "{host}.1", role = "primary" }},',
                      f'  {{ name = "pg2", host = "{host}.2", role = "replica" }},',
                      f'  {{ name = "pg3", host = "{host}.3", role = "replica" }},', "]"]
    return "\n".join(lines) + "\n"


def fleet_problem(i: int) -> str | None:
    """What is wrong with the i-th cluster, if anything: every 97th has a member down (CRIT),
    every 31st PostgreSQL cluster a replica 40 MiB / 14 s behind (WARN)."""
    if i % 97 == 5:
        return "down"
    if i % 31 == 7 and i % 3 != 2:
        return "lag"
    return None


def healthy_primary() -> PgMemberData:
    return dataclasses.replace(primary_data(), sessions=(), slots=(), replicas=(replica_row("pg2", 0, 0.0), replica_row("pg3", 0, 0.0)),
                               max_xid_age=2_000_000)


def healthy_replica(lag: int = 0, secs: float = 0.0) -> PgMemberData:
    return dataclasses.replace(replica_data(lag, secs), max_xid_age=2_000_000)


def fleet_snapshots(ref: ClusterRef, i: int) -> dict[str, Snapshot]:
    problem = fleet_problem(i)
    if ref.cluster.engine == "redis":
        from dbops.engines.redis.data import NodeResult, RedisTopology, node_data, parse_info

        def info(**over: object) -> dict[str, str]:
            base: dict[str, object] = {"redis_version": "7.2.4", "role": "master", "used_memory": 20 * MiB,
                                       "maxmemory": 64 * MiB, "connected_clients": 10, "rdb_last_bgsave_status": "ok"}
            return parse_info("# Server\r\n" + "".join(f"{k}:{v}\r\n" for k, v in {**base, **over}.items()))

        host = ref.cluster.members[0].host
        master = NodeResult("r1", f"{host}:6379", "data", Reachability.UP,
                            data=node_data(info(connected_slaves=1), None, [], [], None))
        if problem == "down":
            replica = NodeResult("r2", f"{host[:-1]}2:6379", "data", Reachability.DOWN, f"connection refused at {host[:-1]}2:6379")
        else:
            replica = NodeResult("r2", f"{host[:-1]}2:6379", "data", Reachability.UP,
                                 data=node_data(info(role="slave", master_host=host, master_port=6379, master_link_status="up"),
                                                None, [], [], None))
        topology = RedisTopology("standalone", (master, replica))
        return {"nodes": Snapshot(ref.environment, ref.name, "nodes", "redis", Reachability.UP, NOW, 5.0, data=topology, seq=5)}
    lag = (40 * MiB, 14.0) if problem == "lag" else (0, 0.0)
    primary = dataclasses.replace(healthy_primary(), replicas=(replica_row("pg2", 0, 0.0), replica_row("pg3", *lag)))
    out = {"pg1": snap(ref, "pg1", primary), "pg2": snap(ref, "pg2", healthy_replica()),
           "pg3": snap(ref, "pg3", healthy_replica(*lag))}
    if problem == "down":
        out["pg3"] = snap(ref, "pg3", healthy_replica(), Reachability.DOWN, "connection refused")
    return out


class FleetHub(FrozenHub):
    """A FrozenHub over `fleet_config(n)`, whose clusters' health a test can change: `change()`
    judges the new snapshots and queues the cluster for `drain()`, as a poll would."""

    def __init__(self, n: int) -> None:
        config = parse(fleet_config(n))
        refs = config.clusters()
        index = {ref.key: i for i, ref in enumerate(sorted(refs, key=lambda r: int(r.name.rsplit("-", 1)[1])))}
        super().__init__(config, {ref.key: fleet_snapshots(ref, index[ref.key]) for ref in refs})
        self._by_key = {ref.key: ref for ref in self.refs}
        self._changed: dict[str, ClusterHealth] = {}

    def ref(self, key: str) -> ClusterRef:
        return self._by_key[key]  # a dict: FrozenHub's scan would cost O(n) per row at 1000 clusters

    def change(self, key: str, snapshots: dict[str, Snapshot]) -> ClusterHealth:
        self._snapshots[key] = snapshots
        return self.put(assess_cluster(self._by_key[key], snapshots, now=NOW))

    def put(self, health: ClusterHealth) -> ClusterHealth:
        """Queue a cluster's health judged beforehand (a benchmark judges outside its timing,
        as the pollers judge outside the UI's thread)."""
        key = f"{health.environment}/{health.name}"
        self._health[key] = self._changed[key] = health
        return health

    def drain(self) -> dict[str, ClusterHealth]:
        changed, self._changed = self._changed, {}
        return changed
