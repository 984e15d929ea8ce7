"""TOML configuration -> validated, immutable models.

Shape: environments -> clusters -> members. Every problem is reported at once, each with
file:line, the key path, and for unknown keys a did-you-mean. Secrets are references; the
validator never echoes a value it was given for a credential.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import tomllib
from dataclasses import Field, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from dbops.schema import Invalid, Model, limits

# What each engine brings to the config (its kind, usual port and user, its section's model)
# comes from its EngineSpec (dbops.engines): read when a config is validated, not at import.
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SecretRef(Model):
    """Where a credential lives: exactly one of env, file, value (sandbox only), aws_secret,
    k8s_secret or rds_iam (dbops.secrets and dbops.platform.credentials read them).

    aws_secret: a Secrets Manager secret's ARN or name; `key` picks a field of its JSON
    SecretString (without key the whole SecretString is the value). Region, endpoint and AWS
    credentials: `region` / `endpoint_url` here, else the region in the ARN, else the cluster's
    [rds] aws location (its keys too), else boto3's usual chain (AWS_REGION, ~/.aws, a role).
    k8s_secret: "namespace/name" of a Kubernetes Secret; `key` names its data field. The API is
    the one `kubeconfig` / `context` here name, else the cluster's [kubernetes] ones, else the
    in-cluster service account or ~/.kube/config (as dbops.platform.kubernetes connects).
    rds_iam = true: an RDS IAM authentication token for the member's host, port and user,
    generated with the cluster's [rds] aws credentials (or boto3's chain); needs TLS.
    """

    env: str | None = None
    file: str | None = None
    value: str | None = field(default=None, repr=False)
    aws_secret: str | None = None
    k8s_secret: str | None = None
    rds_iam: bool | None = None
    key: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    kubeconfig: str | None = None
    context: str | None = None

    KINDS = ("env", "file", "value", "aws_secret", "k8s_secret", "rds_iam")

    @property
    def kind(self) -> str | None:
        """Which kind of reference this is (None when it names none)."""
        return next((k for k in self.KINDS if getattr(self, k) is not None), None)

    @property
    def remote(self) -> bool:
        """Read from a service (and cached in memory): re-read when a server refuses it."""
        return self.kind in ("aws_secret", "k8s_secret", "rds_iam")

    def check(self) -> list[Any]:
        given = [k for k in self.KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            return ["give exactly one of env, file or value, or one read from a service: aws_secret, k8s_secret or rds_iam"]
        kind = given[0]
        problems: list[Any] = []
        if self.rds_iam is False:
            problems.append((("rds_iam",), "rds_iam = false names no credential: leave it out, or give env, file ..."))
        if self.key is not None and kind not in ("aws_secret", "k8s_secret"):
            problems.append((("key",), "key picks a field of an aws_secret or a k8s_secret"))
        if kind == "k8s_secret":
            ns, _, name = (self.k8s_secret or "").partition("/")
            if not ns or not name or "/" in name:
                problems.append((("k8s_secret",), 'give the Secret as "namespace/name"'))
            if not self.key:
                problems.append((("key",), "a k8s_secret needs key = the data field that holds the credential"))
        for name in ("region", "endpoint_url"):
            if getattr(self, name) is not None and kind not in ("aws_secret", "rds_iam"):
                problems.append(((name,), f"{name} is for aws_secret or rds_iam"))
        if self.endpoint_url is not None and kind == "rds_iam":
            problems.append((("endpoint_url",), "an RDS IAM token is made locally, not fetched: endpoint_url is for aws_secret"))
        for name in ("kubeconfig", "context"):
            if getattr(self, name) is not None and kind != "k8s_secret":
                problems.append(((name,), f"{name} is for k8s_secret"))
        return problems

    def describe(self) -> str:
        """The reference as messages name it (never a value)."""
        if self.env is not None:
            return f"env:{self.env}"
        if self.file is not None:
            return f"file:{self.file}"
        if self.aws_secret is not None:
            # (key in parentheses: "key password: ..." would read as a password to scrub_text)
            return f"aws_secret {self.aws_secret}" + (f" (key {self.key})" if self.key else "")
        if self.k8s_secret is not None:
            return f"k8s_secret {self.k8s_secret}" + (f" (key {self.key})" if self.key else "")
        if self.rds_iam:
            return "rds_iam token"
        return "literal (sandbox)"


@dataclass(frozen=True)
class TLS(Model):
    mode: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class PostgresThresholds(Model):
    """Defaults are the product brief's."""

    lag_bytes_warn: int = 16 * 1024 * 1024
    lag_bytes_crit: int = 100 * 1024 * 1024
    lag_seconds_warn: float = 10.0
    lag_seconds_crit: float = 60.0
    connections_pct_warn: float = 80.0
    connections_pct_crit: float = 95.0
    cache_hit_ratio_warn: float = 99.0
    archiver_failures_warn: int = 0  # WARN when failures since archiving was last healthy exceed this
    xid_age_warn: int = 500_000_000
    xid_age_crit: int = 1_500_000_000
    inactive_slot_retained_bytes_warn: int = 1024 * 1024 * 1024
    long_query_seconds: float = 60.0
    idle_in_transaction_seconds_warn: float = 60.0
    idle_in_transaction_seconds_crit: float = 600.0
    # A transaction open this long (since xact_start, whatever its state), apart from long queries.
    long_transaction_seconds_warn: float = 300.0
    long_transaction_seconds_crit: float = 1800.0
    # What holds the xmin horizon back (a session, a prepared transaction, a slot, a standby's
    # feedback): judged by how many transactions ago its xmin was, and how long ago it began.
    xmin_horizon_xid_age_warn: int = 50_000_000
    xmin_horizon_xid_age_crit: int = 200_000_000
    xmin_horizon_seconds_warn: float = 600.0
    xmin_horizon_seconds_crit: float = 3600.0
    mxid_age_warn: int = 500_000_000
    mxid_age_crit: int = 1_500_000_000
    # PgBouncer: a client waiting at least this long for a server connection (maxwait).
    pgbouncer_wait_seconds_warn: float = 1.0
    pgbouncer_wait_seconds_crit: float = 10.0

    def check(self) -> list[str]:
        pairs = [
            ("lag_bytes", self.lag_bytes_warn, self.lag_bytes_crit),
            ("lag_seconds", self.lag_seconds_warn, self.lag_seconds_crit),
            ("connections_pct", self.connections_pct_warn, self.connections_pct_crit),
            ("xid_age", self.xid_age_warn, self.xid_age_crit),
            ("idle_in_transaction_seconds", self.idle_in_transaction_seconds_warn, self.idle_in_transaction_seconds_crit),
            ("long_transaction_seconds", self.long_transaction_seconds_warn, self.long_transaction_seconds_crit),
            ("xmin_horizon_xid_age", self.xmin_horizon_xid_age_warn, self.xmin_horizon_xid_age_crit),
            ("xmin_horizon_seconds", self.xmin_horizon_seconds_warn, self.xmin_horizon_seconds_crit),
            ("mxid_age", self.mxid_age_warn, self.mxid_age_crit),
            ("pgbouncer_wait_seconds", self.pgbouncer_wait_seconds_warn, self.pgbouncer_wait_seconds_crit),
        ]
        return [f"{name}_warn ({warn:g}) is above {name}_crit ({crit:g})" for name, warn, crit in pairs if warn > crit]


@dataclass(frozen=True)
class Member(Model):
    name: str
    host: str
    # None: the engine's usual port (DEFAULT_PORTS); the cluster fills it in, so code reading a
    # member of a loaded config always sees an int.
    port: int | None = field(default=None, metadata=limits(ge=1, le=65535))
    role: Literal["primary", "replica", "any"] = "any"
    # The name this member's walreceiver reports to the primary; matching it to a row of
    # pg_stat_replication is how a replica's lag is read from the primary's side.
    application_name: str | None = None


@dataclass(frozen=True)
class PgBouncer(Model):
    host: str
    port: int = field(default=6432, metadata=limits(ge=1, le=65535))
    user: str = "pgbouncer"
    password: SecretRef | None = None


@dataclass(frozen=True)
class PgBackRest(Model):
    """How dbops runs pgBackRest for a cluster, on the host where dbops runs (a repository host
    or a restore host): backups, `info`, and restores into a new data directory there."""

    stanza: str
    config: str = "/etc/pgbackrest/pgbackrest.conf"
    # pgBackRest and restored servers run as the repository's owner; files root wrote would
    # lock that user out of its own repository.
    os_user: str | None = "postgres"
    bin: str = "pgbackrest"
    # New data directories for restores go here, one per run (the operator may name another).
    restore_root: str = "/var/tmp/dbops-restores"
    # PostgreSQL's binaries for a restored copy; default /usr/lib/postgresql/<major>/bin.
    pg_bindir: str | None = None


@dataclass(frozen=True)
class AwsLocation(Model):
    """An AWS account and region to call (RDS, ElastiCache). endpoint_url points boto3 at another
    endpoint (the sandbox's moto server)."""

    region: str = "us-east-1"
    endpoint_url: str | None = None
    # Without keys boto3 finds credentials as usual (instance profile, AWS_* variables, ~/.aws).
    access_key_id: SecretRef | None = None
    secret_access_key: SecretRef | None = None

    def check(self) -> list[str]:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            return ["give both access_key_id and secret_access_key, or neither"]
        return []


@dataclass(frozen=True)
class S3Location(AwsLocation):
    """An S3 bucket (and key prefix) holding a cluster's backups. endpoint_url points boto3 at
    an S3-compatible store (MinIO, the sandbox's moto server)."""

    bucket: str = field(kw_only=True)
    prefix: str = ""


@dataclass(frozen=True)
class Backups(Model):
    """Where a cluster's logical backups live, and how fresh backups must be."""

    s3: S3Location | None = None
    # The newest backup may be this old before verify-backups refuses it (daily backups + slack).
    max_age_seconds: float = field(default=26 * 3600, metadata=limits(gt=0))
    # Recovery point objective: the newest archived WAL may be this old.
    rpo_seconds: float = field(default=900, metadata=limits(gt=0))
    # How often the console re-reads the backup state (S3 listing, pgbackrest info).
    refresh_seconds: float = field(default=300, metadata=limits(ge=10))


@dataclass(frozen=True)
class RedisThresholds(Model):
    """Defaults are the product brief's: memory > 90%, evictions > 0, hit rate < 95%."""

    memory_pct_warn: float = 90.0
    memory_pct_crit: float = 98.0
    evictions_warn: int = 0  # WARN when more keys than this were evicted since the last refresh
    hit_rate_pct_warn: float = 95.0
    # Judged only over refreshes with at least this many lookups: two misses of three is noise.
    hit_rate_min_lookups: int = 100
    fragmentation_warn: float = 1.5
    lag_bytes_warn: int = 1024 * 1024
    lag_bytes_crit: int = 64 * 1024 * 1024
    last_ack_seconds_warn: float = 10.0
    last_ack_seconds_crit: float = 60.0

    def check(self) -> list[str]:
        pairs = [
            ("memory_pct", self.memory_pct_warn, self.memory_pct_crit),
            ("lag_bytes", self.lag_bytes_warn, self.lag_bytes_crit),
            ("last_ack_seconds", self.last_ack_seconds_warn, self.last_ack_seconds_crit),
        ]
        return [f"{name}_warn ({warn:g}) is above {name}_crit ({crit:g})" for name, warn, crit in pairs if warn > crit]


@dataclass(frozen=True)
class RedisOptions(Model):
    """How dbops finds a Redis deployment's nodes.

    standalone: `members` are the data nodes (a primary and its replicas; replicas the primary
    reports are found too). sentinel: `sentinels` are asked for the master `master_name` and its
    replicas; `members` name known data nodes. cluster: `members` are seed nodes; every node of
    the cluster is found from their CLUSTER NODES.
    """

    mode: Literal["standalone", "sentinel", "cluster"] = "standalone"
    master_name: str | None = None
    sentinels: list[Member] = field(default_factory=list)
    # An ACL user (AUTH user password); None authenticates as the default user with the
    # cluster's `password` alone, which is also how an ElastiCache AUTH token is given.
    username: str | None = None
    # Sentinels with a requirepass of their own; None: the cluster's password.
    sentinel_password: SecretRef | None = None
    thresholds: RedisThresholds = RedisThresholds()

    def __post_init__(self) -> None:
        sentinels = [m if m is None or m.port is not None else replace(m, port=SENTINEL_PORT) for m in self.sentinels]
        object.__setattr__(self, "sentinels", sentinels)

    def check(self) -> list[Any]:
        problems: list[Any] = []
        if self.mode == "sentinel":
            if not self.master_name:
                problems.append((("master_name",), "sentinel mode needs the master name the sentinels monitor"))
            if not self.sentinels:
                problems.append((("sentinels",), "sentinel mode needs at least one sentinel address"))
        elif self.sentinels or self.master_name:
            problems.append("sentinels and master_name are for mode = \"sentinel\"")
        return problems


@dataclass(frozen=True)
class KafkaThresholds(Model):
    """Consumer lag is judged Burrow-style over a sliding window of `lag_window` refreshes:
    OK, WARN (the group consumes but its lag grew at every refresh of the window), STALL (members
    are in the group but its committed offset has not moved while there is lag), STOP (no member
    and the offset has not moved while there is lag), ERR (the committed offset is outside the
    partition's log). Lag in time is judged on its own."""

    lag_window: int = field(default=10, metadata=limits(ge=3, le=1000))
    lag_seconds_warn: float = 60.0
    lag_seconds_crit: float = 600.0

    def check(self) -> list[str]:
        if self.lag_seconds_warn > self.lag_seconds_crit:
            return [f"lag_seconds_warn ({self.lag_seconds_warn:g}) is above lag_seconds_crit ({self.lag_seconds_crit:g})"]
        return []


@dataclass(frozen=True)
class KafkaOptions(Model):
    """How dbops reads a Kafka cluster. `members` are the brokers (all of them, so a stopped one
    shows as DOWN; any that answers bootstraps). The security protocol follows from the cluster's
    `tls.mode` (require / verify-ca / verify-full: SSL) and `user` (SASL with `sasl_mechanism`,
    the password being the cluster's `password`)."""

    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    # Consumer groups to watch, as shell patterns (fnmatch); empty: every group.
    groups: list[str] = field(default_factory=list)
    # Topic and partition configs (min.insync.replicas) are re-read this often, not every refresh.
    config_refresh_seconds: float = field(default=60.0, metadata=limits(gt=0))
    thresholds: KafkaThresholds = KafkaThresholds()


@dataclass(frozen=True)
class Neo4jThresholds(Model):
    """Defaults are the product brief's: a transaction running longer than 500 ms."""

    transaction_ms_warn: float = 500.0
    transaction_ms_crit: float = 60_000.0

    def check(self) -> list[str]:
        if self.transaction_ms_warn > self.transaction_ms_crit:
            return [f"transaction_ms_warn ({self.transaction_ms_warn:g}) is above transaction_ms_crit ({self.transaction_ms_crit:g})"]
        return []


@dataclass(frozen=True)
class Neo4jOptions(Model):
    """Neo4j over Bolt: `tls.mode` disable/prefer is bolt://, require is bolt+ssc:// (encrypted,
    certificate not checked), verify-ca/verify-full is bolt+s:// (with tls.ca_file if given)."""

    thresholds: Neo4jThresholds = Neo4jThresholds()


@dataclass(frozen=True)
class QdrantThresholds(Model):
    """Defaults are the product brief's: request latency over 500 ms; any replica not Active is
    judged by the assessor (Dead: CRIT; Partial, Initializing, Listener ...: WARN)."""

    latency_ms_warn: float = 500.0
    latency_ms_crit: float = 5_000.0

    def check(self) -> list[str]:
        if self.latency_ms_warn > self.latency_ms_crit:
            return [f"latency_ms_warn ({self.latency_ms_warn:g}) is above latency_ms_crit ({self.latency_ms_crit:g})"]
        return []


@dataclass(frozen=True)
class QdrantOptions(Model):
    """Qdrant over its REST API (`members` are the nodes, port 6333). The cluster's `password` is
    the API key the pane reads with (Qdrant's read-only key is enough); `manage_api_key` is the
    key runbooks change things with. Without it runbooks use `password`, and a read-only key is
    refused by Qdrant with a message dbops passes on."""

    manage_api_key: SecretRef | None = None
    thresholds: QdrantThresholds = QdrantThresholds()


@dataclass(frozen=True)
class KubernetesRef(Model):
    """Where a cluster's Kubernetes objects are. Without kubeconfig and context: the in-cluster
    service account when dbops runs in a pod, else ~/.kube/config's current context."""

    namespace: str
    # Label selector of the database's pods and StatefulSets, e.g. "app.kubernetes.io/name=orders-db".
    selector: str
    kubeconfig: str | None = None
    context: str | None = None
    # Label selector of the backup CronJobs; default: `selector`.
    backup_selector: str | None = None
    # A CloudNativePG Cluster object (postgresql.cnpg.io/v1) in `namespace`, for cnpg.promote.
    cnpg_cluster: str | None = None
    # Warning events younger than this are shown.
    events_seconds: float = field(default=3600.0, metadata=limits(gt=0))


@dataclass(frozen=True)
class RdsRef(Model):
    """A cluster that runs on AWS RDS: its primary DB instance; read replicas are found from it."""

    instance: str
    aws: AwsLocation = AwsLocation()


@dataclass(frozen=True)
class ElastiCacheRef(Model):
    """A Redis cluster that runs on AWS ElastiCache: its replication group, whose members and
    snapshots the AWS pane lists (the Redis pane connects to the nodes as usual: TLS, AUTH token)."""

    replication_group: str
    aws: AwsLocation = AwsLocation()


FENCING_METHODS = ("pgbouncer", "kubernetes", "command", "sandbox", "manual")


@dataclass(frozen=True)
class Fencing(Model):
    """How a failover makes sure the old primary cannot take writes again before a replica is
    promoted. `methods` are tried in order; the first whose fence is verified is the fence, and
    when none is, nothing is promoted (fail closed). Without [fencing]: "sandbox" in a sandbox
    environment, else "manual" (the operator attests, by typing the member's name)."""

    methods: list[Literal["pgbouncer", "kubernetes", "command", "sandbox", "manual"]] = field(
        default_factory=lambda: ["manual"], metadata=limits(min_length=1))
    # For "command": run on this host with {host}, {member} and {port} filled in; exit 0 = fenced.
    # e.g. "ssh {host} sudo systemctl stop postgresql@15-main && ssh {host} sudo systemctl mask postgresql@15-main"
    command: str | None = None
    command_timeout: float = field(default=60.0, metadata=limits(gt=0))

    def check(self) -> list[Any]:
        problems: list[Any] = []
        if "command" in self.methods and not (self.command or "").strip():
            problems.append((("command",), 'methods lists "command": give the command to run'))
        dupes = sorted({m for m in self.methods if self.methods.count(m) > 1})
        if dupes:
            problems.append((("methods",), f"listed twice: {', '.join(dupes)}"))
        return problems


@dataclass(frozen=True)
class Cluster(Model):
    engine: str  # a registered engine's kind (checked against the specs)
    members: list[Member] = field(metadata=limits(min_length=1))
    database: str = "postgres"
    # None: the engine's usual user (its spec's default_user), filled in by __post_init__.
    user: str | None = None
    password: SecretRef | None = None
    tls: TLS = TLS()
    refresh_interval: float | None = field(default=None, metadata=limits(gt=0))
    timeout: float | None = field(default=None, metadata=limits(gt=0))
    thresholds: PostgresThresholds = PostgresThresholds()
    pgbouncer: PgBouncer | None = None
    pgbackrest: PgBackRest | None = None
    backups: Backups = Backups()
    # Each engine's own section ([redis], [kafka], a plugin's ...), keyed by engine kind and
    # validated with the model its spec names; the cluster's engine's section is always there
    # (its defaults when the file has none). Filled from those keys, not from an `options` key.
    options: dict[str, Any] = field(default_factory=dict, metadata={"sections": True})
    # What surrounds the cluster: its Kubernetes objects, its RDS instance.
    kubernetes: KubernetesRef | None = None
    rds: RdsRef | None = None
    elasticache: ElastiCacheRef | None = None
    fencing: Fencing | None = None
    # Alertmanager alerts and Prometheus series whose labels hold every one of these (exact
    # values) belong to this cluster; empty: the [alertmanager.labels] rules decide.
    alert_labels: dict[str, str] = field(default_factory=dict)
    description: str = ""

    @classmethod
    def sections(cls) -> dict[str, type[Model]]:
        from dbops.engine_spec import specs

        return {kind: spec.options for kind, spec in specs().items() if spec.options is not None}

    def __post_init__(self) -> None:
        from dbops.engine_spec import specs

        spec = specs().get(self.engine)
        if spec is None:
            return  # check() says the engine is unknown
        members = [m if m is None or m.port is not None else replace(m, port=spec.default_port) for m in self.members]
        object.__setattr__(self, "members", members)
        if self.user is None and spec.default_user is not None:
            object.__setattr__(self, "user", spec.default_user)
        if spec.options is not None and self.engine not in self.options:
            object.__setattr__(self, "options", {**self.options, self.engine: spec.options()})

    # Typed access to the built-in engines' sections (a plugin engine reads options[kind]).
    @property
    def redis(self) -> RedisOptions | None:
        return self.options.get("redis")

    @property
    def kafka(self) -> KafkaOptions | None:
        return self.options.get("kafka")

    @property
    def neo4j(self) -> Neo4jOptions | None:
        return self.options.get("neo4j")

    @property
    def qdrant(self) -> QdrantOptions | None:
        return self.options.get("qdrant")

    def check(self) -> list[Any]:
        from dbops.engine_spec import broken, specs

        known = specs()
        if self.engine not in known:
            why = broken().get(self.engine)
            if why is None and not known:
                why = ("no engine is registered (dbops' entry points are missing or stale): reinstall dbops "
                       "(`make venv`, or `pip install -e .` in its checkout)")
            return [(("engine",), why if why else
                     "must be one of " + ", ".join(repr(k) for k in known) + f" (got {self.engine!r})")]
        names = [m.name for m in [*self.members, *(self.redis.sentinels if self.redis else [])] if m is not None]
        problems: list[Any] = [f"member name {n!r} is used twice" for n in sorted({n for n in names if names.count(n) > 1})]
        for section in self.options:
            if section != self.engine:
                problems.append(((section,), f"a [{section}] section on an engine = {self.engine!r} cluster"))
        if self.rds is not None and self.engine != "postgres":
            problems.append((("rds",), "an [rds] section belongs on an engine = \"postgres\" cluster"))
        if self.elasticache is not None and self.engine != "redis":
            problems.append((("elasticache",), "an [elasticache] section belongs on an engine = \"redis\" cluster"))
        if self.fencing is not None and self.engine != "postgres":
            problems.append((("fencing",), "a [fencing] section belongs on an engine = \"postgres\" cluster"))
        if self.fencing is not None and "pgbouncer" in self.fencing.methods and self.pgbouncer is None:
            problems.append((("fencing", "methods"), 'the "pgbouncer" fence needs the cluster\'s [pgbouncer]'))
        if self.fencing is not None and "kubernetes" in self.fencing.methods and self.kubernetes is None:
            problems.append((("fencing", "methods"), 'the "kubernetes" fence needs the cluster\'s [kubernetes]'))
        if self.engine == "kafka" and self.user is not None and self.password is None:
            problems.append((("password",), "SASL (a `user` on a Kafka cluster) needs a password"))
        if self.password is not None and self.password.rds_iam:
            if self.engine != "postgres":
                problems.append((("password", "rds_iam"), "rds_iam is for an engine = \"postgres\" cluster on RDS"))
            elif self.tls.mode in ("disable", "prefer"):
                problems.append((("password", "rds_iam"),
                                 f"rds_iam sends an IAM token as the password, which RDS accepts only over TLS: set "
                                 f"tls.mode = \"require\", \"verify-ca\" or \"verify-full\" (it is \"{self.tls.mode}\")"))
        if self.pgbouncer is not None and self.pgbouncer.password is not None and self.pgbouncer.password.rds_iam:
            problems.append((("pgbouncer", "password", "rds_iam"), "rds_iam is for the cluster's own password, not PgBouncer's"))
        return problems


@dataclass(frozen=True)
class Environment(Model):
    mode: Literal["read-only", "operator"] = "read-only"
    # Production gets the red banner and the strictest confirmations.
    production: bool | None = None
    # Only a sandbox environment may hold literal credentials in the file.
    sandbox: bool = False
    # 2: a second operator (another login) must approve a run's plan before its destructive
    # steps (and steps marked approval=True) run; the approval is bound to the plan's hash.
    approvals: int = field(default=1, metadata=limits(ge=1, le=2))
    # An approval not used within this long is void.
    approval_ttl_seconds: int = field(default=1800, metadata=limits(ge=60))
    # Whether DR drills (`dbops drill`) may inject faults here; unset: only in a sandbox.
    drills: bool | None = None
    clusters: dict[str, Cluster] = field(default_factory=dict)

    @property
    def allows_drills(self) -> bool:
        return self.drills if self.drills is not None else self.sandbox

    def is_production(self, name: str) -> bool:
        return self.production if self.production is not None else name.lower() in ("production", "prod")


@dataclass(frozen=True)
class Defaults(Model):
    refresh_interval: float = field(default=2.0, metadata=limits(gt=0))
    timeout: float = field(default=3.0, metadata=limits(gt=0))
    history_seconds: int = field(default=3600, metadata=limits(ge=60))
    # At most this many polls run at once, and at most max_concurrent_polls_per_engine of one
    # engine: a fleet's refresh is spread out instead of opening hundreds of sockets in the
    # same millisecond, and a slow engine cannot take every slot.
    max_concurrent_polls: int = field(default=64, metadata=limits(ge=1))
    max_concurrent_polls_per_engine: int = field(default=32, metadata=limits(ge=1))
    # Clusters the operator has not open are polled this often instead (the overview says so);
    # unset: every cluster at its refresh_interval.
    unwatched_refresh_interval: float | None = field(default=None, metadata=limits(gt=0))


@dataclass(frozen=True)
class AuditShipping(Model):
    """Copies of the audit log in an S3 bucket with Object Lock: uploaded every `every_seconds`
    while the console runs and at the end of every runbook, each object locked in COMPLIANCE
    mode for `retain_days` (nobody, root included, can delete or overwrite it before then)."""

    s3: S3Location
    every_seconds: float = field(default=900.0, metadata=limits(gt=0))
    retain_days: int = field(default=365, metadata=limits(ge=1))


@dataclass(frozen=True)
class AuditOptions(Model):
    ship: AuditShipping | None = None


@dataclass(frozen=True)
class RecordingOptions(Model):
    """The session recording (dbops.recording): every snapshot the console's pollers make, the
    alerts, the audit records and the operator's notes, for `dbops replay` and the incident
    bundle. On by default; bounded by age and by the directory's total size."""

    enabled: bool = True
    # Default: recordings/ in the state directory (beside the audit log).
    dir: str | None = None
    # A recording file covers at most this long, so the oldest can be removed whole.
    segment_minutes: float = field(default=60.0, metadata=limits(ge=1))
    # Files older than this are removed, and the oldest files while the directory holds more than max_mb.
    keep_hours: float = field(default=72.0, metadata=limits(gt=0))
    max_mb: float = field(default=2048.0, metadata=limits(gt=0))
    # A cluster nobody has open is kept once per this many seconds, and at every change of its
    # state (severity, a member down or up, a role, a metric's severity, a timeline); the one open
    # in the console, at every refresh. 0: every refresh of every cluster (about six times the
    # CPU and the disk for a fleet).
    unwatched_every_seconds: float = field(default=10.0, metadata=limits(ge=0))


@dataclass(frozen=True)
class LeaseLocks(Model):
    """Runbook locks as Kubernetes Leases (coordination.k8s.io/v1), for teams whose consoles run
    on several hosts: one Lease per cluster in `namespace`, renewed while the runbook runs."""

    namespace: str
    kubeconfig: str | None = None
    context: str | None = None
    # A holder that stops renewing (a crashed console) loses the Lease after this long.
    duration_seconds: int = field(default=60, metadata=limits(ge=10))


@dataclass(frozen=True)
class CoordinationDb(Model):
    """A small PostgreSQL database that every console reaches and that is not a cluster under
    repair: runbook locks are advisory locks there (held on a connection, so the server frees
    them when a console dies) and two-person approvals are rows there."""

    host: str
    port: int = field(default=5432, metadata=limits(ge=1, le=65535))
    database: str = "dbops"
    user: str = "dbops"
    password: SecretRef | None = None
    tls: TLS = TLS()
    timeout: float = field(default=5.0, metadata=limits(gt=0))


@dataclass(frozen=True)
class Locks(Model):
    kubernetes: LeaseLocks | None = None
    postgres: CoordinationDb | None = None


@dataclass(frozen=True)
class DrillTarget(Model):
    rto_seconds: float | None = field(default=None, metadata=limits(gt=0))
    rpo_seconds: float | None = field(default=None, metadata=limits(ge=0))


@dataclass(frozen=True)
class Drills(Model):
    """What a DR drill is judged against: RTO (time to service back) and RPO (data lost, as
    time). Defaults: RTO 15 min, RPO 1 h. `targets` overrides them for an environment ("prod")
    or one cluster ("prod/orders"); the cluster's own wins over its environment's."""

    rto_seconds: float = field(default=900.0, metadata=limits(gt=0))
    rpo_seconds: float = field(default=3600.0, metadata=limits(ge=0))
    targets: dict[str, DrillTarget] = field(default_factory=dict)

    def for_cluster(self, environment: str, cluster: str) -> tuple[float, float]:
        rto, rpo = self.rto_seconds, self.rpo_seconds
        for key in (environment, f"{environment}/{cluster}"):
            t = self.targets.get(key)
            if t is not None:
                rto = t.rto_seconds if t.rto_seconds is not None else rto
                rpo = t.rpo_seconds if t.rpo_seconds is not None else rpo
        return rto, rpo


@dataclass(frozen=True)
class AlertLabels(Model):
    """How an alert's or a series' labels name a cluster and a member, for clusters without
    their own alert_labels. The defaults are the usual exporters' and Prometheus' labels: a
    `cluster` label (kube-prometheus, most relabelings) with an optional `environment`/`env`
    beside it, and a member's address in `instance`, `server` (postgres_exporter),
    `addr` or `redis` (redis_exporter), or its name in `pod`/`member`."""

    cluster: list[str] = field(default_factory=lambda: ["cluster", "dbops_cluster", "cluster_name"])
    environment: list[str] = field(default_factory=lambda: ["environment", "env"])
    member: list[str] = field(default_factory=lambda: ["instance", "server", "addr", "redis", "pod", "member"])


def http_url_problem(url: str) -> str | None:
    """Why `url` is not an http(s) URL a client can connect to (a port out of range, no host,
    a space), or None: said when the config is read, not as a library's error at the first
    request. The URL is quoted without any user:password it holds (everything up to its last
    @), and the parser's own words, which can quote a piece of it, are not repeated."""
    from urllib.parse import urlsplit

    shown = re.sub(r"//.*@", "//***@", url)
    if not url.startswith(("http://", "https://")):
        return f"give an http:// or https:// URL (it is {shown!r})"
    if any(c.isspace() for c in url):
        return f"a URL has no spaces in it (it is {shown!r})"
    try:
        parts = urlsplit(url)
    except ValueError:  # the one thing urlsplit refuses: a bracketed host that is no IPv6 address
        return f"its [host] is not an IPv6 address (it is {shown!r})"
    try:
        parts.port  # noqa: B018 - reading it checks it: ValueError when not a number in 0-65535
    except ValueError:
        return f"its port is not a number from 0 to 65535 (it is {shown!r})"
    if not parts.hostname:
        return f"the URL names no host (it is {shown!r})"
    return None


@dataclass(frozen=True)
class HttpService(Model):
    """A monitoring service's HTTP API: basic auth (user + password) or a bearer token, TLS as
    everywhere else (verify-ca / verify-full check the certificate against ca_file)."""

    url: str
    user: str | None = None
    password: SecretRef | None = None
    bearer_token: SecretRef | None = None
    tls: TLS = TLS()
    timeout: float = field(default=5.0, metadata=limits(gt=0))
    labels: AlertLabels = AlertLabels()

    def check(self) -> list[Any]:
        problems: list[Any] = []
        why = http_url_problem(self.url)
        if why is not None:
            problems.append((("url",), why))
        if self.password is not None and self.bearer_token is not None:
            problems.append((("bearer_token",), "give user + password or bearer_token, not both"))
        if (self.user is None) != (self.password is None):
            problems.append((("password" if self.user is not None else "user",), "basic auth needs both user and password"))
        return problems


@dataclass(frozen=True)
class AlertmanagerOptions(HttpService):
    # How often the firing alerts are read (one GET /api/v2/alerts for the whole fleet).
    refresh_interval: float = field(default=10.0, metadata=limits(gt=0))


@dataclass(frozen=True)
class PrometheusOptions(HttpService):
    # fleet = true: the overview's rows come from PromQL over the exporters' metrics, a few
    # queries for the whole fleet every refresh_interval; a cluster is polled directly only
    # while the operator has it open (and by `dbops check --cluster`).
    fleet: bool = False
    refresh_interval: float = field(default=15.0, metadata=limits(gt=0))


@dataclass(frozen=True)
class Config(Model):
    defaults: Defaults = Defaults()
    operator: str | None = None
    # Directories of a team's own runbooks (*.py files exposing RUNBOOK or RUNBOOKS).
    runbook_dirs: list[str] = field(default_factory=list)
    # Directories of a team's own drill scenarios (*.py files exposing SCENARIO or SCENARIOS).
    drill_dirs: list[str] = field(default_factory=list)
    drills: Drills = Drills()
    environments: dict[str, Environment] = field(default_factory=dict)
    audit: AuditOptions = AuditOptions()
    recording: RecordingOptions = RecordingOptions()
    locks: Locks = Locks()
    alertmanager: AlertmanagerOptions | None = None
    prometheus: PrometheusOptions | None = None

    def check(self) -> list[Any]:
        problems: list[Any] = []
        for env_name, env in self.environments.items():
            if env.sandbox:
                continue
            for cname, cluster in env.clusters.items():
                refs = [("password", cluster.password)]
                # Every credential of the engine's own section ([redis] sentinel_password, [qdrant]
                # manage_api_key, a plugin's ...).
                for kind, section in cluster.options.items():
                    refs += [(f"{kind}.{name}", value) for name, value in vars(section).items() if isinstance(value, SecretRef)]
                if cluster.pgbouncer:
                    refs.append(("pgbouncer.password", cluster.pgbouncer.password))
                if cluster.rds is not None:
                    refs += [("rds.aws.access_key_id", cluster.rds.aws.access_key_id),
                             ("rds.aws.secret_access_key", cluster.rds.aws.secret_access_key)]
                if cluster.elasticache is not None:
                    refs += [("elasticache.aws.access_key_id", cluster.elasticache.aws.access_key_id),
                             ("elasticache.aws.secret_access_key", cluster.elasticache.aws.secret_access_key)]
                if cluster.backups.s3:
                    refs += [("backups.s3.access_key_id", cluster.backups.s3.access_key_id),
                             ("backups.s3.secret_access_key", cluster.backups.s3.secret_access_key)]
                for key, ref in refs:
                    if ref is not None and ref.value is not None:
                        problems.append((
                            ("environments", env_name, "clusters", cname, *key.split(".")),
                            'a literal credential is only allowed in a sandbox environment; use { env = "VAR" } or { file = "/path" }',
                        ))
        coordination = self.locks.postgres
        all_sandbox = all(env.sandbox for env in self.environments.values())
        if coordination is not None and coordination.password is not None and coordination.password.value is not None and not all_sandbox:
            problems.append((("locks", "postgres", "password"),
                             'a literal credential is only allowed in a config of sandbox environments; use { env = "VAR" } or { file = "/path" }'))
        for env_name, env in self.environments.items():
            if env.approvals > 1 and coordination is None:
                problems.append((("environments", env_name, "approvals"),
                                 "approvals = 2 needs [locks.postgres]: approvals live in the coordination database every console shares"))
        keys = set(self.environments) | {f"{e}/{c}" for e, env in self.environments.items() for c in env.clusters}
        for key in self.drills.targets:
            if key not in keys:
                problems.append((("drills", "targets", key),
                                 f"names no environment or environment/cluster; configured: {', '.join(sorted(keys)) or 'none'}"))
        # [alertmanager], [prometheus] and [audit.ship] belong to no environment: literal
        # credentials only in a file of sandboxes alone.
        for section, service in (("alertmanager", self.alertmanager), ("prometheus", self.prometheus)):
            for key in ("password", "bearer_token"):
                ref = getattr(service, key, None)
                if ref is not None and ref.value is not None and not all_sandbox:
                    problems.append(((section, key),
                                     'a literal credential is only allowed in a config of sandbox environments; use { env = "VAR" } or { file = "/path" }'))
        ship = self.audit.ship
        if ship is not None and not all(env.sandbox for env in self.environments.values()):
            for key in ("access_key_id", "secret_access_key"):
                ref = getattr(ship.s3, key)
                if ref is not None and ref.value is not None:
                    problems.append((
                        ("audit", "ship", "s3", key),
                        'a literal credential is only allowed in a config of sandbox environments; use { env = "VAR" } or { file = "/path" }',
                    ))
        return problems

    # -- convenience -------------------------------------------------------------------------

    def clusters(self) -> list[ClusterRef]:
        out = []
        for env_name, env in self.environments.items():
            for cname, cluster in env.clusters.items():
                out.append(ClusterRef(env_name, env, cname, cluster, self.defaults))
        return out


@dataclass(frozen=True)
class ClusterRef:
    """A cluster with its environment and the defaults that apply to it."""

    environment: str
    env: Environment
    name: str
    cluster: Cluster
    defaults: Defaults

    @property
    def refresh_interval(self) -> float:
        return self.cluster.refresh_interval or self.defaults.refresh_interval

    @property
    def timeout(self) -> float:
        return self.cluster.timeout or self.defaults.timeout

    @property
    def production(self) -> bool:
        return self.env.is_production(self.environment)

    @functools.cached_property
    def key(self) -> str:
        # Cached: the pollers ask for it on every refresh of every target.
        return f"{self.environment}/{self.name}"

    @property
    def fencing(self) -> Fencing:
        """The cluster's [fencing], or the default: dbops fences its own sandbox's hosts; anywhere
        else the operator attests that the old primary is fenced."""
        if self.cluster.fencing is not None:
            return self.cluster.fencing
        return Fencing(methods=["sandbox"] if self.env.sandbox else ["manual"])

    @functools.cached_property
    def poll_units(self) -> list[Member]:
        """What the pollers poll, one loop each: every member on its own (PostgreSQL), or the
        whole cluster as one unit when its spec says so (a Redis deployment, whose nodes are
        discovered, so they are not all in the config; Kafka's brokers; Qdrant's nodes): that
        collect() reaches every node concurrently with a timeout per node."""
        from dbops.engine_spec import spec_of

        unit = spec_of(self.cluster.engine).poll_unit
        if unit is not None:
            seed = self.cluster.members[0]
            return [Member(name=unit, host=seed.host, port=seed.port)]
        return list(self.cluster.members)


# ---------------------------------------------------------------------------------------------
# Loading and error reporting


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_\-]+(?:\s*\.\s*(?:"[^"]*"|'[^']*'|[A-Za-z0-9_\-]+))*)\s*=""")


def _split_dotted(key: str) -> list[str]:
    parts = re.findall(r""""([^"]*)"|'([^']*)'|([A-Za-z0-9_\-]+)""", key)
    return [a or b or c for a, b, c in parts]


def locate_keys(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path (array items as str(index)) to the 1-based line where it is written.

    tomllib gives no positions, so this follows the table headers and `key =` lines itself;
    inline tables resolve to the line of the key that holds them.
    """
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    array_counts: dict[tuple[str, ...], int] = {}
    in_multiline: str | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if in_multiline:
            if in_multiline in raw:
                in_multiline = None
            continue
        m = _HEADER.match(raw)
        if m and not raw.strip().startswith("#"):
            path = tuple(_split_dotted(m.group(2)))
            if m.group(1) == "[[":
                idx = array_counts.get(path, -1) + 1
                array_counts[path] = idx
                table = path + (str(idx),)
            else:
                # resolve references into the current element of enclosing arrays of tables
                resolved: list[str] = []
                for part in path:
                    resolved.append(part)
                    if tuple(resolved) in array_counts:
                        resolved.append(str(array_counts[tuple(resolved)]))
                table = tuple(resolved)
            lines.setdefault(table, lineno)
            for i in range(1, len(table)):
                lines.setdefault(table[:i], lineno)
            continue
        k = _KEY.match(raw)
        if k:
            path = table + tuple(_split_dotted(k.group(1)))
            lines.setdefault(path, lineno)
            rest = raw[k.end():]
            for q in ('"""', "'''"):
                if rest.count(q) == 1:
                    in_multiline = q
    return lines


def _line_for(path: tuple[str, ...], lines: dict[tuple[str, ...], int]) -> int | None:
    for end in range(len(path), 0, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


def _model_at(path: tuple[str, ...]) -> type[Model] | None:
    """The model that owns the key at `path` (for did-you-mean on unknown keys)."""
    model: Any = Config
    i = 0
    while i < len(path) - 1:
        if not (isinstance(model, type) and issubclass(model, Model)):
            return None
        ann = model.hints().get(path[i])
        # Every Model subclass is a dataclass, but the base class is not, so its type cannot say so.
        declared: Field[Any] | None = getattr(model, "__dataclass_fields__", {}).get(path[i])
        if ann is None or (declared is not None and declared.metadata.get("sections")):
            ann = model.sections().get(path[i])  # an engine's own section
            if ann is None:
                return None
        origin = getattr(ann, "__origin__", None)
        args: tuple[Any, ...] = getattr(ann, "__args__", ())
        if origin in (dict, list):
            model = args[-1]
            i += 2
        else:
            # Optional[Model] -> Model
            model = next((a for a in args if isinstance(a, type) and issubclass(a, Model)), ann)
            i += 1
    return model if isinstance(model, type) and issubclass(model, Model) else None


def _suggest(path: tuple[str, ...]) -> str:
    owner = _model_at(path)
    if owner is None:
        return ""
    close = difflib.get_close_matches(str(path[-1]), owner.key_names(), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse(text: str, file: str = "<config>") -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise ConfigError([Problem(file, int(m.group(1)) if m else None, "", f"not valid TOML: {exc}")]) from None
    try:
        return Config.validate(raw)
    except Invalid as exc:
        lines = locate_keys(text)  # only a file with problems needs its keys' lines
        problems = []
        for err in exc.errors:
            message = err.message + (_suggest(err.loc) if err.kind == "unknown" else "")
            problems.append(Problem(file, _line_for(err.loc, lines), ".".join(err.loc), message))
        raise ConfigError(problems) from None


def load(path: str | os.PathLike[str]) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(str(p), None, "", "file does not exist")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(str(p), None, "", f"cannot be read: {exc}")]) from None
    return parse(text, str(p))


def user_config_path() -> Path:
    from platformdirs import user_config_dir

    return Path(user_config_dir("dbops")) / "dbops.toml"


def find_config(explicit: str | None = None) -> Path:
    """--config, then $DBOPS_CONFIG, then ./dbops.toml, then the user config dir."""
    if explicit:
        return Path(explicit)
    if os.environ.get("DBOPS_CONFIG"):
        return Path(os.environ["DBOPS_CONFIG"])
    local = Path("dbops.toml")
    if local.exists():
        return local
    user = user_config_path()
    if user.exists():
        return user
    raise ConfigError(
        [
            Problem(
                "dbops.toml",
                None,
                "",
                f"no configuration found: pass --config PATH, set DBOPS_CONFIG, or create ./dbops.toml or {user} "
                "(config.example.toml documents every key; `dbops sandbox up` writes one for a local sandbox)",
            )
        ]
    )


def state_dir() -> Path:
    """Audit log, journals and sandbox live here: $DBOPS_STATE_DIR or the user state dir."""
    if os.environ.get("DBOPS_STATE_DIR"):
        return Path(os.environ["DBOPS_STATE_DIR"]).expanduser()
    from platformdirs import user_state_dir

    return Path(user_state_dir("dbops"))
