"""How a slot move ends, against fake nodes that record every command: each group's last slot is
closed from IMPORTING, so the target announces the move to every node (replicas included) at
once; and verification looks again at once, then backs off, and names the nodes that still
disagree when they never agree."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from dbops.engines.redis.slots import GROUP_SLOTS, Endpoint, Mover
from dbops.engines.redis.topology import SLOTS, ClusterView
from dbops.runbook.model import Context
from dbops.runbooks.redis import common

SRC, DST, OTHER = "s" * 40, "t" * 40, "o" * 40


class FakeNode:
    """A master that keeps slot keys and answers the commands a move sends, recording them."""

    def __init__(self, keys: dict[int, list[bytes]] | None = None) -> None:
        self.keys = keys or {}
        self.sent: list[tuple[Any, ...]] = []

    async def execute(self, commands: Sequence[tuple[Any, ...]], raise_on_error: bool = True) -> list[Any]:
        out: list[Any] = []
        for c in commands:
            self.sent.append(tuple(c))
            name = " ".join(str(a) for a in c[:2]).upper()
            if name == "CLUSTER COUNTKEYSINSLOT":
                out.append(len(self.keys.get(int(c[2]), [])))
            elif name == "CLUSTER GETKEYSINSLOT":
                out.append(list(self.keys.get(int(c[2]), []))[: int(c[3])])
            elif name == "CLUSTER INFO":
                out.append(b"cluster_my_epoch:%d\r\n" % (2 if self is NODES[DST] else 1))
            elif c[0] == "MIGRATE":
                moved = set(c[c.index("KEYS") + 1:])
                for s, ks in self.keys.items():
                    self.keys[s] = [k for k in ks if k not in moved]
                out.append(b"OK")
            elif c[0] == "INFO":
                out.append(b"used_memory_dataset:1000\r\ndb0:keys=10,expires=0\r\n")
            else:
                out.append(b"OK")
        return out

    async def execute_command(self, *args: Any) -> Any:
        return (await self.execute([args]))[0]


NODES: dict[str, FakeNode] = {}


def test_each_group_closes_its_last_slot_from_importing_so_the_target_announces_the_move() -> None:
    # Three groups: slots with keys; half with keys, half empty; empty slots only.
    slots = list(range(2 * GROUP_SLOTS + 20))
    groups = [slots[:GROUP_SLOTS], slots[GROUP_SLOTS:2 * GROUP_SLOTS], slots[2 * GROUP_SLOTS:]]
    full = groups[0] + groups[1][::2]
    NODES.clear()
    NODES.update({SRC: FakeNode({s: [b"k%d" % s] for s in full}), DST: FakeNode(), OTHER: FakeNode()})
    mover = Mover(endpoints={n: Endpoint(n, f"127.0.0.1:{7000 + i}", c) for i, (n, c) in enumerate(NODES.items())})

    asyncio.run(mover.move(SRC, DST, slots))

    assert mover.stats.slots == len(slots)
    assert all(not ks for ks in NODES[SRC].keys.values()), "every key migrated"
    target = NODES[DST].sent
    imported = {c[2] for c in target if c[:2] == ("CLUSTER", "SETSLOT") and c[3] == "IMPORTING"}
    stable = {c[2] for c in target if c[:2] == ("CLUSTER", "SETSLOT") and c[3] == "STABLE"}
    # A NODE on the target for a slot still IMPORTING there: Redis broadcasts a PONG on it.
    announced = [c[2] for c in target if c[:2] == ("CLUSTER", "SETSLOT") and c[3] == "NODE" and c[2] in imported - stable]
    assert len(announced) == len(groups)
    for group in groups:
        mine = [s for s in announced if s in group]
        assert len(mine) == 1, (group[0], announced)
        last_node = [c[2] for c in target if c[:2] == ("CLUSTER", "SETSLOT") and c[3] == "NODE" and c[2] in group][-1]
        assert last_node == mine[0], "the announcing NODE comes after every other slot of its group"
    # Every other slot is closed quietly (STABLE, then NODE): no per-slot epoch bump or broadcast.
    assert stable == imported - set(announced)


class FakeSession:
    """Views that disagree a number of times, then agree."""

    def __init__(self, disagreeing_looks: int) -> None:
        self.left = disagreeing_looks
        self.looks = 0
        self.owners = tuple([DST] * SLOTS)

    async def refresh(self) -> ClusterView:
        self.looks += 1
        late = ("r" * 40,) if self.left > 0 else ()
        self.left -= 1
        return ClusterView(nodes=(), owners=self.owners, uncovered=(), disagreeing=late)

    def name(self, node_id: str) -> str:
        return {"r" * 40: "c4"}.get(node_id, node_id[:8])

    async def total_keys(self) -> int:
        return 42


def verify(monkeypatch: pytest.MonkeyPatch, session: FakeSession) -> tuple[common.Verdict, list[float]]:
    pauses: list[float] = []
    clock = [0.0]

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(common.asyncio, "sleep", sleep)
    monkeypatch.setattr(common.time, "monotonic", lambda: clock[0])
    ctx = Context(None, {}, run_id="r", state={"keys_before": 42}, resources={"session": session})  # type: ignore[arg-type]
    return asyncio.run(common.verify_cluster(ctx, {0: DST, 1: DST})), pauses


def test_verification_looks_again_at_once_then_backs_off(monkeypatch: pytest.MonkeyPatch) -> None:
    verdict, pauses = verify(monkeypatch, FakeSession(disagreeing_looks=3))
    assert verdict.ok, verdict.detail
    assert "every node agrees, 42 keys" in verdict.detail
    assert pauses == [0.01, 0.02, 0.04]


def test_verification_names_the_nodes_that_never_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    verdict, pauses = verify(monkeypatch, FakeSession(disagreeing_looks=10_000))
    assert not verdict.ok
    assert "nodes disagree: c4" in verdict.detail
    assert max(pauses) == common.CONVERGE_MAX_POLL
    assert sum(pauses) >= common.CONVERGE_SECONDS
