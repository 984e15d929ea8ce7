"""Poller mechanics with a scripted adapter (the engine side is tested against real servers in
tests/integration): timeouts, last-good carry-over, recovery, backoff, never overlapping."""

from __future__ import annotations

import asyncio

from dbops.config import parse
from dbops.engines.base import Adapter
from dbops.model import Reachability
from dbops.poller import MAX_BACKOFF_SECONDS, backoff_delay, poll_member

CONFIG = """
[environments.t]
[environments.t.clusters.c]
engine = "postgres"
timeout = 0.2
members = [{ name = "m", host = "127.0.0.1" }]
"""


class Scripted(Adapter):
    """Plays a list of outcomes: a value to return, an exception to raise, or "hang"."""

    kind = "scripted"

    def __init__(self, ref, member, script):
        super().__init__(ref, member)
        self.script = list(script)
        self.running = 0
        self.max_running = 0
        self.closed = 0

    async def collect(self):
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            step = self.script.pop(0)
            if step == "hang":
                await asyncio.Event().wait()
            if isinstance(step, BaseException):
                raise step
            return step
        finally:
            self.running -= 1

    async def close(self):
        self.closed += 1

    def classify(self, exc):
        if isinstance(exc, ConnectionRefusedError):
            return Reachability.DOWN, "connection refused"
        return Reachability.ERROR, str(exc)


def ref_member():
    ref = parse(CONFIG).clusters()[0]
    return ref, ref.cluster.members[0]


async def test_failure_keeps_last_good_values_and_their_time():
    ref, m = ref_member()
    a = Scripted(ref, m, [{"v": 1}, ConnectionRefusedError(), "hang", {"v": 2}])
    s1 = await poll_member(a, ref, m, None)
    assert s1.reachability is Reachability.UP and s1.data == {"v": 1}
    s2 = await poll_member(a, ref, m, s1)
    assert s2.reachability is Reachability.DOWN and s2.error == "connection refused"
    assert s2.data is None and s2.shown == {"v": 1} and s2.last_good_at == s1.taken_at
    s3 = await poll_member(a, ref, m, s2)
    assert s3.reachability is Reachability.TIMEOUT and "0.2s" in s3.error
    assert s3.shown == {"v": 1} and s3.last_good_at == s1.taken_at  # still the first poll's values
    assert a.closed == 2  # the connection is dropped after each failure so the next poll reconnects
    s4 = await poll_member(a, ref, m, s3)
    assert s4.reachability is Reachability.UP and s4.shown == {"v": 2} and s4.seq == 4


async def test_hub_loop_never_overlaps_polls_of_one_member(monkeypatch):
    from dbops import poller

    ref, m = ref_member()
    a = Scripted(ref, m, [{"v": i} for i in range(5)] + ["hang"] * 5)
    hub = poller.PollerHub(parse(CONFIG))
    monkeypatch.setattr(hub, "_adapter", lambda r, mm: a)
    monkeypatch.setattr(poller, "backoff_delay", lambda interval, failures: 0.0)
    task = asyncio.create_task(hub._member_loop(ref, m))
    for _ in range(200):
        await asyncio.sleep(0.01)
        if not a.script:
            break
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert a.max_running == 1
    health = hub.cluster_health(ref.key)
    assert health.members[0].snapshot.reachability is Reachability.TIMEOUT
    assert health.members[0].snapshot.shown == {"v": 4}


def test_backoff_grows_and_is_capped():
    assert backoff_delay(2.0, 0) == 2.0
    assert backoff_delay(2.0, 1) == 2.0
    assert backoff_delay(2.0, 2) == 4.0
    assert backoff_delay(2.0, 3) == 8.0
    assert backoff_delay(2.0, 10) == MAX_BACKOFF_SECONDS


def test_history_holds_an_hour_at_the_default_interval():
    from dbops.poller import PollerHub

    cfg = parse(CONFIG.replace("timeout = 0.2", ""))
    hub = PollerHub(cfg)
    ref = cfg.clusters()[0]
    assert hub._history[(ref.key, "m")].maxlen == 1800


async def test_a_bug_in_assessment_shows_the_member_as_error_and_keeps_polling(monkeypatch, tmp_path):
    from dbops import poller

    monkeypatch.setenv("DBOPS_STATE_DIR", str(tmp_path))
    ref, m = ref_member()
    a = Scripted(ref, m, [{"v": 1}, {"v": 2}, "hang"])
    hub = poller.PollerHub(parse(CONFIG))
    monkeypatch.setattr(hub, "_adapter", lambda r, mm: a)
    monkeypatch.setattr(poller, "backoff_delay", lambda interval, failures: 0.0)

    def broken(ref, snaps, baseline=None, now=None):
        raise KeyError("a rule that assumed a field")

    monkeypatch.setattr(poller, "assess_cluster", broken)
    task = asyncio.create_task(hub._member_loop(ref, m))
    for _ in range(200):
        await asyncio.sleep(0.01)
        if not a.script:
            break
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    member = hub.cluster_health(ref.key).members[0]
    assert member.snapshot.reachability is Reachability.ERROR
    assert "KeyError" in member.snapshot.error and "crash.log" in member.snapshot.error
    assert a.script == []  # it kept polling after the first failure
    assert "a rule that assumed a field" in (tmp_path / "crash.log").read_text()


def test_history_points_are_made_by_the_engines_sampler():
    from dbops.engines.postgres.history import PgHistoryPoint, sample
    from dbops.model import Snapshot
    from dbops.poller import PollerHub, history_sampler

    from ..ui.frozen import NOW, primary_data

    assert history_sampler("postgres") is sample
    assert history_sampler("redis") is None  # keeps no history: no deque per member either
    cfg = parse(CONFIG)
    ref = cfg.clusters()[0]
    hub = PollerHub(cfg)
    hub._record(ref, Snapshot("t", "c", "m", "postgres", Reachability.UP, NOW, 5.0, data=primary_data(), seq=1))
    hub._record(ref, Snapshot("t", "c", "m", "postgres", Reachability.DOWN, NOW + 2, 5.0, error="refused", seq=2))
    assert hub.history(ref.key, "m") == [PgHistoryPoint(NOW, None, None, 17, 0x9000000)]  # the unreachable refresh keeps no point; the primary's WAL position 0/9000000 is kept


def test_check_keeps_the_history_the_hub_would():
    """poll_once's history (dbops check --refreshes): each refresh's answered members, judged
    together (a replica's lag against the primary of the same refresh); a refresh a member did
    not answer keeps no point for it."""
    from dbops.engines.postgres.history import PgHistoryPoint
    from dbops.model import Snapshot
    from dbops.poller import keep_history

    from ..ui.frozen import NOW, MiB, primary_data, replica_data

    ref = parse("""
[environments.t.clusters.c]
engine = "postgres"
members = [{ name = "pg1", host = "127.0.0.1", role = "primary" }, { name = "pg3", host = "127.0.0.2", role = "replica" }]
""").clusters()[0]

    def snap(member: str, ts: float, data=None) -> Snapshot:
        reach = Reachability.UP if data is not None else Reachability.DOWN
        return Snapshot("t", "c", member, "postgres", reach, ts, 5.0, data=data, seq=1)

    history: dict = {}
    keep_history(ref, [snap("pg1", NOW, primary_data()), snap("pg3", NOW, replica_data(3 * MiB, 1.0))], history)
    keep_history(ref, [snap("pg1", NOW + 2, primary_data()), snap("pg3", NOW + 2)], history)
    # pg3's lag is the worst of its own view (3 MiB) and pg1's row for it (40 MiB, 14 s)
    assert history[(ref.key, "pg3")] == [PgHistoryPoint(NOW, 40 * MiB, 14.0, 6, 0x8000000)]
    assert [p.ts for p in history[(ref.key, "pg1")]] == [NOW, NOW + 2]
    keep_history(parse(CONFIG).clusters()[0], [], history)  # nothing polled, nothing kept
    assert len(history) == 2


FLEET = """
[defaults]
refresh_interval = 0.05
max_concurrent_polls = 2
max_concurrent_polls_per_engine = 2
[environments.t]
""" + "".join(f"""
[environments.t.clusters.c{i}]
engine = "postgres"
members = [{{ name = "a", host = "127.0.0.1" }}, {{ name = "b", host = "127.0.0.2" }}, {{ name = "c", host = "127.0.0.3" }}]
""" for i in range(3))


class Counting(Adapter):
    """Answers after a short wait, counting the polls in flight across every adapter."""

    kind = "counting"
    running = 0
    max_running = 0
    polls = 0

    async def collect(self):
        Counting.running += 1
        Counting.max_running = max(Counting.max_running, Counting.running)
        try:
            await asyncio.sleep(0.01)
            Counting.polls += 1
            return None
        finally:
            Counting.running -= 1

    async def close(self):
        pass

    def classify(self, exc):
        return Reachability.ERROR, str(exc)


async def test_polls_in_flight_never_exceed_the_bound(monkeypatch):
    from dbops import poller

    hub = poller.PollerHub(parse(FLEET))
    monkeypatch.setattr(hub, "_adapter", lambda r, m: Counting(r, m))
    Counting.running = Counting.max_running = Counting.polls = 0
    tasks = [asyncio.create_task(hub._member_loop(ref, m)) for ref in hub.refs for m in ref.poll_units]
    while Counting.polls < 40:
        await asyncio.sleep(0.01)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert Counting.max_running == 2  # nine members, two slots


async def test_a_clusters_members_answering_together_are_judged_once(monkeypatch):
    from dbops import poller
    from dbops.model import Snapshot

    hub = poller.PollerHub(parse(FLEET))
    judged: list[set[str]] = []
    real = poller.assess_cluster

    def counting(ref, snaps, baseline=None, now=None):
        judged.append({name for name, s in snaps.items() if s.reachability is Reachability.UP})
        return real(ref, snaps, baseline, now)

    monkeypatch.setattr(poller, "assess_cluster", counting)
    ref = hub.refs[0]
    for name in ("a", "b", "c"):
        hub._arrived(ref, Snapshot("t", ref.name, name, "postgres", Reachability.UP, 1.0, seq=1))
    assert judged == [{"a", "b", "c"}]  # one judgement, when the last of the three arrived
    # One member alone is judged after the window, with its peers' last snapshots.
    hub._arrived(ref, Snapshot("t", ref.name, "a", "postgres", Reachability.DOWN, 2.0, error="refused", seq=2))
    assert len(judged) == 1
    await asyncio.sleep(poller.RECORD_WINDOW * 2)
    assert judged[-1] == {"b", "c"} and hub.cluster_health(ref.key).members[0].snapshot.reachability is Reachability.DOWN


def test_only_the_cluster_open_is_read_in_detail():
    from dbops import poller

    hub = poller.PollerHub(parse(FLEET))
    first, second = hub.refs[:2]
    assert hub._adapter(first, first.poll_units[0]).detailed is False
    hub.watch(first.key)
    assert hub._adapter(first, first.poll_units[0]).detailed is True
    assert hub._adapter(second, second.poll_units[0]).detailed is False


def test_stop_ends_even_when_a_library_swallows_a_cancellation():
    """Python 3.11's asyncio.wait_for returns a result that arrives with the cancellation and
    drops the cancellation (a library's own timeouts do this); the hub must stop all the same."""
    import threading

    from dbops import poller

    class Stubborn(Counting):
        swallowed = 0

        async def collect(self):
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if Stubborn.swallowed:
                    raise
                Stubborn.swallowed += 1
                return None  # swallowed once, as a wait_for racing its inner future can

    hub = poller.PollerHub(parse(FLEET))
    hub._adapter = lambda r, m: Stubborn(r, m)  # type: ignore[method-assign]
    hub.start()
    import time

    time.sleep(0.2)
    hub.stop(timeout=5)
    assert Stubborn.swallowed == 1
    assert hub._thread is not None and not hub._thread.is_alive()
    assert not [t for t in threading.enumerate() if t.name == "dbops-pollers" and t.is_alive()]
