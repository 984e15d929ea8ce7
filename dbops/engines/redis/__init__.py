"""Redis: standalone, Sentinel and Cluster. `data`, `topology` and `assess` are pure Python;
`client`, `adapter` and `slots` import redis-py (lazily, when a Redis cluster is configured)."""
