"""Kafka's drill probe (dbops.drill.probe.Probe): one record per write, key and value the write's
number, to a topic of the drill's own (`dbops-drill-<run id>`), produced with acks=all and read
back by a consumer of no group. The clients are built like the engine's own (client_kwargs: the
cluster's bootstrap brokers, TLS and SASL), with request timeouts that fit the drill loop's.

The topic has one partition: its records stay in order, a read-back is one fetch from one leader,
and a drill that stops the partition's leader measures that leader's failover. It is replicated
to min(3, brokers) with min.insync.replicas = 2 where there are three brokers or more, so a write
acknowledged with acks=all is on two brokers at least and survives the loss of any one. With
fewer brokers min.insync.replicas is 1: 2 would stop every write at the loss of either broker of
two (and always, with one), and the drill would measure the topic's setting, not the cluster.

Each call ends itself within CALL_BOUND, inside the loop's own 2 s bound (CALL_TIMEOUT), so the
loop never has to cancel one half-way through its clean-up. reset() closes the producer and the
reader within STOP_BOUND, so nothing of a timed-out call runs on behind it: a write still queued
is delivered or expires within the request timeout first (the producer is not idempotent, whose
batches never expire), and the reader's fetches are cancelled.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Sequence
from typing import Any

from dbops.config import ClusterRef
from dbops.engines.base import import_off_loop
from dbops.engines.kafka import client as kc

TOPIC_PREFIX = "dbops-drill-"
PARTITIONS = 1
CLIENT_ID = "dbops-drill-probe"  # how the brokers' request logs name the probe's clients
# One write or read, reconnecting included, ends within this (the drill loop gives each call 2 s,
# dbops.drill.probe.CALL_TIMEOUT: the difference is the clean-up's, after a failure).
CALL_BOUND = 1.5
# aiokafka's bound on one request (and on one bootstrap attempt, a produce's wait for the
# replicas' acks, a queued record's wait for a leader): a dead broker costs it once per call.
REQUEST_TIMEOUT = 1.0
READ_WAIT = 1.0  # how long read() polls for the record (counted from the call's start)
PRESENT_TIMEOUT = 90.0  # present() reads the whole topic once (the drill allows it 120 s)
STOP_BOUND = 2.0  # closing one client
# Kafka error codes the probe expects as answers, not failures.
UNKNOWN_TOPIC_OR_PARTITION = 3
TOPIC_ALREADY_EXISTS = 36


def topic_name(run_id: str) -> str:
    # Kafka topic names are [a-zA-Z0-9._-]; a drill id already is, the plan's "<run id>" is not.
    return TOPIC_PREFIX + re.sub(r"[^a-zA-Z0-9._-]", "-", run_id)


def _encode(seq: int) -> bytes:
    return str(int(seq)).encode()


class KafkaProbe:
    def __init__(self, ref: ClusterRef, run_id: str):
        self.ref = ref
        self.run_id = run_id
        self.topic = topic_name(run_id)
        self.target = f"topic {self.topic} (acks=all) through brokers {', '.join(kc.bootstrap(ref))}"
        self._producer: Any = None
        self._reader: Any = None
        self._partitions: list[int] | None = None  # the topic's partition ids, once known
        self._positions: dict[int, int] = {}  # partition -> next offset the reader reads
        self._seen: set[int] = set()  # every seq the reader has read
        self._connects = 0

    def commands(self) -> list[str]:
        return [
            f"CreateTopics {self.topic}: {PARTITIONS} partition, replication factor min(3, brokers), "
            "min.insync.replicas=2 (1 with fewer than 3 brokers)",
            f"Produce to {self.topic}: key = value = <seq>, acks=all  -- every 0.1 s",
            f"Fetch {self.topic} from where the last read-back stopped, no consumer group, until <seq> is seen  -- read back",
            f"DeleteTopics {self.topic}  -- at the end of the drill",
        ]

    # -- clients ---------------------------------------------------------------------------------

    def _servers(self) -> list[str]:
        """The bootstrap brokers, a different one first at each connect: aiokafka tries them in
        order, and a hung first broker must not cost every reconnect its timeout."""
        servers = kc.bootstrap(self.ref)
        k = self._connects % len(servers)
        self._connects += 1
        return servers[k:] + servers[:k]

    async def _admin(self) -> Any:
        await import_off_loop("aiokafka.admin")
        return await kc.admin(self.ref, kc.Credentials(self.ref).password, self._servers())

    async def _topic_metadata(self, admin: Any) -> dict[str, Any]:
        """The topic's metadata, asked for without allow_auto_topic_creation: aiokafka's own
        metadata requests set it, and a broker with auto.create.topics.enable would recreate a
        dropped or lost topic (empty, with the broker's defaults) just by being asked."""
        from aiokafka.protocol.metadata import MetadataRequest

        response = await admin._send_request(MetadataRequest([self.topic], allow_auto_topic_creation=False))
        raw = next((t for t in response.to_object()["topics"] if t["topic"] == self.topic), None)
        if raw is None or raw["error_code"] == UNKNOWN_TOPIC_OR_PARTITION:
            raise LookupError(f"topic {self.topic} does not exist on {self.ref.key}")
        if raw["error_code"]:
            raise RuntimeError(f"metadata of topic {self.topic}: {kc.error_name(raw['error_code'])}")
        topic: dict[str, Any] = raw
        return topic

    async def _partition_ids(self) -> list[int]:
        if self._partitions is None:
            admin = await self._admin()
            try:
                meta = await self._topic_metadata(admin)
            finally:
                await kc.close(admin)
            self._partitions = sorted(int(p["partition"]) for p in meta["partitions"])
        return self._partitions

    async def _ensure_producer(self) -> Any:
        if self._producer is None:
            aiokafka = await import_off_loop("aiokafka")
            kw = {**kc.client_kwargs(self.ref, kc.Credentials(self.ref).password, self._servers(), REQUEST_TIMEOUT),
                  "client_id": CLIENT_ID}
            # Not idempotent: aiokafka never expires an idempotent producer's batch (it retries
            # until it succeeds), so after its leader's loss a write the loop gave up on would hold
            # the producer's close until the leadership moved. A plain batch expires after the
            # request timeout. What idempotence would spare, a batch resent after an unanswered
            # attempt and appended twice, costs nothing here: a seq is read back as a set member.
            producer = aiokafka.AIOKafkaProducer(**kw, acks="all", linger_ms=0)
            # The engine's start: on failure the client is closed, and behind TLS or SASL the
            # error is the broker's reason (a certificate, the credentials), not "Unable to bootstrap".
            await kc._start(producer, kw)
            self._producer = producer
        return self._producer

    async def _ensure_reader(self) -> tuple[Any, list[Any]]:
        from aiokafka import TopicPartition

        tps = [TopicPartition(self.topic, p) for p in await self._partition_ids()]
        if self._reader is None:
            consumer = await kc.consumer(self.ref, kc.Credentials(self.ref).password, servers=self._servers(),
                                         request_timeout=REQUEST_TIMEOUT)
            try:
                consumer.assign(tps)
                for tp in tps:
                    # Where the last reader stopped (a reconnect does not read the topic again);
                    # a position the log no longer has (truncated by an unclean leader election)
                    # is reset to the end by the consumer, and the next records read from there.
                    if tp.partition in self._positions:
                        consumer.seek(tp, self._positions[tp.partition])
                    else:
                        await consumer.seek_to_beginning(tp)
            except BaseException:
                await kc.close(consumer)
                raise
            self._reader = consumer
        return self._reader, tps

    def _take(self, batch: dict[Any, list[Any]], ends: dict[Any, int] | None = None) -> set[int]:
        """The seqs of one getmany() (below `ends` when given), the reader's positions advanced."""
        seqs: set[int] = set()
        for tp, records in batch.items():
            for r in records:
                if ends is None or r.offset < ends[tp]:
                    seqs.add(int(r.value))
            if records and ends is None:
                self._positions[tp.partition] = records[-1].offset + 1
        return seqs

    async def _stop(self, client: Any, what: str) -> None:
        """Close one client within STOP_BOUND; raises when it would not (the loop reports it).
        A producer's stop() first delivers or expires what is still queued (a write the loop
        gave up on): within REQUEST_TIMEOUT, as its batches are not idempotent."""
        if client is None:
            return
        try:
            async with asyncio.timeout(STOP_BOUND):
                try:
                    await client.stop()
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise  # this call was cancelled (or ran out of time), not a request of aiokafka's
                    await _finish_consumer_stop(client)
        except TimeoutError as exc:
            raise TimeoutError(f"the probe's {what} did not close within {STOP_BOUND:g}s") from exc

    # -- the probe -------------------------------------------------------------------------------

    async def open(self) -> None:
        from aiokafka.admin import NewTopic

        admin = await self._admin()
        try:
            # The configured brokers too: with one of three missing from the metadata (restarting),
            # a topic of two replicas would make the drill measure a weaker durability than the
            # cluster's. Creating three replicas on two brokers fails, and the drill does not start.
            brokers = max(len(admin._client.cluster.brokers()), len(self.ref.cluster.members))
            replicas = min(3, max(1, brokers))
            configs = {"min.insync.replicas": "2" if replicas >= 3 else "1"}
            response = await admin.create_topics([NewTopic(self.topic, PARTITIONS, replicas, topic_configs=configs)])
            for row in response.topic_errors:
                code, message = row[1], (row[2] if len(row) > 2 else None)
                if code and code != TOPIC_ALREADY_EXISTS:  # already there: open() again, nothing to do
                    raise RuntimeError(f"CreateTopics {self.topic}: {kc.error_name(code)}" + (f": {message}" if message else ""))
            # The controller answers before every broker has the topic: wait for a leader of each
            # partition, or the first write waits for it (and may time out).
            deadline = asyncio.get_running_loop().time() + self.ref.timeout * 3
            while True:
                try:
                    meta = await self._topic_metadata(admin)
                    if all(p["leader"] >= 0 and not p["error_code"] for p in meta["partitions"]) and meta["partitions"]:
                        break
                    why = "no leader yet"
                except LookupError as exc:  # the broker asked has not applied the creation yet
                    why = str(exc)
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"topic {self.topic} was created but has {why} after {self.ref.timeout * 3:g}s")
                await asyncio.sleep(0.2)
            self._partitions = sorted(int(p["partition"]) for p in meta["partitions"])
        finally:
            await kc.close(admin)
        async with asyncio.timeout(self.ref.timeout):
            await self._ensure_producer()
        await self._await_writable(deadline)

    async def _await_writable(self, deadline: float) -> None:
        """Writes record 0 (never a drill's seq: they start at 1) until the topic acknowledges it.
        A new topic's followers start fetching a moment after its leader is elected; until they do,
        an acks=all write waits for them, and on a busy machine longer than REQUEST_TIMEOUT. The
        drill's steady state must count writes, not the topic's first second."""
        from aiokafka.errors import KafkaError  # imported by the producer already

        loop = asyncio.get_running_loop()
        while True:
            try:
                await self.write(0)
                return
            except (TimeoutError, OSError, KafkaError) as exc:  # RequestTimedOut, NotEnoughReplicas...
                failure: Exception = exc
            if loop.time() > deadline:
                raise TimeoutError(f"topic {self.topic} did not acknowledge a write within {self.ref.timeout * 3:g}s "
                                   f"of its creation: "
                                   f"{type(failure).__name__}: {failure}") from failure
            await asyncio.sleep(0.2)

    async def write(self, seq: int) -> None:
        async with asyncio.timeout(CALL_BOUND):
            producer = await self._ensure_producer()
            await producer.send_and_wait(self.topic, value=_encode(seq), key=_encode(seq))

    async def read(self, seq: int) -> bool:
        if seq in self._seen:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READ_WAIT
        async with asyncio.timeout(CALL_BOUND):
            reader, tps = await self._ensure_reader()
            while seq not in self._seen:
                left = deadline - loop.time()
                if left <= 0:
                    return False
                # What is new since the last call: a few records, the one sought last.
                self._seen |= self._take(await reader.getmany(*tps, timeout_ms=max(1, int(left * 1000))))
            return True

    async def present(self, seqs: Sequence[int]) -> set[int]:
        """Reads the topic from its beginning to its end offsets (taken first) with a consumer of
        its own, and says which of `seqs` it holds."""
        found: set[int] = set()
        try:
            async with asyncio.timeout(PRESENT_TIMEOUT):
                partitions = await self._partition_ids()
                consumer = await kc.consumer(self.ref, kc.Credentials(self.ref).password, servers=self._servers())
                try:
                    found = await self._read_all(consumer, partitions, found)
                finally:
                    await self._stop(consumer, "consumer")
        except TimeoutError as exc:
            raise TimeoutError(f"topic {self.topic} was not read to its end within {PRESENT_TIMEOUT:g}s "
                               f"({len(found)} records read)") from exc
        return found & set(seqs)

    async def _read_all(self, consumer: Any, partitions: Iterable[int], found: set[int]) -> set[int]:
        from aiokafka import TopicPartition

        tps = [TopicPartition(self.topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends: dict[Any, int] = await consumer.end_offsets(tps)
        todo = [tp for tp in tps if await consumer.position(tp) < ends[tp]]
        while todo:
            found |= self._take(await consumer.getmany(*todo, timeout_ms=500), ends)
            todo = [tp for tp in todo if await consumer.position(tp) < ends[tp]]
        return found

    async def reset(self) -> None:
        producer, self._producer = self._producer, None
        reader, self._reader = self._reader, None
        results = await asyncio.gather(self._stop(producer, "producer"), self._stop(reader, "consumer"),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    async def close(self, drop: bool) -> None:
        try:
            await self.reset()
        finally:
            if drop:
                await self._drop()

    async def _drop(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ref.timeout * 3
        while True:  # right after a broker's loss the controller may be moving: ask again
            try:
                admin = await self._admin()
                try:
                    response = await admin.delete_topics([self.topic])
                finally:
                    await kc.close(admin)
                for _topic, code in response.topic_error_codes:
                    if code and code != UNKNOWN_TOPIC_OR_PARTITION:  # unknown: already gone
                        raise RuntimeError(f"DeleteTopics {self.topic}: {kc.error_name(code)}")
                return
            except Exception:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.5)


async def _finish_consumer_stop(consumer: Any) -> None:
    """What AIOKafkaConsumer.stop() leaves undone when it raises CancelledError (aiokafka issue
    #647, still so in 0.14): Fetcher.close() cancels the fetch requests in flight and awaits each
    without catching its CancelledError, so the first one it awaits ends stop() there, before the
    others are cancelled and the connections closed. A consumer whose broker has just gone has such
    requests. Finish it: the rest of the requests cancelled and awaited (their CancelledError is
    the cancellation asked for), then the client (connections, metadata task) closed."""
    fetcher = getattr(consumer, "_fetcher", None)
    pending = [t for t in list(getattr(fetcher, "_pending_tasks", ())) if not t.done()]
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    await consumer._client.close()
