"""The engines, one package each (postgres, redis, kafka, neo4j, qdrant): adapter, client, data,
assessment and overview row. Each package's `__init__` exports its EngineSpec
(dbops.engine_spec), registered through the `dbops.engines` entry-point group. Engines never
import each other."""
