"""Runbooks for Redis: Cluster slot repair and moves, Sentinel failover."""
