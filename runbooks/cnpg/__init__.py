"""Runbooks for CloudNativePG clusters (a cluster whose [kubernetes] names a cnpg_cluster): promotion."""
