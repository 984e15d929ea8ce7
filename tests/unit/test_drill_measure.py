"""RTO and RPO from recorded evidence: what the drill report will say for given attempts and acks."""

from __future__ import annotations

import pytest

from dbops.drill.measure import availability_rto, data_rto, first_detection, held, rpo
from dbops.drill.probe import Ack, Attempt


def attempts(spec: str, start: float = 100.0, step: float = 0.5) -> list[Attempt]:
    """'++--+' : ok, ok, failed, failed, ok; one every `step` seconds from `start`."""
    return [Attempt(start + i * step, i + 1, c == "+", c == "+", None if c == "+" else "refused") for i, c in enumerate(spec)]


def test_rto_runs_from_the_fault_to_the_first_success_after_the_last_failure():
    a = attempts("++" + "--" + "+" + "-" + "+++")  # a flap: back at 102.0, failing again at 102.5, back at 103.0
    r = availability_rto(a, fault=101.0)
    assert r.seconds == 2.0 and r.recovered_at == 103.0
    assert "3 probe attempts failed" in r.note


def test_no_failure_after_the_fault_runs_to_the_first_write_after_it():
    r = availability_rto(attempts("+++++"), fault=100.2)
    assert r.seconds == pytest.approx(0.3) and r.recovered_at == 100.5
    assert "no probe write failed" in r.note and "held" not in r.note


def test_a_write_held_through_the_failover_counts_until_it_returned():
    # A pooler paused during a failover queues the write instead of refusing it: no attempt
    # fails, but clients waited 1.7 s, and that is the RTO.
    held = [Attempt(100.0, 1, True, True), Attempt(101.8, 2, True, True), Attempt(101.9, 3, True, True)]
    r = availability_rto(held, fault=100.1)
    assert r.seconds == pytest.approx(1.7) and r.recovered_at == 101.8
    assert "held 1.7s, not refused" in r.note


def test_a_write_is_held_when_it_was_acknowledged_late_after_it_was_sent():
    assert held(Attempt(101.8, 2, True, True, started=100.1))
    assert not held(Attempt(100.2, 2, True, True, started=100.19))
    assert not held(Attempt(101.8, 2, False, False, "no answer within 2s", started=100.1))  # refused: failed, not held
    assert not held(Attempt(101.8, 2, True, True))  # read back from a journal: no start time, nothing claimed


def test_a_service_that_never_came_back_has_no_rto():
    r = availability_rto(attempts("++---"), fault=100.6)
    assert r.seconds is None and "had not come back" in r.note and "refused" in r.note


def test_rpo_counts_exactly_the_acknowledged_writes_missing_and_dates_them():
    acks = [Ack(i, 100.0 + i) for i in range(1, 11)]  # acked at 101..110
    present = {1, 2, 3, 4, 5, 6, 7}  # 8, 9, 10 lost
    r = rpo(acks, present, fault=110.5)
    assert r.lost == 3 and [a.seq for a in r.lost_writes] == [8, 9, 10]
    assert r.newest_lost_age_seconds == 0.5  # seq 10, acked 0.5 s before the fault
    assert r.window_seconds == 2.5  # from seq 8's ack to the fault


def test_nothing_missing_is_an_rpo_of_zero():
    acks = [Ack(i, 100.0 + i) for i in range(1, 4)]
    r = rpo(acks, {1, 2, 3, 99}, fault=104)
    assert (r.lost, r.window_seconds, r.newest_lost_age_seconds) == (0, 0.0, None)


def test_rpo_of_a_restore_to_a_point_counts_only_what_preceded_it():
    acks = [Ack(i, 100.0 + i) for i in range(1, 11)]
    before_t = [a for a in acks if a.t < 106]  # 1..5
    r = rpo(acks, {1, 2, 3, 4, 5}, fault=106, expected=before_t)
    assert r.lost == 0 and r.acked == 10


def test_data_rto_and_detection():
    assert data_rto(100.0, 142.5, "the deleted rows").seconds == 42.5
    assert data_rto(100.0, None, "the deleted rows").seconds is None
    states = [(99.0, False), (100.5, True), (101.5, False), (102.5, False)]
    assert first_detection(states, fault=100.0) == 101.5
