"""Qdrant: nodes over REST (qdrant-client and httpx), their raft state, collections and shard replicas."""
