"""A standby's lag in seconds must not cry wolf after a quiet spell, and must still grow while
replay is really stuck."""

from __future__ import annotations

from dbops.engines.postgres.adapter import bound_standby_lag

from ..ui.frozen import replica_data


def test_quiet_spell_does_not_read_as_an_hour_of_lag():
    caught_up = replica_data(0, 0.0)
    data, at = bound_standby_lag(caught_up, None, now=1000.0)
    assert at == 1000.0
    # a few KB arrive after an hour without commits: the server's formula says 3600 s
    behind = replica_data(8192, 3600.0)
    data, at = bound_standby_lag(behind, at, now=1002.0)
    assert data.wal_receiver.replay_lag_seconds == 2.0 and at == 1000.0


def test_stuck_replay_keeps_growing():
    _, at = bound_standby_lag(replica_data(0, 0.0), None, now=1000.0)
    for now in (1010.0, 1030.0, 1090.0):
        data, at = bound_standby_lag(replica_data(50_000_000, now - 1000.0 + 5), at, now=now)
        assert data.wal_receiver.replay_lag_seconds == now - 1000.0
    assert at == 1000.0


def test_behind_since_before_dbops_started_keeps_the_servers_figure():
    data, at = bound_standby_lag(replica_data(50_000_000, 700.0), None, now=1000.0)
    assert data.wal_receiver.replay_lag_seconds == 700.0 and at is None


def test_primary_has_nothing_to_bound():
    from ..ui.frozen import primary_data

    data = primary_data()
    assert bound_standby_lag(data, 5.0, now=10.0) == (data, None)


def test_cache_hit_ratio_is_judged_over_recent_reads_only():
    from dbops.engines.postgres.adapter import CacheHitWindow

    w = CacheHitWindow()
    # a cold start left the cumulative ratio at 50 %: none of that counts
    assert w.update(1_000_000, 1_000_000) is None
    assert w.update(1_000_100, 1_000_000) is None  # 100 blocks: too few to judge
    assert w.update(1_009_900, 1_000_100) == 99.0  # 10 000 blocks since the window opened
    assert w.update(1_009_910, 1_000_100) == 99.0  # kept until the next full window
    assert w.update(1_014_900, 1_005_100) == 50.0
    assert w.update(10, 10) == 50.0  # stats reset: start over, keep the last judgement
