"""Redis: standalone, Sentinel and Cluster. `data`, `topology` and `assess` are pure Python;
`client`, `adapter` and `slots` import redis-py (lazily, when a Redis cluster is configured)."""

from dbops.config import RedisOptions, RedisThresholds
from dbops.engine_spec import EngineSpec

SPEC = EngineSpec(
    kind="redis",
    title="Redis",
    default_port=6379,
    default_user=None,  # Redis logs in only when redis.username (ACL) is given
    adapter="dbops.engines.redis.adapter:RedisAdapter",
    assessor="dbops.engines.redis.assess",
    options=RedisOptions,
    thresholds=RedisThresholds,
    # A deployment's nodes are discovered (not all in the config): one collect() reaches every
    # node concurrently, each under its own timeout.
    poll_unit="nodes",
    # A drill writes stream entries to every master shard (Sentinel, standalone: the master).
    probe="dbops.engines.redis.probe:RedisProbe",
    # What the timeline reports when it changes (EngineSpec.facts).
    facts="dbops.engines.redis.assess:facts",
)
