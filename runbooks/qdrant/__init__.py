"""Runbooks for Qdrant: collection snapshots to S3 and back, recovering a Dead shard replica."""
