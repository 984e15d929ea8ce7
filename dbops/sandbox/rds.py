"""AWS RDS for the sandbox: on the S3 sandbox's moto server (moto serves every AWS service on one
port), a PostgreSQL DB instance ``sandbox-pg-primary`` with automated backups, a read replica
``sandbox-pg-replica`` and one manual snapshot, so that the sandbox-pg cluster's [rds] section
has something to show on the AWS pane and rds.promote-read-replica has a replica to promote.

They describe moto's bookkeeping only: the sandbox's real PostgreSQL (pg1..pg3) stays what the
Postgres pane connects to. moto keeps them in memory: they live as long as the server, and are
created again whenever `dbops sandbox up` starts a new one.

What is recorded in the s3 engine's state under "rds" (the postgres sandbox's config writer
reads it): {"primary": "sandbox-pg-primary", "replica": "sandbox-pg-replica"}.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

PRIMARY = "sandbox-pg-primary"
REPLICA = "sandbox-pg-replica"
SNAPSHOT = "sandbox-pg-primary-manual"
INSTANCE_CLASS = "db.t3.micro"
ENGINE_VERSION = "15.4"
BACKUP_RETENTION_DAYS = 7


def _client(state: dict[str, Any]) -> Any:
    import boto3.session
    from botocore.config import Config

    return boto3.session.Session().client(
        "rds", region_name=state["region"], endpoint_url=state["endpoint_url"],
        aws_access_key_id=state["access_key_id"], aws_secret_access_key=state["secret_access_key"],
        config=Config(connect_timeout=5, read_timeout=20, retries={"mode": "standard", "total_max_attempts": 2}),
    )


def _exists(rds: Any, ident: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        rds.describe_db_instances(DBInstanceIdentifier=ident)
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("DBInstanceNotFound", "DBInstanceNotFoundFault"):
            return False
        raise


def seed(state: dict[str, Any], progress: Callable[[str], None]) -> dict[str, str]:
    """Create the primary, its replica and a manual snapshot unless they exist; what to record.
    botocore's errors propagate (the caller turns them into a SandboxError)."""
    rds = _client(state)
    if not _exists(rds, PRIMARY):
        progress(f"create RDS instance {PRIMARY} (moto) with a read replica {REPLICA}")
        rds.create_db_instance(
            DBInstanceIdentifier=PRIMARY, DBInstanceClass=INSTANCE_CLASS, Engine="postgres",
            EngineVersion=ENGINE_VERSION, AllocatedStorage=20, MasterUsername="postgres",
            # moto requires one and never uses it; nothing connects to this instance.
            MasterUserPassword=secrets.token_hex(16), BackupRetentionPeriod=BACKUP_RETENTION_DAYS,
            MultiAZ=True, DBName="app",
        )
        rds.create_db_snapshot(DBInstanceIdentifier=PRIMARY, DBSnapshotIdentifier=SNAPSHOT)
    if not _exists(rds, REPLICA):
        rds.create_db_instance_read_replica(DBInstanceIdentifier=REPLICA, SourceDBInstanceIdentifier=PRIMARY,
                                            DBInstanceClass=INSTANCE_CLASS)
    return {"primary": PRIMARY, "replica": REPLICA}
