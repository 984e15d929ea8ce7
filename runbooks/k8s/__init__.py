"""Runbooks for what surrounds a cluster on Kubernetes (any engine with [kubernetes]): a backup Job on demand."""
