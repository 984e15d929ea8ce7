"""Config models: dbops' own schema layer (dbops/schema.py + dbops/config.py) against msgspec.

    .venv/bin/pip install msgspec          # only for this comparison; dbops does not depend on it
    .venv/bin/python benchmarks/config_models.py

Not part of `make test` or `make bench`. Without msgspec installed it prints dbops' figures and
says that the comparison was skipped. MSGSPEC_MODELS below is dbops/config.py's models written as
msgspec Structs (same fields, defaults, limits and cross-field rules, the rules raising ValueError
in __post_init__); keep it in step with dbops/config.py when keys are added.

Prints, for each side:
  1. import time: `python -X importtime -c "import MODULE"`, the module's cumulative
     microseconds, median of BENCH_RUNS fresh interpreters (default 15);
  2. validation time of config.example.toml and of a generated config with 300 clusters:
     text -> validated models in-process, median of BENCH_LOOPS calls (default 200 / 20),
     with the TOML parse (tomllib, shared by both) shown on its own;
  3. the errors each reports for five bad configs.

Outcome when written (msgspec 0.23, Python 3.11): msgspec validates ~20x faster and imports
~14 ms sooner, but the TOML parse (tomllib for both) dominates either way, and its errors lose
what an on-call engineer needs (file:line, the environment and cluster by name, a did-you-mean,
every problem in one run). dbops keeps its own schema layer.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = int(os.environ.get("BENCH_RUNS", "15"))
LOOPS_SMALL = int(os.environ.get("BENCH_LOOPS", "200"))
LOOPS_LARGE = max(5, LOOPS_SMALL // 10)

try:
    import msgspec
except ImportError:
    msgspec = None

MSGSPEC_MODELS = r'''"""dbops' config models (dbops/config.py) as msgspec Structs, for comparison only.

Same fields, defaults, limits and cross-field rules; rules raise ValueError from __post_init__
(msgspec turns that into a ValidationError carrying the path, and stops there).
"""

from __future__ import annotations

import tomllib
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct, field
from msgspec.structs import force_setattr, replace

Port = Annotated[int, Meta(ge=1, le=65535)]
Positive = Annotated[float, Meta(gt=0)]
DEFAULT_PORTS = {"postgres": 5432, "redis": 6379, "kafka": 9092, "neo4j": 7687, "qdrant": 6333}
DEFAULT_USERS = {"postgres": "postgres", "neo4j": "neo4j"}
_OPTS = dict(frozen=True, forbid_unknown_fields=True, kw_only=True)


def _order(pairs):
    for name, warn, crit in pairs:
        if warn > crit:
            raise ValueError(f"{name}_warn ({warn:g}) is above {name}_crit ({crit:g})")


class SecretRef(Struct, **_OPTS):
    env: str | None = None
    file: str | None = None
    value: str | None = None

    def __post_init__(self):
        if sum(x is not None for x in (self.env, self.file, self.value)) != 1:
            raise ValueError("give exactly one of env, file or value")


class TLS(Struct, **_OPTS):
    mode: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


class PostgresThresholds(Struct, **_OPTS):
    lag_bytes_warn: int = 16 * 1024 * 1024
    lag_bytes_crit: int = 100 * 1024 * 1024
    lag_seconds_warn: float = 10.0
    lag_seconds_crit: float = 60.0
    connections_pct_warn: float = 80.0
    connections_pct_crit: float = 95.0
    cache_hit_ratio_warn: float = 99.0
    archiver_failures_warn: int = 0
    xid_age_warn: int = 500_000_000
    xid_age_crit: int = 1_500_000_000
    inactive_slot_retained_bytes_warn: int = 1024 * 1024 * 1024
    long_query_seconds: float = 60.0
    idle_in_transaction_seconds_warn: float = 60.0
    idle_in_transaction_seconds_crit: float = 600.0

    def __post_init__(self):
        _order([("lag_bytes", self.lag_bytes_warn, self.lag_bytes_crit),
                ("lag_seconds", self.lag_seconds_warn, self.lag_seconds_crit),
                ("connections_pct", self.connections_pct_warn, self.connections_pct_crit),
                ("xid_age", self.xid_age_warn, self.xid_age_crit),
                ("idle_in_transaction_seconds", self.idle_in_transaction_seconds_warn, self.idle_in_transaction_seconds_crit)])


class Member(Struct, **_OPTS):
    name: str
    host: str
    port: Port | None = None
    role: Literal["primary", "replica", "any"] = "any"
    application_name: str | None = None


class PgBouncer(Struct, **_OPTS):
    host: str
    port: Port = 6432
    user: str = "pgbouncer"
    password: SecretRef | None = None


class PgBackRest(Struct, **_OPTS):
    stanza: str
    config: str = "/etc/pgbackrest/pgbackrest.conf"
    os_user: str | None = "postgres"
    bin: str = "pgbackrest"
    restore_root: str = "/var/tmp/dbops-restores"
    pg_bindir: str | None = None


class AwsLocation(Struct, **_OPTS):
    region: str = "us-east-1"
    endpoint_url: str | None = None
    access_key_id: SecretRef | None = None
    secret_access_key: SecretRef | None = None

    def __post_init__(self):
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("give both access_key_id and secret_access_key, or neither")


class S3Location(AwsLocation, **_OPTS):
    bucket: str
    prefix: str = ""


class Backups(Struct, **_OPTS):
    s3: S3Location | None = None
    max_age_seconds: Positive = 26 * 3600.0
    rpo_seconds: Positive = 900.0
    refresh_seconds: Annotated[float, Meta(ge=10)] = 300.0


class RedisThresholds(Struct, **_OPTS):
    memory_pct_warn: float = 90.0
    memory_pct_crit: float = 98.0
    evictions_warn: int = 0
    hit_rate_pct_warn: float = 95.0
    hit_rate_min_lookups: int = 100
    fragmentation_warn: float = 1.5
    lag_bytes_warn: int = 1024 * 1024
    lag_bytes_crit: int = 64 * 1024 * 1024
    last_ack_seconds_warn: float = 10.0
    last_ack_seconds_crit: float = 60.0

    def __post_init__(self):
        _order([("memory_pct", self.memory_pct_warn, self.memory_pct_crit),
                ("lag_bytes", self.lag_bytes_warn, self.lag_bytes_crit),
                ("last_ack_seconds", self.last_ack_seconds_warn, self.last_ack_seconds_crit)])


class RedisOptions(Struct, **_OPTS):
    mode: Literal["standalone", "sentinel", "cluster"] = "standalone"
    master_name: str | None = None
    sentinels: list[Member] = field(default_factory=list)
    username: str | None = None
    sentinel_password: SecretRef | None = None
    thresholds: RedisThresholds = field(default_factory=RedisThresholds)

    def __post_init__(self):
        if self.mode == "sentinel":
            if not self.master_name:
                raise ValueError("sentinel mode needs the master name the sentinels monitor")
            if not self.sentinels:
                raise ValueError("sentinel mode needs at least one sentinel address")
        elif self.sentinels or self.master_name:
            raise ValueError('sentinels and master_name are for mode = "sentinel"')


class KafkaThresholds(Struct, **_OPTS):
    lag_window: Annotated[int, Meta(ge=3, le=1000)] = 10
    lag_seconds_warn: float = 60.0
    lag_seconds_crit: float = 600.0

    def __post_init__(self):
        _order([("lag_seconds", self.lag_seconds_warn, self.lag_seconds_crit)])


class KafkaOptions(Struct, **_OPTS):
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    groups: list[str] = field(default_factory=list)
    config_refresh_seconds: Positive = 60.0
    thresholds: KafkaThresholds = field(default_factory=KafkaThresholds)


class Neo4jThresholds(Struct, **_OPTS):
    transaction_ms_warn: float = 500.0
    transaction_ms_crit: float = 60_000.0

    def __post_init__(self):
        _order([("transaction_ms", self.transaction_ms_warn, self.transaction_ms_crit)])


class Neo4jOptions(Struct, **_OPTS):
    thresholds: Neo4jThresholds = field(default_factory=Neo4jThresholds)


class QdrantThresholds(Struct, **_OPTS):
    latency_ms_warn: float = 500.0
    latency_ms_crit: float = 5_000.0

    def __post_init__(self):
        _order([("latency_ms", self.latency_ms_warn, self.latency_ms_crit)])


class QdrantOptions(Struct, **_OPTS):
    manage_api_key: SecretRef | None = None
    thresholds: QdrantThresholds = field(default_factory=QdrantThresholds)


class KubernetesRef(Struct, **_OPTS):
    namespace: str
    selector: str
    kubeconfig: str | None = None
    context: str | None = None
    backup_selector: str | None = None
    cnpg_cluster: str | None = None
    events_seconds: Positive = 3600.0


class RdsRef(Struct, **_OPTS):
    instance: str
    aws: AwsLocation = field(default_factory=AwsLocation)


class ElastiCacheRef(Struct, **_OPTS):
    replication_group: str
    aws: AwsLocation = field(default_factory=AwsLocation)


class Fencing(Struct, **_OPTS):
    methods: Annotated[list[Literal["pgbouncer", "kubernetes", "command", "sandbox", "manual"]], Meta(min_length=1)] = field(
        default_factory=lambda: ["manual"])
    command: str | None = None
    command_timeout: Positive = 60.0

    def __post_init__(self):
        if "command" in self.methods and not (self.command or "").strip():
            raise ValueError('methods lists "command": give the command to run')
        dupes = sorted({m for m in self.methods if self.methods.count(m) > 1})
        if dupes:
            raise ValueError(f"listed twice: {', '.join(dupes)}")


class Cluster(Struct, **_OPTS):
    engine: Literal["postgres", "redis", "kafka", "neo4j", "qdrant"]
    members: Annotated[list[Member], Meta(min_length=1)]
    database: str = "postgres"
    user: str | None = None
    password: SecretRef | None = None
    tls: TLS = field(default_factory=TLS)
    refresh_interval: Positive | None = None
    timeout: Positive | None = None
    thresholds: PostgresThresholds = field(default_factory=PostgresThresholds)
    pgbouncer: PgBouncer | None = None
    pgbackrest: PgBackRest | None = None
    backups: Backups = field(default_factory=Backups)
    redis: RedisOptions | None = None
    kafka: KafkaOptions | None = None
    neo4j: Neo4jOptions | None = None
    qdrant: QdrantOptions | None = None
    kubernetes: KubernetesRef | None = None
    rds: RdsRef | None = None
    elasticache: ElastiCacheRef | None = None
    fencing: Fencing | None = None
    description: str = ""

    def __post_init__(self):
        port = DEFAULT_PORTS[self.engine]
        force_setattr(self, "members", [m if m.port is not None else replace(m, port=port) for m in self.members])
        if self.user is None and self.engine in DEFAULT_USERS:
            force_setattr(self, "user", DEFAULT_USERS[self.engine])
        if self.engine == "kafka" and self.kafka is None:
            force_setattr(self, "kafka", KafkaOptions())
        if self.engine == "neo4j" and self.neo4j is None:
            force_setattr(self, "neo4j", Neo4jOptions())
        if self.engine == "qdrant" and self.qdrant is None:
            force_setattr(self, "qdrant", QdrantOptions())
        if self.redis is not None:
            sentinels = [m if m.port is not None else replace(m, port=26379) for m in self.redis.sentinels]
            force_setattr(self, "redis", replace(self.redis, sentinels=sentinels))
        elif self.engine == "redis":
            force_setattr(self, "redis", RedisOptions())
        names = [m.name for m in [*self.members, *(self.redis.sentinels if self.redis else [])]]
        for n in sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"member name {n!r} is used twice")
        for section in ("redis", "kafka", "neo4j", "qdrant"):
            if self.engine != section and getattr(self, section) is not None:
                raise ValueError(f"a [{section}] section on an engine = {self.engine!r} cluster")
        if self.rds is not None and self.engine != "postgres":
            raise ValueError('an [rds] section belongs on an engine = "postgres" cluster')
        if self.elasticache is not None and self.engine != "redis":
            raise ValueError('an [elasticache] section belongs on an engine = "redis" cluster')
        if self.fencing is not None and self.engine != "postgres":
            raise ValueError('a [fencing] section belongs on an engine = "postgres" cluster')
        if self.fencing is not None and "pgbouncer" in self.fencing.methods and self.pgbouncer is None:
            raise ValueError('the "pgbouncer" fence needs the cluster\'s [pgbouncer]')
        if self.fencing is not None and "kubernetes" in self.fencing.methods and self.kubernetes is None:
            raise ValueError('the "kubernetes" fence needs the cluster\'s [kubernetes]')
        if self.engine == "kafka" and self.user is not None and self.password is None:
            raise ValueError("SASL (a `user` on a Kafka cluster) needs a password")


class Environment(Struct, **_OPTS):
    mode: Literal["read-only", "operator"] = "read-only"
    production: bool | None = None
    sandbox: bool = False
    approvals: Annotated[int, Meta(ge=1, le=2)] = 1
    approval_ttl_seconds: Annotated[int, Meta(ge=60)] = 1800
    clusters: dict[str, Cluster] = field(default_factory=dict)


class Defaults(Struct, **_OPTS):
    refresh_interval: Positive = 2.0
    timeout: Positive = 3.0
    history_seconds: Annotated[int, Meta(ge=60)] = 3600


class AuditShipping(Struct, **_OPTS):
    s3: S3Location
    every_seconds: Positive = 900.0
    retain_days: Annotated[int, Meta(ge=1)] = 365


class AuditOptions(Struct, **_OPTS):
    ship: AuditShipping | None = None


class LeaseLocks(Struct, **_OPTS):
    namespace: str
    kubeconfig: str | None = None
    context: str | None = None
    duration_seconds: Annotated[int, Meta(ge=10)] = 60


class CoordinationDb(Struct, **_OPTS):
    host: str
    port: Port = 5432
    database: str = "dbops"
    user: str = "dbops"
    password: SecretRef | None = None
    tls: TLS = field(default_factory=TLS)
    timeout: Positive = 5.0


class Locks(Struct, **_OPTS):
    kubernetes: LeaseLocks | None = None
    postgres: CoordinationDb | None = None


class Config(Struct, **_OPTS):
    defaults: Defaults = field(default_factory=Defaults)
    operator: str | None = None
    runbook_dirs: list[str] = field(default_factory=list)
    environments: dict[str, Environment] = field(default_factory=dict)
    audit: AuditOptions = field(default_factory=AuditOptions)
    locks: Locks = field(default_factory=Locks)

    def __post_init__(self):
        # The literal-credential and approvals-need-[locks.postgres] rules (abridged to the
        # cluster password and approvals; dbops checks eight places).
        for env_name, env in self.environments.items():
            if env.approvals > 1 and self.locks.postgres is None:
                raise ValueError("approvals = 2 needs [locks.postgres]")
            if env.sandbox:
                continue
            for cluster in env.clusters.values():
                if cluster.password is not None and cluster.password.value is not None:
                    raise ValueError("a literal credential is only allowed in a sandbox environment")


def parse(text: str) -> Config:
    return msgspec.convert(tomllib.loads(text), Config)
'''


def import_us(module: str, env: dict[str, str]) -> float:
    """Median cumulative import time of `module` in microseconds, each run in a fresh interpreter."""
    samples = []
    for _ in range(RUNS):
        out = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                             env=env, capture_output=True, text=True, check=True).stderr
        # "import time: self [us] | cumulative | imported package"; the module's own line is the last one naming it.
        line = [ln for ln in out.splitlines() if ln.rstrip().endswith(f"| {module}")][-1]
        samples.append(float(line.split("|")[1]))
    return statistics.median(samples)


def median_ms(loops: int, fn, *args) -> float:
    fn(*args)  # warm: model hints, msgspec's type cache
    samples = []
    for _ in range(loops):
        start = time.perf_counter()
        fn(*args)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def generated_config(clusters: int = 300) -> str:
    """clusters PostgreSQL clusters over three environments, each with what a real one carries."""
    out = ["[defaults]\nrefresh_interval = 2.0\n", '[locks.postgres]\nhost = "coord"\npassword = { env = "COORD_PW" }\n']
    for env in ("production", "staging", "dev"):
        out.append(f'[environments.{env}]\nmode = "operator"\napprovals = 2\n')
    for i in range(clusters):
        env = ("production", "staging", "dev")[i % 3]
        t = f"environments.{env}.clusters.db-{i:03d}"
        out.append(textwrap.dedent(f'''
            [{t}]
            engine = "postgres"
            description = "cluster {i}"
            user = "dbops_monitor"
            password = {{ env = "PW_{i}" }}
            tls = {{ mode = "verify-full", ca_file = "/etc/ssl/ca-{i}.pem" }}
            pgbouncer = {{ host = "10.{i // 250}.{i % 250}.5", port = 6432, password = {{ file = "/etc/dbops/pgb.pw" }} }}
            [{t}.thresholds]
            lag_bytes_warn = 16777216
            lag_bytes_crit = 104857600
            xid_age_warn = 500000000
            [{t}.backups]
            s3 = {{ bucket = "backups", prefix = "db-{i:03d}/", region = "eu-west-1" }}
            [{t}.fencing]
            methods = ["pgbouncer", "manual"]
        '''))
        for m in range(3):
            out.append(f'[[{t}.members]]\nname = "m{m}"\nhost = "10.{i // 250}.{i % 250}.{10 + m}"\n'
                       f'role = "{"primary" if m == 0 else "replica"}"\n')
    return "\n".join(out)


BASE = """\
[locks.postgres]
host = "coord.internal"
password = { env = "COORD_PW" }

[environments.prod]
mode = "operator"

[environments.prod.clusters.orders-db]
engine = "postgres"
user = "dbops_monitor"
password = { env = "ORDERS_PW" }
refresh_interval = 2.0

[[environments.prod.clusters.orders-db.members]]
name = "orders-1"
host = "10.0.1.10"
port = 5432
role = "primary"

[[environments.prod.clusters.orders-db.members]]
name = "orders-2"
host = "10.0.1.11"
role = "replica"
"""

BAD = [
    ("unknown key with a typo (prot for port)", BASE.replace("port = 5432", "prot = 5432")),
    ("wrong type (port as a string)", BASE.replace("port = 5432", 'port = "5432"')),
    ("value out of range (port 70000)", BASE.replace("port = 5432", "port = 70000")),
    ("missing required key (second member's host)", BASE.replace('host = "10.0.1.11"\n', "")),
    ("two problems at once (refresh_intervall typo + approvals = 3)",
     BASE.replace("refresh_interval = 2.0", "refresh_intervall = 2.0")
         .replace('mode = "operator"', 'mode = "operator"\napprovals = 3')),
]


def main() -> None:
    import dbops.config as dbops_config

    example = (ROOT / "config.example.toml").read_text()
    large = generated_config()
    env = dict(os.environ)
    print(f"python {sys.version.split()[0]}, dbops.config from {dbops_config.__file__}")
    print(f"msgspec {msgspec.__version__}" if msgspec else
          "msgspec is NOT installed: only dbops' figures are shown (pip install msgspec for the comparison)")
    tmp = tempfile.mkdtemp(prefix="dbops-msgspec-")
    ms = None
    if msgspec:
        Path(tmp, "dbops_msgspec_models.py").write_text(MSGSPEC_MODELS)
        env["PYTHONPATH"] = os.pathsep.join([tmp, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        sys.path.insert(0, tmp)
        import dbops_msgspec_models as ms

    print(f"\n1. import time, cumulative, median of {RUNS} fresh interpreters")
    print(f"   dbops.config (+ dbops.schema)     {import_us('dbops.config', env) / 1000:7.2f} ms")
    if ms:
        print(f"   msgspec models (+ msgspec)        {import_us('dbops_msgspec_models', env) / 1000:7.2f} ms")
        print(f"   msgspec alone                     {import_us('msgspec', env) / 1000:7.2f} ms")

    print("\n2. validation, text -> models, median ms per call")
    for label, text, loops in (("config.example.toml", example, LOOPS_SMALL), ("300 generated clusters", large, LOOPS_LARGE)):
        print(f"   {label} ({len(text.splitlines())} lines, {loops} calls)")
        raw = tomllib.loads(text)
        try:
            dbops_config.parse(text)
        except dbops_config.ConfigError as exc:
            print(f"     dbops rejects it, skipped:\n{textwrap.indent(str(exc), '       ')}")
            continue
        print(f"     tomllib.loads alone               {median_ms(loops, tomllib.loads, text):8.3f}")
        print(f"     dbops parse() (toml+lines+models) {median_ms(loops, dbops_config.parse, text):8.3f}")
        print(f"       of which locate_keys()          {median_ms(loops, dbops_config.locate_keys, text):8.3f}")
        print(f"       of which Config.validate()      {median_ms(loops, dbops_config.Config.validate, raw):8.3f}")
        if ms:
            try:
                ms.parse(text)
            except msgspec.ValidationError as exc:
                print(f"     msgspec model rejects it ({exc}): bring MSGSPEC_MODELS up to date with dbops/config.py")
                continue
            print(f"     msgspec tomllib+convert()         {median_ms(loops, ms.parse, text):8.3f}")
            print(f"       of which msgspec.convert()      {median_ms(loops, msgspec.convert, raw, ms.Config):8.3f}")

    print("\n3. errors for five bad configs (file bad.toml)")
    for label, text in BAD:
        print(f"\n   -- {label}")
        try:
            dbops_config.parse(text, "bad.toml")
            print("   dbops:   (accepted)")
        except dbops_config.ConfigError as exc:
            print(f"   dbops:   {len(exc.problems)} problem(s)")
            for p in exc.problems:
                print(f"            {p}")
        if ms:
            try:
                ms.parse(text)
                print("   msgspec: (accepted)")
            except msgspec.ValidationError as exc:
                print(f"   msgspec: 1 problem (it stops at the first)\n            {exc}")
    if ms:
        print("\n   msgspec.toml.decode(text, type=Config) reports the same messages (it parses with tomllib too):")
        try:
            msgspec.toml.decode(BAD[0][1], type=ms.Config)
        except msgspec.ValidationError as exc:
            print(f"            {exc}")
        print("   msgspec gives no file:line either way, names a table's keys (environment, cluster) only as [...],\n"
              "   and reports an unknown key at the table holding it, without a did-you-mean.")


if __name__ == "__main__":
    main()
