"""The AWS side of every cluster that has one: an [rds] section (dbops.platform.rds) or an
[elasticache] section (dbops.platform.elasticache), read as one view each.

The AWS pane and `dbops check` both read with collect_one/collect_all, so they judge alike (each
view carries its own findings and severity).
"""

from __future__ import annotations

import asyncio
from typing import Any

from dbops.config import ClusterRef
from dbops.platform.backups import in_daemon_thread

MAX_READERS = 4  # clusters read at once


def aws_refs(refs: list[ClusterRef]) -> list[ClusterRef]:
    return [r for r in refs if r.cluster.rds is not None or r.cluster.elasticache is not None]


def collect_one(ref: ClusterRef) -> Any:
    """Blocking: the cluster's RdsView (an [rds] section) or CacheView (an [elasticache] one).
    Never raises for what AWS says: a failed read is the view's `error` or one of its `notes`."""
    if ref.cluster.rds is not None:
        from dbops.platform import rds

        return rds.collect(ref)
    from dbops.platform import elasticache

    return elasticache.collect(ref)


async def collect_all(refs: list[ClusterRef]) -> list[Any]:
    """Every cluster's view, in config order. Each cluster is read in a daemon thread of its own
    (at most MAX_READERS at once), so a dead endpoint of one account does not hold up the others,
    and a read stuck in boto3's timeouts and retries never holds the console open after `q` (the
    default executor's threads, which thread workers use, are joined at exit)."""
    gate = asyncio.Semaphore(MAX_READERS)

    async def one(ref: ClusterRef) -> Any:
        async with gate:
            return await in_daemon_thread(collect_one, ref)

    return list(await asyncio.gather(*(one(r) for r in refs)))
