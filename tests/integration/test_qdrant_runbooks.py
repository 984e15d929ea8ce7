"""The Qdrant runbooks through `dbops runbook run`, against the fake Qdrant (validation on) and
moto's S3 server over real HTTP: a Dead replica recovered to Active; a collection snapshotted on
every node to S3, dropped, and restored from S3 with its points and alias; a read-only key
refused with a clear message; and no key, S3 secret or presigned signature in any output or
audit record."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbops.config import S3Location
from dbops.model import Severity
from dbops.platform import s3
from dbops.runbook.executor import ExitCode
from dbops.sandbox.s3 import S3Sandbox
from tests.fakes.qdrant import API_KEY, READ_ONLY_API_KEY, fake_qdrant

from .qdrant_env import NAME, Env


@pytest.fixture(scope="module")
def s3_location() -> Iterator[S3Location]:
    state_dir = Path(tempfile.mkdtemp(prefix="dbops-it-qdrant-s3-"))
    sb = S3Sandbox(state_dir / "sandbox")
    ok = False
    try:
        sb.up()
        yield sb.location()
        ok = True
    finally:
        try:
            sb.down()
        finally:
            # Keep the directory (moto.log) when something failed.
            if ok:
                shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def env(tmp_path: Path, s3_location: S3Location) -> Iterator[Env]:
    location = dataclasses.replace(s3_location, prefix=f"it-{uuid.uuid4().hex[:12]}/")
    with fake_qdrant(transfer_seconds=0.5) as cluster:
        yield Env(cluster, tmp_path, tmp_path / "dbops.toml").write(READ_ONLY_API_KEY, manage=API_KEY, s3=location)


def secrets_of(env: Env) -> list[str]:
    loc = env.ref().cluster.backups.s3
    return [API_KEY, READ_ONLY_API_KEY, loc.secret_access_key.value, "X-Amz-Signature", "Signature="]


def assert_nothing_secret(env: Env, *outputs: str) -> None:
    text = "\n".join(outputs) + env.audit_text()
    for secret in secrets_of(env):
        assert secret not in text, f"{secret[:6]}… appears in the output or the audit log"


def run_id_of(stdout: str) -> str:
    return stdout.strip().splitlines()[-1].split()[-1]


def test_recover_dead_replica_brings_it_back_to_active(env: Env) -> None:
    ids = env.cluster.peer_ids
    env.cluster.set_replica_state("docs", 0, ids[1], "Dead")
    assert env.health().severity is Severity.CRIT

    r = env.dbops("runbook", "run", "qdrant.recover-dead-replica", "--cluster", NAME, "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    # The plan named the transfer, from the Active replica (shard 0 lives on q1 and q2).
    assert f"replicate_shard: {{shard_id: 0, from_peer_id: {ids[0]}, to_peer_id: {ids[1]}}}" in r.stdout
    assert "docs/0 on q2 is Dead: copy from q1" in r.stdout
    assert "docs/0 on q2 Active with 100 points, as on q1" in r.stdout, r.stdout
    after = env.health()
    assert after.severity is Severity.OK, after.problems
    mine = [(x["step"], x["phase"], x.get("outcome")) for x in env.audit() if x.get("run_id") == run_id_of(r.stdout)]
    assert mine == [("replicate", "intent", None), ("replicate", "result", "ok")]
    assert_nothing_secret(env, r.stdout, r.stderr)

    again = env.dbops("runbook", "run", "qdrant.recover-dead-replica", "--cluster", NAME, "--yes")
    assert again.returncode == 0 and "no Dead replica: nothing to do" in again.stdout, again.stdout + again.stderr


def test_snapshot_to_s3_then_restore_round_trips_a_dropped_collection(env: Env) -> None:
    made = env.dbops("runbook", "run", "qdrant.snapshot-to-s3", "--cluster", NAME, "--param", "collection=docs", "--yes")
    assert made.returncode == 0, made.stdout + made.stderr
    assert "docs: 300 points, aliases docs-live" in made.stdout
    loc = env.ref().cluster.backups.s3
    manifests = [m for m in s3.list_backups(loc, "qdrant-snapshot")]
    assert sorted(m.meta["node"] for m in manifests) == ["q1", "q2", "q3"]
    ids = env.cluster.peer_ids
    for m in manifests:
        assert m.meta["cluster"] == NAME and m.meta["collection"] == "docs" and m.meta["points"] == "300"
        assert m.meta["peer_id"] == str(ids[int(m.meta["node"][1]) - 1]) and m.meta["aliases"] == "docs-live"
        assert m.meta["snapshot"].startswith(f"docs-{m.meta['peer_id']}-") and m.meta["snapshot"].endswith(".snapshot")
    # The node-local snapshots were deleted once the S3 copies were verified.
    assert "deleted the node-local" in made.stdout

    # Lose the collection (and with it its alias), as an accident would.
    env.cluster.state.delete_collection("docs")
    assert "docs" not in env.health().members[0].snapshot.data.collection_names()

    refused = env.dbops("runbook", "run", "qdrant.restore-from-s3", "--cluster", NAME, "--param", "collection=docs", "--yes")
    assert refused.returncode != 0 and "cluster" in (refused.stdout + refused.stderr).lower()
    assert "docs" not in env.health().members[0].snapshot.data.collection_names()  # nothing ran without the name

    r = env.dbops("runbook", "run", "qdrant.restore-from-s3", "--cluster", NAME, "--param", "collection=docs",
                  "--yes", "--confirm", NAME)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"set {manifests[0].meta['run_id']}" in r.stdout
    assert "priority: snapshot, checksum: " in r.stdout and "<presigned GET of s3://" in r.stdout
    assert "docs: 300 points, as at snapshot time; green on every node" in r.stdout
    assert "aliases docs-live -> docs" in r.stdout
    h = env.health()
    assert h.severity is Severity.OK, h.problems
    assert any(m.message == "collection docs is green (300 points, 6/6 replicas Active)" for m in h.metrics)
    state = env.cluster.describe()
    assert state["aliases"] == {"docs-live": "docs"} and state["collections"]["docs"]["points"] == 300
    steps = [(x["step"], x["phase"], x.get("outcome")) for x in env.audit() if x.get("run_id") == run_id_of(r.stdout)]
    assert ("recover", "intent", None) in steps and ("recover", "result", "ok") in steps and ("aliases", "result", "ok") in steps
    assert_nothing_secret(env, made.stdout, made.stderr, r.stdout, r.stderr, refused.stdout, refused.stderr)


def test_restore_takes_the_snapshots_data_over_a_corrupted_live_collection(env: Env) -> None:
    made = env.dbops("runbook", "run", "qdrant.snapshot-to-s3", "--cluster", NAME, "--param", "collection=images",
                     "--param", "delete_local=false", "--yes")
    assert made.returncode == 0, made.stdout + made.stderr
    assert "Delete the node-local snapshots" in made.stdout and "deleted the node-local" not in made.stdout
    # Corrupt it: 30 points overwritten with another payload and 5 new ones.
    env.cluster.upsert_points("images", [{"id": str(uuid.UUID(int=i + 1)), "vector": [0.1, 0.2, 0.3, 0.4]} for i in range(5)])
    assert env.cluster.describe()["collections"]["images"]["points"] == 125
    r = env.dbops("runbook", "run", "qdrant.restore-from-s3", "--cluster", NAME, "--param", "collection=images",
                  "--yes", "--confirm", NAME)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "images: 120 points, as at snapshot time; green on every node" in r.stdout
    assert "Recreate the aliases: nothing to do" in r.stdout  # images has no alias
    assert env.cluster.describe()["collections"]["images"]["points"] == 120


def test_a_read_only_key_is_refused_with_a_clear_message(env: Env) -> None:
    env.write(READ_ONLY_API_KEY, s3=env.ref().cluster.backups.s3)  # no manage_api_key: the runbook uses the reading key
    env.cluster.set_replica_state("docs", 1, env.cluster.peer_ids[2], "Dead")
    r = env.dbops("runbook", "run", "qdrant.recover-dead-replica", "--cluster", NAME, "--yes")
    assert r.returncode == int(ExitCode.REFUSED), r.stdout + r.stderr
    assert ("the runbook's API key may only read: the API key is read-only; give the runbook a key that may manage "
            "the cluster (qdrant.manage_api_key)") in r.stdout
    assert env.health().severity is Severity.CRIT  # nothing changed
    s = env.dbops("runbook", "run", "qdrant.snapshot-to-s3", "--cluster", NAME, "--param", "collection=docs", "--yes")
    assert s.returncode == int(ExitCode.REFUSED) and "may only read" in s.stdout
    assert_nothing_secret(env, r.stdout, r.stderr, s.stdout, s.stderr)

    env.write(READ_ONLY_API_KEY, manage="wrong-manage-key", s3=env.ref().cluster.backups.s3)
    w = env.dbops("runbook", "run", "qdrant.recover-dead-replica", "--cluster", NAME, "--yes")
    assert w.returncode == int(ExitCode.REFUSED) and "rejected the API key (401 Unauthorized)" in w.stdout, w.stdout
    assert "wrong-manage-key" not in w.stdout + w.stderr + env.audit_text()


def test_recover_waits_for_qdrants_own_recovery_instead_of_replicating_again(env: Env) -> None:
    """Qdrant recovers a Dead replica by itself (its node asks an Active peer for a transfer): when
    that starts between the pre-check and the replicate step, Qdrant would refuse a second transfer
    ("already involved in transfer"); the step sees it running and waits for it instead."""
    import asyncio

    from dbops.runbook.model import Context
    from dbops.runbooks.qdrant import common
    from dbops.runbooks.qdrant.recover_dead_replica import check_dead, do_replicate, do_wait, verify_active

    ids = env.cluster.peer_ids
    env.cluster.set_replica_state("docs", 0, ids[1], "Dead")
    lines: list[str] = []
    ctx = Context(env.ref(), {}, "it-auto-recover", log=lines.append)

    async def run() -> str:
        try:
            found = await check_dead(ctx)
            assert found.ok and "docs/0 on q2 is Dead: copy from q1" in found.detail, found.detail
            env.cluster.transfer_seconds = 3600  # until the test ends it: the step must see it running
            env.cluster.state.auto_recover = True  # Qdrant's own recovery starts now, q1 -> q2
            await do_replicate(ctx)
            env.cluster.complete_transfers()
            await do_wait(ctx)
            return (await verify_active(ctx)).detail
        finally:
            await common.teardown(ctx)

    verdict = asyncio.run(run())
    assert any("docs/0 on q2: a transfer q1 -> q2 is already running (Qdrant's own recovery); not replicated again"
               in line for line in lines), lines
    assert not any("started" in line for line in lines), lines
    assert verdict == "docs/0 on q2 Active with 100 points, as on q1"
    assert env.health().severity is Severity.OK
