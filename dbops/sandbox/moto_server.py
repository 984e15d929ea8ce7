"""moto's server as the sandbox runs it (``python -m dbops.sandbox.moto_server -H HOST -p PORT``):
moto's own server, with one correction to its RDS model so that the sandbox behaves as AWS does.

moto 5.2.5 (the newest release) handles PromoteReadReplica by clearing an internal flag only: the
promoted instance keeps answering ReadReplicaSourceDBInstanceIdentifier, and its former source
keeps listing it in ReadReplicaDBInstanceIdentifiers. On AWS a promoted replica is a standalone
instance: neither field names the other any more ("the read replica ... is promoted to a
standalone DB instance", RDS user guide, Promoting a read replica). rds.promote-read-replica
verifies exactly that, so without the correction it could never pass against the sandbox.

The correction detaches the replica from its source after moto's own promotion, and only when
moto left them attached: once moto does this itself, it does nothing. It changes nothing but this
one call; everything else is moto's. Sandbox and tests only: dbops itself never imports this.
"""

from __future__ import annotations

import sys
from typing import Any


def _detach_promoted_replicas() -> None:
    from moto.rds.models import RDSBackend

    promote = RDSBackend.promote_read_replica

    def promote_read_replica(self: Any, db_kwargs: dict[str, Any]) -> Any:
        database = promote(self, db_kwargs)
        source_id = getattr(database, "source_db_instance_identifier", None)
        if source_id and not getattr(database, "is_replica", True):
            source = self.databases.get(source_id)
            if source is not None and database.db_instance_identifier in source.replicas:
                source.remove_replica(database)
            database.source_db_instance_identifier = None
        return database

    RDSBackend.promote_read_replica = promote_read_replica  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    _detach_promoted_replicas()
    from moto.server import main as moto_main

    moto_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
