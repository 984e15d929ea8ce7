"""Neo4j: server, databases and transactions through the neo4j driver (imported only when a Neo4j cluster is configured)."""

from dbops.config import Neo4jOptions, Neo4jThresholds
from dbops.engine_spec import EngineSpec

SPEC = EngineSpec(
    kind="neo4j",
    title="Neo4j",
    default_port=7687,
    default_user="neo4j",
    adapter="dbops.engines.neo4j.adapter:Neo4jAdapter",
    assessor="dbops.engines.neo4j.assess",
    overview="dbops.engines.neo4j.overview:overview_row",
    options=Neo4jOptions,
    thresholds=Neo4jThresholds,
    # A drill creates one node per write, labelled :DbopsDrillProbe, and reads it back.
    probe="dbops.engines.neo4j.probe:Neo4jProbe",
    # What the timeline reports when it changes (EngineSpec.facts).
    facts="dbops.engines.neo4j.assess:facts",
)
