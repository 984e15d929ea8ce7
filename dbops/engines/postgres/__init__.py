"""PostgreSQL engine: adapter (collector and actions), PgBouncer reader, severity assessment.

Nothing is imported here: `dbops.engines.adapter_class("postgres")` loads the adapter module
on demand, and the UI imports `data` and `assess` without paying for asyncpg.
"""
