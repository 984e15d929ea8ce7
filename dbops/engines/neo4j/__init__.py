"""Neo4j: server, databases and transactions through the neo4j driver (imported only when a Neo4j cluster is configured)."""
