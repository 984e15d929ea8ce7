"""Runbooks for PostgreSQL on AWS RDS: promoting a read replica."""
