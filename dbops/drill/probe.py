"""The drill's probe: a loop that writes and reads back one numbered record at a time while a
drill runs, and keeps a local log of every write the service *acknowledged*. RTO and RPO are
computed from that log and from what the recovered service holds (dbops.drill.measure), never
estimated.

An engine's probe implements `Probe` and is named by its EngineSpec's `probe` ("module:attr",
a class taking (ref, run_id)). It writes through the path clients use (PostgreSQL: PgBouncer
when the cluster has one), waits for the strongest acknowledgement the engine gives (Kafka:
acks=all), and raises on any failure: the loop records the failure with its one-line message
and tries again at the next tick, never retrying inside a call.

The acknowledged-writes log is a JSON-lines file flushed and fsynced after each write: it is the
drill's evidence, and must survive dbops itself being killed during the drill.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from dbops.config import ClusterRef

INTERVAL = 0.1  # seconds between two probe writes: the resolution of the measured RTO
# One call that has not answered after this long is a failure (a dead server often does not
# refuse: it does not answer).
CALL_TIMEOUT = 2.0


class Probe(Protocol):
    """What a drill writes to and reads from one cluster. Every method raises on failure."""

    # What it writes to, for the plan and the report ("table dbops_drill_probe through PgBouncer").
    target: str

    def commands(self) -> list[str]:
        """The statements or commands it runs, for the plan (no credentials)."""
        ...

    async def open(self) -> None:
        """Create what it writes to (idempotent) and connect."""
        ...

    async def write(self, seq: int) -> None:
        """Write record `seq`; returns only once the service acknowledged it."""
        ...

    async def read(self, seq: int) -> bool:
        """Whether record `seq` reads back now."""
        ...

    async def present(self, seqs: Sequence[int]) -> set[int]:
        """Which of `seqs` the service holds now (after recovery; reads in batches)."""
        ...

    async def reset(self) -> None:
        """Forget connections after a failure: the next call reconnects (to wherever the
        service is now: a new primary, a repointed pooler)."""
        ...

    async def close(self, drop: bool) -> None:
        """Disconnect; with `drop`, remove what open() created."""
        ...


def probe_for(ref: ClusterRef, run_id: str) -> Probe:
    """The probe of `ref`'s engine, from its spec; ValueError when the engine has none."""
    from dbops.engine_spec import load_attr, spec_of

    spec = spec_of(ref.cluster.engine)
    if spec.probe is None:
        raise ValueError(f"{spec.title} has no drill probe: a drill cannot measure RTO/RPO on {ref.key}")
    probe: Probe = load_attr(spec.probe)(ref, run_id)
    return probe


@dataclass(frozen=True)
class Attempt:
    """One tick of the probe: a write and its read-back, ended at wall-clock time `t`."""

    t: float
    seq: int
    wrote: bool
    read: bool
    error: str | None = None
    started: float | None = None  # when the write was sent (not journaled: the screen's live view)

    @property
    def ok(self) -> bool:
        return self.wrote and self.read


@dataclass(frozen=True)
class Ack:
    seq: int
    t: float  # wall-clock time the service acknowledged it


class AckLog:
    """The local log of acknowledged writes: one JSON line per ack, fsynced as it is written."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def append(self, ack: Ack) -> None:
        os.write(self._fd, (json.dumps({"seq": ack.seq, "t": round(ack.t, 6)}) + "\n").encode())
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)

    @staticmethod
    def read(path: Path) -> list[Ack]:
        """Every ack in the file; a torn last line (dbops killed while writing it) is not an ack."""
        acks: list[Ack] = []
        if not path.exists():
            return acks
        for line in path.read_text().splitlines():
            try:
                d = json.loads(line)
                acks.append(Ack(int(d["seq"]), float(d["t"])))
            except (ValueError, KeyError, TypeError):
                continue
        return acks


def one_line(exc: BaseException) -> str:
    from dbops.secrets import scrub_text

    text = str(exc).strip()
    return scrub_text(text.splitlines()[0])[:200] if text else type(exc).__name__


class ProbeLoop:
    """Runs a probe every INTERVAL until stopped: never two calls at once, each bounded by
    CALL_TIMEOUT. `on_attempt` hears every attempt (the drill's strip and clock)."""

    def __init__(self, probe: Probe, acks: AckLog, *, first_seq: int = 1,
                 on_attempt: Callable[[Attempt], None] | None = None, interval: float = INTERVAL,
                 clock: Callable[[], float] = time.time):
        self.probe = probe
        self.acks = acks
        self.seq = first_seq
        self.on_attempt = on_attempt
        self.interval = interval
        self.clock = clock
        self.attempts: list[Attempt] = []
        self.paused = False  # a test (or the RPO proof) holds the writes; reads stay off too
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._ticking = asyncio.Lock()

    async def tick(self) -> Attempt:
        """One write and its read-back, now."""
        started = self.clock()
        seq = self.seq
        self.seq += 1
        wrote = read = False
        error = None
        try:
            await asyncio.wait_for(self.probe.write(seq), CALL_TIMEOUT)
            wrote = True
            self.acks.append(Ack(seq, self.clock()))
            read = await asyncio.wait_for(self.probe.read(seq), CALL_TIMEOUT)
            if not read:
                error = f"record {seq} was acknowledged but does not read back"
        except TimeoutError:
            error = f"no answer within {CALL_TIMEOUT:.0f}s"
        except Exception as exc:  # any failure of the service is data here, not a crash
            error = one_line(exc)
        if error is not None:
            try:
                await self.probe.reset()
            except Exception as exc:  # the next tick reconnects anyway; say why this one could not
                error = f"{error}; reset: {one_line(exc)}"
        attempt = Attempt(self.clock(), seq, wrote, read, error, started)
        self.attempts.append(attempt)
        if self.on_attempt is not None:
            self.on_attempt(attempt)
        return attempt

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """No write in flight or started inside: the tick under way (if any) ends first."""
        async with self._ticking:
            yield

    async def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            if not self.paused:
                async with self._ticking:
                    await self.tick()
            wait = max(0.0, self.interval - (time.monotonic() - started))
            try:
                await asyncio.wait_for(self._stop.wait(), wait)
            except TimeoutError:
                pass

    def start(self) -> None:
        self._stop.clear()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="drill-probe")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None


def attempts_as_json(attempts: Sequence[Attempt]) -> list[dict[str, Any]]:
    return [{"t": round(a.t, 3), "seq": a.seq, "ok": a.ok, **({"error": a.error} if a.error else {})} for a in attempts]
