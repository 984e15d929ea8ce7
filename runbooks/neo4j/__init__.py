"""Runbooks for Neo4j: terminate transactions, guided restore."""
