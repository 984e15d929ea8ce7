"""PostgreSQL engine: adapter (collector and actions), PgBouncer reader, severity assessment.

Only the spec is defined here: the adapter (and asyncpg) loads when a cluster is first polled,
and the UI imports `data` and `assess` without paying for asyncpg. PostgreSQL's own settings
(thresholds, [pgbouncer], [pgbackrest]) sit at the cluster's top level, as they always have.
"""

from dbops.config import PostgresThresholds
from dbops.engine_spec import EngineSpec

SPEC = EngineSpec(
    kind="postgres",
    title="PostgreSQL",
    default_port=5432,
    default_user="postgres",
    adapter="dbops.engines.postgres.adapter:PostgresAdapter",
    assessor="dbops.engines.postgres.assess",
    overview="dbops.engines.postgres.summary:overview_row",
    history="dbops.engines.postgres.history:sample",
    thresholds=PostgresThresholds,
    probe="dbops.engines.postgres.probe:PostgresProbe",
    facts="dbops.engines.postgres.summary:facts",
)
