"""RTO and RPO from the drill's own evidence: the probe's attempts, its log of acknowledged
writes, what the recovered service holds, and the drill's markers (fault, detection, decision).
Pure functions over recorded data: what a report says can be recomputed from the run's files.

Definitions (the report prints them too):

- RTO (availability): from the fault to the first probe write *and* read-back that succeeded
  after the last one that failed, i.e. the moment service came back and stayed back. No failed
  attempt after the fault: to the first write after it that was acknowledged and read back. A
  write that was held rather than refused (queued by a paused pooler during a failover) counts
  until it returned: clients waited that long, so the service was not there for them.
- RTO (data): for a scenario whose fault loses data rather than service (an accidental DELETE),
  from the fault to the moment the lost data was verified back (the scenario marks it).
- RPO: the acknowledged writes missing from the recovered service: how many, the age at the
  fault of the newest one missing, and the window of lost data (from the oldest missing write's
  acknowledgement to the fault), which is what is judged against the target. Nothing missing:
  RPO 0. Never estimated: a write counts only if the service acknowledged it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dbops.drill.probe import Ack, Attempt

# A write that returned later than this after the fault was held by the service, not just slow.
HELD_SECONDS = 0.5


@dataclass(frozen=True)
class Rto:
    seconds: float | None
    note: str
    recovered_at: float | None  # when service (or the data) was back


@dataclass(frozen=True)
class Rpo:
    lost: int
    acked: int
    window_seconds: float  # fault - oldest missing ack; 0 when nothing is missing
    newest_lost_age_seconds: float | None  # fault - newest missing ack
    lost_writes: tuple[Ack, ...]
    note: str


def availability_rto(attempts: Sequence[Attempt], fault: float, until: float | None = None) -> Rto:
    """The RTO from the probe's attempts after `fault` (up to `until`, the end of recovery)."""
    after = [a for a in attempts if a.t >= fault and (until is None or a.t <= until)]
    failed = [a for a in after if not a.ok]
    if not after:
        return Rto(None, "the probe made no attempt after the fault: nothing to measure", None)
    if not failed:
        first = after[0]
        seconds = first.t - fault
        held = f" (held {seconds:.1f}s, not refused: clients waited that long)" if seconds > HELD_SECONDS else ""
        return Rto(seconds, f"no probe write failed after the fault; the first one after it was acknowledged and read "
                   f"back at +{seconds:.1f}s{held}", first.t)
    last_failure = failed[-1]
    back = next((a for a in after if a.t > last_failure.t and a.ok), None)
    if back is None:
        return Rto(None, f"the service had not come back: the probe's last attempt failed ({last_failure.error})", None)
    return Rto(back.t - fault, f"{len(failed)} probe attempts failed; the first write and read-back after the last "
               f"failure succeeded at +{back.t - fault:.1f}s", back.t)


def held(a: Attempt) -> bool:
    """A write acknowledged this late after it was sent was held by the service, not refused."""
    return a.ok and a.started is not None and a.t - a.started > HELD_SECONDS


def data_rto(fault: float, verified_at: float | None, what: str) -> Rto:
    if verified_at is None:
        return Rto(None, f"{what} was never verified back", None)
    return Rto(verified_at - fault, f"from the fault to {what} verified back", verified_at)


def rpo(acks: Iterable[Ack], present: set[int], fault: float, *, expected: Iterable[Ack] | None = None) -> Rpo:
    """The acknowledged writes the recovered service lacks. `expected`: the acks that should be
    there (default: every ack); for a restore to a point in time, those before the target."""
    all_acks = list(acks)
    wanted = list(expected) if expected is not None else all_acks
    lost = tuple(sorted((a for a in wanted if a.seq not in present), key=lambda a: a.seq))
    if not lost:
        return Rpo(0, len(all_acks), 0.0, None, (), f"all {len(wanted)} acknowledged writes are on the recovered service")
    oldest = min(a.t for a in lost)
    newest = max(a.t for a in lost)
    return Rpo(len(lost), len(all_acks), max(0.0, fault - oldest), fault - newest, lost,
               f"{len(lost)} of {len(wanted)} acknowledged writes are missing from the recovered service")


def first_detection(states: Iterable[tuple[float, bool]], fault: float) -> float | None:
    """When the console's health first showed the fault: the first poll after it that was not OK.
    `states` are (time, healthy) pairs from the drill's own health polls."""
    return next((t for t, healthy in states if t >= fault and not healthy), None)
