"""Engine registry: built-ins by name, plus the `dbops.engines` entry-point group.

Adapters are imported only when a configured cluster needs them, so an unused engine's client
library never costs start-up time.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dbops.engines.base import Adapter

BUILTIN = {
    "postgres": "dbops.engines.postgres.adapter:PostgresAdapter",
    "redis": "dbops.engines.redis.adapter:RedisAdapter",
    "kafka": "dbops.engines.kafka.adapter:KafkaAdapter",
    "neo4j": "dbops.engines.neo4j.adapter:Neo4jAdapter",
    "qdrant": "dbops.engines.qdrant.adapter:QdrantAdapter",
}


class UnknownEngine(Exception):
    pass


def adapter_class(kind: str) -> "type[Adapter]":
    target = BUILTIN.get(kind)
    if target is None:
        for ep in entry_points(group="dbops.engines"):
            if ep.name == kind:
                return ep.load()
        raise UnknownEngine(f"no engine adapter named {kind!r}")
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
