"""Qdrant: nodes over REST (qdrant-client and httpx), their raft state, collections and shard replicas."""

from dbops.config import QdrantOptions, QdrantThresholds
from dbops.engine_spec import EngineSpec

SPEC = EngineSpec(
    kind="qdrant",
    title="Qdrant",
    default_port=6333,
    default_user=None,  # API keys, not users
    adapter="dbops.engines.qdrant.adapter:QdrantAdapter",
    assessor="dbops.engines.qdrant.assess",
    overview="dbops.engines.qdrant.overview:overview_row",
    options=QdrantOptions,
    thresholds=QdrantThresholds,
    # Every node answers from its own point of view: one refresh asks them all at once, each
    # under its own time bound, and judges them together.
    poll_unit="nodes",
    # A drill upserts points into a replicated collection of its own and reads them back.
    probe="dbops.engines.qdrant.probe:QdrantProbe",
    # What the timeline reports when it changes (EngineSpec.facts).
    facts="dbops.engines.qdrant.assess:facts",
)
