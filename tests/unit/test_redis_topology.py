"""Redis Cluster configuration as dbops reads it: CLUSTER NODES lines, the judged view (coverage,
open slots, double claims, disagreement), key slots, slot lists, the fix plan and the slot map."""

from __future__ import annotations

import pytest

from dbops.engines.redis.topology import SLOTS, format_ranges, judge, key_slot, parse_nodes, parse_slot_list, ranges
from dbops.runbooks.redis.fix import plan_fixes
from dbops.screens.redis import slot_map

A, B, C = "a" * 40, "b" * 40, "c" * 40


def nodes(me: str, a_slots: str = "0-5460", b_slots: str = "5461-10922", c_slots: str = "10923-16383", extra: dict[str, str] | None = None) -> str:
    extra = extra or {}
    lines = []
    for nid, port, slots in ((A, 7001, a_slots), (B, 7002, b_slots), (C, 7003, c_slots)):
        flags = "myself,master" if nid == me else "master"
        lines.append(f"{nid} 127.0.0.1:{port}@17{port % 1000:03d} {flags} - 0 0 1 connected {slots} {extra.get(nid, '')}".rstrip())
    lines.append(f"{'d' * 40} 127.0.0.1:7004@17004 slave,fail {A} 0 0 1 disconnected")
    return "\n".join(lines) + "\n"


def test_parse_nodes_reads_slots_open_slots_and_flags() -> None:
    text = nodes(A, a_slots="0-5460 [5461-<-" + B + "]", extra={})
    lines = parse_nodes(text)
    me = next(n for n in lines if n.myself)
    assert me.node_id == A and me.address == "127.0.0.1:7001" and me.slot_count == 5461
    assert me.importing == ((5461, B),) and me.migrating == ()
    replica = next(n for n in lines if n.address.endswith("7004"))
    assert not replica.is_master and replica.failed and replica.master_id == A


def test_a_healthy_cluster_is_covered_and_agreed() -> None:
    view = judge({n: parse_nodes(nodes(n)) for n in (A, B, C)})
    assert view.covered == SLOTS and view.uncovered == () and view.open_slots == () and view.disagreeing == ()
    assert view.failed == ("d" * 40,)


def test_uncovered_open_twice_claimed_and_disagreeing_slots_are_found() -> None:
    views = {
        A: parse_nodes(nodes(A, a_slots="0-99 101-5460 [7000->-" + B + "]", extra={})),
        B: parse_nodes(nodes(B, a_slots="0-99 101-5460", b_slots="5461-10922 12000", c_slots="10923-11999 12001-16383",
                             extra={B: "[7000-<-" + A + "]"})),
        C: parse_nodes(nodes(C, a_slots="0-99 101-5460")),
    }
    view = judge(views)
    assert view.uncovered == ((100, 100),)
    assert [(o.slot, o.migrating, o.importing) for o in view.open_slots] == [(7000, ((A, B),), ((B, A),))]
    assert view.multiple_owners == {12000: (B, C)}
    assert view.disagreeing == (B,)


def test_a_slot_its_owner_does_not_claim_is_unclaimed() -> None:
    # A and C think B owns 6000; B's own line does not list it.
    views = {A: parse_nodes(nodes(A)), C: parse_nodes(nodes(C)), B: parse_nodes(nodes(B, b_slots="5461-5999 6001-10922"))}
    assert judge(views).unclaimed == (6000,)


@pytest.mark.parametrize("key, slot", [("foo", 12182), ("bar", 5061), ("", 0), ("{user1000}.following", key_slot("user1000"))])
def test_key_slot_is_redis_crc16(key: str, slot: int) -> None:
    assert key_slot(key) == slot
    assert key_slot("{user1000}.followers") == key_slot("{user1000}.following")
    assert key_slot("{}x") == key_slot("{}x")  # an empty tag hashes the whole key


def test_slot_lists_and_ranges() -> None:
    assert parse_slot_list("0-3,10,12-12") == [0, 1, 2, 3, 10, 12]
    assert ranges([0, 1, 2, 3, 10, 12]) == [(0, 3), (10, 10), (12, 12)]
    assert format_ranges(ranges([0, 1, 2, 3, 10, 12])) == "0-3,10,12"
    for bad, msg in (("0-16384", "slots are 0..16383"), ("5-1", "low to high"), ("x", "not a slot"), ("", "no slots")):
        with pytest.raises(ValueError, match=msg):
            parse_slot_list(bad)


def test_fix_plan_per_class() -> None:
    views = {
        A: parse_nodes(nodes(A, a_slots="0-99 101-5460 [3000->-" + B + "] [4000->-" + C + "]")),
        B: parse_nodes(nodes(B, a_slots="0-99 101-5460", b_slots="5461-10922 12000", extra={B: "[3000-<-" + A + "]"})),
        C: parse_nodes(nodes(C, a_slots="0-99 101-5460")),
    }
    view = judge(views)
    keys = {3000: {A: 3, B: 2}, 4000: {A: 1}, 100: {C: 4}, 12000: {B: 1, C: 5}}
    plan = {i["slot"]: i for i in plan_fixes(view, keys)}
    assert (plan[3000]["class"], plan[3000]["action"], plan[3000]["target"], plan[3000]["sources"]) == ("open", "finish", B, [A])
    # Migrating towards C, which is not importing: rolled back to the owner A (A's keys stay).
    assert (plan[4000]["action"], plan[4000]["target"], plan[4000]["sources"]) == ("rollback", A, [])
    assert (plan[100]["class"], plan[100]["target"]) == ("uncovered", C)
    assert (plan[12000]["class"], plan[12000]["action"], plan[12000]["target"], plan[12000]["sources"]) == ("owners", "keep-one", C, [B])


def test_an_uncovered_slot_without_keys_goes_to_the_master_with_fewest_slots() -> None:
    view = judge({n: parse_nodes(nodes(n, a_slots="0-5459", c_slots="10923-16000")) for n in (A, B, C)})
    plan = plan_fixes(view, {})
    targets = {i["slot"]: i["target"] for i in plan}
    assert len(targets) == 1 + 383  # 5460 and 16001-16383
    assert targets[5460] == C  # C has the fewest slots, and keeps getting them until it has as many as the others
    assert set(targets.values()) == {A, C} or set(targets.values()) == {C}


def test_slot_map_shows_owners_uncovered_and_open_cells_and_a_legend() -> None:
    views = {n: parse_nodes(nodes(n, a_slots="0-5460 [100->-" + B + "]" if n == A else "0-5460", c_slots="10923-16000")) for n in (A, B, C)}
    view = judge(views)
    text = slot_map(view, {A: "c1", B: "c2", C: "c3"}).plain
    grid, legend = text.splitlines()[:4], text.splitlines()[4:]
    assert all(len(row) == 64 for row in grid)
    assert grid[0][1] == "!"  # the cell of slot 100 (slots 64-127) has an open slot
    assert grid[0][0] == "A" and grid[1][-1] == "B" and grid[3][-1] == "·"
    assert "A c1: 5461 slots 0-5460" in legend
    assert "· no owner: 383 slots 16001-16383" in legend


def test_rebalance_plan_by_weights_and_threshold() -> None:
    from dbops.runbooks.redis.rebalance import parse_weights, plan_moves

    owned = {"a": list(range(0, 8192)), "b": list(range(8192, 16384)), "c": []}
    moves = plan_moves(owned, {"a": 1, "b": 1, "c": 1}, 2.0)
    got = {(m["source"], m["target"]): len(m["slots"]) for m in moves}
    assert got == {("a", "c"): 2731, ("b", "c"): 2730} or got == {("b", "c"): 2731, ("a", "c"): 2730}
    assert {max(m["slots"]) for m in moves} == {8191, 16383}  # each giver's highest slots go first
    # Within the threshold: nothing moves.
    assert plan_moves({"a": list(range(0, 8250)), "b": list(range(8250, 16384))}, {"a": 1, "b": 1}, 2.0) == []
    # Weight 0 empties a master, whatever the threshold.
    moves = plan_moves({"a": list(range(0, 100)), "b": list(range(100, 16384))}, {"a": 0, "b": 1}, 50.0)
    assert [(m["source"], m["target"], len(m["slots"])) for m in moves] == [("a", "b", 100)]
    assert parse_weights("c1=2, c2=0.5") == {"c1": 2.0, "c2": 0.5}
    for bad in ("c1", "c1=x", "c1=-1"):
        with pytest.raises(ValueError, match="NODE=NUMBER"):
            parse_weights(bad)
    with pytest.raises(ValueError, match="every weight is 0"):
        plan_moves({"a": [1]}, {"a": 0}, 2.0)
