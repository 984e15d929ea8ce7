"""Redis Cluster configuration as the nodes report it: parse CLUSTER NODES, and judge slot
coverage, open slots, multiple owners and disagreement. Pure functions, no I/O.

Why CLUSTER NODES from every node rather than CLUSTER SHARDS from one: only a node's own
CLUSTER NODES line shows its MIGRATING/IMPORTING slots, and disagreement is only visible by
comparing what each node believes, so the pane needs it from every node anyway; topology is
the union of those views (CLUSTER SHARDS would be one more command per refresh saying less).
"""

from __future__ import annotations

from dataclasses import dataclass, field

SLOTS = 16384


@dataclass(frozen=True, slots=True)
class NodeLine:
    """One line of CLUSTER NODES."""

    node_id: str
    address: str  # host:port (the client port)
    flags: frozenset[str]
    master_id: str | None  # for a replica, its master's id
    config_epoch: int
    link_state: str
    slots: tuple[tuple[int, int], ...]  # inclusive ranges
    migrating: tuple[tuple[int, str], ...] = ()  # (slot, to node id): only on the node's own line
    importing: tuple[tuple[int, str], ...] = ()  # (slot, from node id)
    bus_port: int | None = None  # the cluster bus port (CLUSTER MEET needs it when it is not port + 10000)

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def myself(self) -> bool:
        return "myself" in self.flags

    @property
    def failed(self) -> bool:
        return "fail" in self.flags

    @property
    def pfail(self) -> bool:
        return "fail?" in self.flags

    @property
    def slot_count(self) -> int:
        return sum(b - a + 1 for a, b in self.slots)


def parse_nodes(text: str) -> tuple[NodeLine, ...]:
    out = []
    for raw in text.splitlines():
        parts = raw.split()
        if len(parts) < 8:
            continue
        addr, _, bus = parts[1].split(",", 1)[0].partition("@")
        slots: list[tuple[int, int]] = []
        migrating: list[tuple[int, str]] = []
        importing: list[tuple[int, str]] = []
        for tok in parts[8:]:
            if tok.startswith("["):
                body = tok.strip("[]")
                if "->-" in body:
                    s, other = body.split("->-", 1)
                    migrating.append((int(s), other))
                elif "-<-" in body:
                    s, other = body.split("-<-", 1)
                    importing.append((int(s), other))
                continue
            a, _, b = tok.partition("-")
            slots.append((int(a), int(b or a)))
        out.append(NodeLine(
            node_id=parts[0], address=addr, flags=frozenset(parts[2].split(",")),
            master_id=None if parts[3] == "-" else parts[3], config_epoch=int(parts[6]), link_state=parts[7],
            slots=tuple(slots), migrating=tuple(migrating), importing=tuple(importing),
            bus_port=int(bus) if bus.isdigit() else None,
        ))
    return tuple(out)


def ranges(slots: list[int] | set[int]) -> list[tuple[int, int]]:
    """Sorted slots as inclusive ranges."""
    out: list[tuple[int, int]] = []
    for s in sorted(slots):
        if out and out[-1][1] == s - 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def format_ranges(rs: list[tuple[int, int]] | tuple[tuple[int, int], ...], limit: int = 6) -> str:
    parts = [f"{a}" if a == b else f"{a}-{b}" for a, b in rs]
    if len(parts) > limit:
        return ",".join(parts[:limit]) + f",… ({len(parts) - limit} more)"
    return ",".join(parts) or "-"


def parse_slot_list(text: str) -> list[int]:
    """"0-999,2000" -> slots. Raises ValueError with a message for the operator."""
    out: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        a, sep, b = part.partition("-")
        try:
            lo, hi = int(a), int(b) if sep else int(a)
        except ValueError:
            raise ValueError(f"{part!r} is not a slot or a range of slots like 0-999") from None
        if not (0 <= lo <= hi < SLOTS):
            raise ValueError(f"{part!r}: slots are 0..{SLOTS - 1}, low to high")
        out.update(range(lo, hi + 1))
    if not out:
        raise ValueError("no slots given")
    return sorted(out)


@dataclass(frozen=True)
class OpenSlot:
    slot: int
    migrating: tuple[tuple[str, str], ...]  # (node id marking it MIGRATING, to node id)
    importing: tuple[tuple[str, str], ...]  # (node id marking it IMPORTING, from node id)


@dataclass(frozen=True)
class ClusterView:
    """The cluster's configuration judged from every reachable node's CLUSTER NODES."""

    nodes: tuple[NodeLine, ...]  # one per node id: the line the node wrote about itself when it answered
    owners: tuple[str | None, ...]  # slot -> owning master id, by the majority view
    uncovered: tuple[tuple[int, int], ...]
    multiple_owners: dict[int, tuple[str, ...]] = field(default_factory=dict)  # slot -> claimants
    open_slots: tuple[OpenSlot, ...] = ()
    disagreeing: tuple[str, ...] = ()  # node ids whose slot map differs from the majority's
    failed: tuple[str, ...] = ()  # node ids flagged fail by some node
    pfail: tuple[str, ...] = ()
    unclaimed: tuple[int, ...] = ()  # slots whose owner (by the majority's tables) does not claim them

    def node(self, node_id: str) -> NodeLine | None:
        return next((n for n in self.nodes if n.node_id == node_id), None)

    def by_address(self, address: str) -> NodeLine | None:
        return next((n for n in self.nodes if n.address == address), None)

    @property
    def masters(self) -> tuple[NodeLine, ...]:
        return tuple(n for n in self.nodes if n.is_master and not n.failed)

    @property
    def covered(self) -> int:
        return sum(1 for o in self.owners if o is not None)


def _slot_map(lines: tuple[NodeLine, ...]) -> tuple[str | None, ...]:
    owners: list[str | None] = [None] * SLOTS
    for n in lines:
        if n.is_master:
            for a, b in n.slots:
                owners[a:b + 1] = [n.node_id] * (b - a + 1)  # a slice per range: this runs every refresh
    return tuple(owners)


def judge(views: dict[str, tuple[NodeLine, ...]]) -> ClusterView:
    """`views`: node id -> that node's CLUSTER NODES, for every node that answered."""
    maps = {nid: _slot_map(lines) for nid, lines in views.items()}
    counts: dict[tuple[str | None, ...], int] = {}
    for m in maps.values():
        counts[m] = counts.get(m, 0) + 1
    majority = max(counts, key=lambda m: counts[m]) if counts else tuple([None] * SLOTS)
    disagreeing = tuple(sorted(nid for nid, m in maps.items() if m != majority)) if len(counts) > 1 else ()

    # Each node is described by its own line where it answered (it knows its own slots and open
    # slots), else by the first view that mentions it.
    own: dict[str, NodeLine] = {}
    for lines in views.values():
        for n in lines:
            if n.myself:
                own[n.node_id] = n
    for lines in views.values():
        for n in lines:
            own.setdefault(n.node_id, n)
    nodes = tuple(sorted(own.values(), key=lambda n: (n.address, n.node_id)))

    # A slot claimed by two masters in their own lines: each believes it owns it.
    claimed: list[str | None] = [None] * SLOTS
    doubles: dict[int, set[str]] = {}
    for n in own.values():
        if n.is_master and n.myself:
            for a, b in n.slots:
                for i, other in enumerate(claimed[a:b + 1]):
                    if other is not None:
                        doubles.setdefault(a + i, {other}).add(n.node_id)
                claimed[a:b + 1] = [n.node_id] * (b - a + 1)
    multiple = {s: tuple(sorted(c)) for s, c in sorted(doubles.items())}
    # Owned in the tables, but the owner (which answered) does not claim it itself: no node
    # serves it, as good as uncovered. A move whose epoch lost a gossip race leaves this.
    unclaimed = tuple(s for s, o in enumerate(majority) if o is not None and o in views and claimed[s] is None)

    opened: dict[int, tuple[list[tuple[str, str]], list[tuple[str, str]]]] = {}
    for n in own.values():
        for s, other in n.migrating:
            opened.setdefault(s, ([], []))[0].append((n.node_id, other))
        for s, other in n.importing:
            opened.setdefault(s, ([], []))[1].append((n.node_id, other))
    open_slots = tuple(OpenSlot(s, tuple(m), tuple(i)) for s, (m, i) in sorted(opened.items()))

    failed = sorted({n.node_id for lines in views.values() for n in lines if n.failed})
    pfail = sorted({n.node_id for lines in views.values() for n in lines if n.pfail} - set(failed))
    return ClusterView(
        nodes=nodes, owners=majority, uncovered=tuple(ranges([s for s, o in enumerate(majority) if o is None])),
        multiple_owners=multiple, open_slots=open_slots, disagreeing=disagreeing, unclaimed=unclaimed,
        failed=tuple(failed), pfail=tuple(pfail),
    )


def key_slot(key: bytes | str) -> int:
    """CRC16 (XMODEM) of the key, or of its {hash tag}, mod 16384: Redis Cluster's key slot."""
    k = key.encode() if isinstance(key, str) else key
    start = k.find(b"{")
    if start != -1:
        end = k.find(b"}", start + 1)
        if end != -1 and end != start + 1:
            k = k[start + 1:end]
    crc = 0
    for byte in k:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc % SLOTS
