"""Connections to a Kafka cluster with its credentials and TLS, and errors turned into states and
sentences an operator can use. aiokafka is imported here, on first use.

The security protocol follows from the config: `tls.mode` require / verify-ca / verify-full
means SSL, a `user` means SASL (`kafka.sasl_mechanism`, the cluster's `password`).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from dbops.config import ClusterRef
from dbops.engines.base import classify_redacted
from dbops.model import Reachability, first_line
from dbops.secrets import Secret, resolve
from dbops.tls import ENCRYPTED, client_context


def bootstrap(ref: ClusterRef) -> list[str]:
    return [f"{m.host}:{m.port}" for m in ref.cluster.members]


def security_protocol(ref: ClusterRef) -> str:
    tls = ref.cluster.tls.mode in ENCRYPTED
    sasl = ref.cluster.user is not None
    return {(False, False): "PLAINTEXT", (True, False): "SSL", (False, True): "SASL_PLAINTEXT", (True, True): "SASL_SSL"}[(tls, sasl)]


def ssl_context(ref: ClusterRef) -> ssl.SSLContext | None:
    return client_context(ref.cluster.tls) if ref.cluster.tls.mode in ENCRYPTED else None


def client_kwargs(ref: ClusterRef, password: Secret | None, servers: list[str] | None = None,
                  request_timeout: float | None = None) -> dict[str, Any]:
    """What every aiokafka client of this cluster is built with. Timeouts are the cluster's: a
    dead broker must cost one timeout, not aiokafka's 40 s default."""
    kafka = ref.cluster.kafka
    assert kafka is not None
    kw: dict[str, Any] = {
        # aiokafka tries them in order, each for up to the request timeout: a caller that knows
        # which brokers answered lately puts them first.
        "bootstrap_servers": servers or bootstrap(ref),
        "client_id": "dbops",
        # Also what one bootstrap attempt may cost: a poller passes its per-broker share.
        "request_timeout_ms": int((request_timeout or ref.timeout) * 1000),
        "security_protocol": security_protocol(ref),
        "ssl_context": ssl_context(ref),
    }
    if ref.cluster.user is not None:
        kw.update(sasl_mechanism=kafka.sasl_mechanism, sasl_plain_username=ref.cluster.user,
                  sasl_plain_password=password.reveal() if password is not None else None)
    return kw


async def admin(ref: ClusterRef, password: Secret | None, servers: list[str] | None = None,
                request_timeout: float | None = None) -> Any:
    """A started admin client (it bootstraps from the first broker that answers)."""
    from aiokafka.admin import AIOKafkaAdminClient

    kw = client_kwargs(ref, password, servers, request_timeout)
    client = AIOKafkaAdminClient(**kw)
    await _start(client, kw)
    return client


async def consumer(ref: ClusterRef, password: Secret | None, group_id: str | None = None,
                   servers: list[str] | None = None, request_timeout: float | None = None) -> Any:
    """A started consumer that subscribes to nothing: offsets are asked for explicitly (ListOffsets,
    batched per partition leader) and, with a group id, committed explicitly."""
    from aiokafka import AIOKafkaConsumer

    kw = client_kwargs(ref, password, servers, request_timeout)
    client = AIOKafkaConsumer(**kw, group_id=group_id, enable_auto_commit=False,
                              # the consumer's own default (40 s) must not outlast the refresh
                              connections_max_idle_ms=540000)
    await _start(client, kw)
    return client


async def _start(client: Any, kw: dict[str, Any]) -> None:
    try:
        await client.start()
    except BaseException as exc:
        await close(client)
        from aiokafka.errors import KafkaConnectionError

        if isinstance(exc, KafkaConnectionError) and kw["security_protocol"] != "PLAINTEXT":
            reason = await _bootstrap_failure(kw)
            if reason is not None:
                # Not `from exc`: that would replace the reason's own __cause__ (the TLS error the
                # operator needs); the bootstrap error stays its __context__.
                raise reason  # noqa: B904
        raise


async def connection(kw: dict[str, Any], address: str) -> Any:
    """A connection of its own to one broker, with the client settings `kw` (client_kwargs).
    aiokafka's clients open their connections one at a time under one lock, so a broker that
    accepts connections but answers nothing holds up connecting to every other: what must reach
    each broker independently (the liveness probe) uses these."""
    from aiokafka.conn import create_conn

    host, _, port = address.rpartition(":")
    return await create_conn(host, int(port), client_id=kw["client_id"], request_timeout_ms=kw["request_timeout_ms"],
                             ssl_context=kw["ssl_context"], security_protocol=kw["security_protocol"],
                             sasl_mechanism=kw.get("sasl_mechanism"), sasl_plain_username=kw.get("sasl_plain_username"),
                             sasl_plain_password=kw.get("sasl_plain_password"))


async def list_groups(conn: Any) -> list[str]:
    """The consumer groups a broker coordinates (ListGroups on a connection of its own)."""
    from aiokafka.protocol.admin import ListGroupsRequest

    response = await conn.send(ListGroupsRequest())
    if response.error_code:
        raise RuntimeError(f"ListGroups failed: {error_name(response.error_code)}")
    return [g[0] for g in response.groups]


async def _bootstrap_failure(kw: dict[str, Any]) -> BaseException | None:
    """Why no broker could be bootstrapped from: aiokafka only logs each broker's error and raises
    a bare "Unable to bootstrap", but with TLS or SASL the reason (a certificate, the credentials,
    a port that does not speak TLS) is what the operator needs. One direct connection to each
    bootstrap broker, concurrently, each bounded by the request timeout; None if all succeed now."""
    async def attempt(address: str) -> None:
        try:
            conn = await connection(kw, address)
        except (ConnectionResetError, ConnectionAbortedError, asyncio.IncompleteReadError) as exc:
            if kw["ssl_context"] is None:
                raise
            # Raised by the TLS handshake (aiokafka wraps later failures in KafkaConnectionError):
            # typically a PLAINTEXT listener, which drops a TLS client's first bytes.
            raise ssl.SSLError(ssl.SSL_ERROR_EOF, f"{address} closed the connection during the TLS handshake "
                               f"({type(exc).__name__}); is it a TLS (SSL or SASL_SSL) listener?") from exc
        conn.close()

    results = await asyncio.gather(*(attempt(a) for a in kw["bootstrap_servers"]), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if not errors:
        return None
    import aiokafka.errors as ke

    # The most telling first: the credentials, then TLS, then anything else.
    for kinds in ((ke.SaslAuthenticationFailed, ke.AuthenticationFailedError, ke.AuthenticationMethodNotSupported,
                   ke.UnsupportedSaslMechanismError), (ssl.SSLError,)):
        found = next((e for e in errors if isinstance(e, kinds)), None)
        if found is not None:
            return found
    return errors[0]


async def close(client: Any) -> None:
    """Close a client, bounded: a stopped broker must not hold up the caller."""
    if client is None:
        return
    stop = getattr(client, "close", None) or client.stop
    try:
        await asyncio.wait_for(stop(), timeout=2.0)
    except (TimeoutError, OSError, ConnectionError):
        # The sockets are dead or stuck; dropping our reference is all that is left to do.
        pass


class Credentials:
    """A cluster's resolved password (None without SASL). Resolved once per connect."""

    def __init__(self, ref: ClusterRef) -> None:
        self.password: Secret | None = resolve(ref.cluster.password) if ref.cluster.user is not None else None


def classify(exc: BaseException, where: str, timeout: float, *secrets: Secret | None) -> tuple[Reachability, str]:
    return classify_redacted(exc, where, timeout, _driver_reachability, *secrets)


def _driver_reachability(exc: BaseException, where: str, timeout: float) -> tuple[Reachability, str]:
    """aiokafka's own errors (classify_redacted has judged the common ones)."""
    import aiokafka.errors as ke

    if isinstance(exc, (ke.SaslAuthenticationFailed, ke.AuthenticationFailedError, ke.AuthenticationMethodNotSupported)):
        return Reachability.AUTH, f"{where} rejected the credentials: {first_line(str(exc))}"
    if isinstance(exc, (ke.TopicAuthorizationFailedError, ke.GroupAuthorizationFailedError, ke.ClusterAuthorizationFailedError)):
        return Reachability.AUTH, f"{where}: not authorized: {type(exc).__name__}"
    if isinstance(exc, (ke.KafkaTimeoutError, ke.RequestTimedOutError)):
        return Reachability.TIMEOUT, f"no answer from {where} within {timeout:g}s"
    if isinstance(exc, ssl.SSLError) or isinstance(exc.__cause__, ssl.SSLError):
        tls_error = exc if isinstance(exc, ssl.SSLError) else exc.__cause__
        return Reachability.TLS, f"TLS with {where} failed: {first_line(str(tls_error))}"
    if isinstance(exc, (ke.KafkaConnectionError, ke.NodeNotReadyError)):
        return Reachability.DOWN, f"no broker of {where} answers: {first_line(str(exc)) or type(exc).__name__}"
    if isinstance(exc, ke.KafkaError):
        return Reachability.ERROR, f"{where} answered an error: {type(exc).__name__} {first_line(str(exc))}".rstrip()
    if isinstance(exc, (ConnectionError, OSError)):
        return Reachability.DOWN, f"connection to {where} failed: {first_line(str(exc)) or type(exc).__name__}"
    return Reachability.ERROR, f"{where}: {type(exc).__name__}: {first_line(str(exc))}"


async def metadata(admin_client: Any, node_id: int | None = None) -> dict[str, Any]:
    """Brokers, controller id, cluster id and every topic's partitions in one Metadata request,
    to `node_id` (a broker known to answer) or, when None, a random known broker. aiokafka's
    describe_cluster and describe_topics each send the same request to a random broker."""
    from aiokafka.protocol.metadata import MetadataRequest

    response = await admin_client._send_request(MetadataRequest(None), node_id)
    return response.to_object()


async def metadata_from_each_broker(admin_client: Any, timeout: float) -> dict[str, Any]:
    """One Metadata request (as `metadata`) to each broker the client knows, in turn, until one
    answers. aiokafka's own pick is random, and three picks in a row can all land on the broker
    that died a moment ago (still in the metadata until the controller fences it)."""
    from aiokafka.errors import KafkaConnectionError, NodeNotReadyError

    nodes: list[Any] = sorted((b.nodeId for b in admin_client._client.cluster.brokers()), key=str)
    error: BaseException | None = None
    for node in nodes or [None]:
        try:
            return await asyncio.wait_for(metadata(admin_client, node), timeout=timeout)
        except (TimeoutError, KafkaConnectionError, NodeNotReadyError) as exc:
            error = exc
    assert error is not None
    raise error


async def from_any_broker(call: Any, attempts: int, timeout: float | Any) -> Any:
    """`call()` (a request aiokafka sends to a random known broker) until one answers: a broker
    that has just died or restarted stays in the metadata for a while and must not fail the
    request. Each attempt is bounded by `timeout` (seconds, or a function giving them, so a
    caller's overall deadline can shrink it)."""
    from aiokafka.errors import KafkaConnectionError, NodeNotReadyError

    for attempt in range(attempts):
        try:
            return await asyncio.wait_for(call(), timeout=timeout() if callable(timeout) else timeout)
        except (TimeoutError, KafkaConnectionError, NodeNotReadyError):
            if attempt == attempts - 1:
                raise
    raise ValueError("attempts must be at least 1")


def error_name(code: int) -> str:
    """A broker's error code as its Kafka name (e.g. LEADER_NOT_AVAILABLE's class)."""
    import aiokafka.errors as ke

    return ke.for_code(code).__name__


# -- ElectLeaders (KIP-460), which aiokafka's admin client does not offer --------------------------

PREFERRED_ELECTION = 0


def elect_leaders_request(partitions: dict[str, list[int]], timeout_ms: int) -> Any:
    """An ElectLeaders request (API key 43) for the preferred replica of `partitions`; aiokafka
    negotiates v0 or v1 with the broker (v1 names the election type, v0 is always preferred)."""
    from aiokafka.protocol.api import Request, RequestStruct, Response
    from aiokafka.protocol.types import Array, Int8, Int16, Int32, Schema, String

    result = ("replica_election_results", Array(("topic", String("utf-8")), ("partition_result", Array(
        ("partition_id", Int32), ("error_code", Int16), ("error_message", String("utf-8"))))))

    class ElectLeadersResponse_v0(Response):
        API_KEY = 43
        API_VERSION = 0
        SCHEMA = Schema(("throttle_time_ms", Int32), result)

    class ElectLeadersResponse_v1(Response):
        API_KEY = 43
        API_VERSION = 1
        SCHEMA = Schema(("throttle_time_ms", Int32), ("error_code", Int16), result)

    topic_partitions = ("topic_partitions", Array(("topic", String("utf-8")), ("partitions", Array(Int32))))

    class ElectLeadersRequest_v0(RequestStruct):
        API_KEY = 43
        API_VERSION = 0
        RESPONSE_TYPE = ElectLeadersResponse_v0
        SCHEMA = Schema(topic_partitions, ("timeout_ms", Int32))

    class ElectLeadersRequest_v1(RequestStruct):
        API_KEY = 43
        API_VERSION = 1
        RESPONSE_TYPE = ElectLeadersResponse_v1
        SCHEMA = Schema(("election_type", Int8), topic_partitions, ("timeout_ms", Int32))

    class ElectLeadersRequest(Request[ElectLeadersRequest_v0 | ElectLeadersRequest_v1]):
        API_KEY = 43

        def build(self, request_struct_class: Any) -> Any:
            tps = [(t, ps) for t, ps in sorted(partitions.items())]
            if request_struct_class.API_VERSION == 0:
                return request_struct_class(tps, timeout_ms)
            return request_struct_class(PREFERRED_ELECTION, tps, timeout_ms)

    return ElectLeadersRequest()


async def elect_preferred_leaders(admin_client: Any, partitions: dict[str, list[int]], timeout_ms: int) -> dict[tuple[str, int], str | None]:
    """Ask the controller to move leadership of `partitions` to their preferred replicas:
    (topic, partition) -> None when elected (or already the leader), else the error's name."""
    # The admin client sends controller requests to the broker its metadata names as controller
    # (in KRaft, a broker that forwards them to the active controller).
    response = await admin_client._send_to_controller(elect_leaders_request(partitions, timeout_ms))
    top = getattr(response, "error_code", 0)
    if top:
        raise RuntimeError(f"ElectLeaders failed: {error_name(top)}")
    out: dict[tuple[str, int], str | None] = {}
    for topic, results in response.replica_election_results:
        for partition_id, code, message in results:
            # ELECTION_NOT_NEEDED (84): the preferred replica already leads.
            out[(topic, partition_id)] = None if code in (0, 84) else f"{error_name(code)}: {message or ''}".rstrip(": ")
    return out


# -- DescribeQuorum (KIP-595/836): the KRaft controller quorum, which aiokafka does not offer -------

def describe_quorum_request() -> Any:
    """DescribeQuorum v0 (API key 55, a flexible version) for __cluster_metadata-0. A broker
    forwards it to the active controller; the metadata's own controller id is a random broker."""
    from aiokafka.protocol.api import Request, RequestStruct, Response
    from aiokafka.protocol.types import CompactArray, CompactString, Int16, Int32, Int64, Schema, TaggedFields

    replica = CompactArray(("replica_id", Int32), ("log_end_offset", Int64), ("tags", TaggedFields))

    class DescribeQuorumResponse_v0(Response):
        API_KEY = 55
        API_VERSION = 0
        SCHEMA = Schema(
            ("error_code", Int16),
            ("topics", CompactArray(
                ("topic_name", CompactString("utf-8")),
                ("partitions", CompactArray(
                    ("partition_index", Int32), ("error_code", Int16), ("leader_id", Int32), ("leader_epoch", Int32),
                    ("high_watermark", Int64), ("current_voters", replica), ("observers", replica), ("tags", TaggedFields))),
                ("tags", TaggedFields))),
            ("tags", TaggedFields))

    class DescribeQuorumRequest_v0(RequestStruct):
        FLEXIBLE_VERSION = True
        API_KEY = 55
        API_VERSION = 0
        RESPONSE_TYPE = DescribeQuorumResponse_v0
        SCHEMA = Schema(
            ("topics", CompactArray(
                ("topic_name", CompactString("utf-8")),
                ("partitions", CompactArray(("partition_index", Int32), ("tags", TaggedFields))),
                ("tags", TaggedFields))),
            ("tags", TaggedFields))

    class DescribeQuorumRequest(Request[DescribeQuorumRequest_v0]):
        API_KEY = 55

        def build(self, request_struct_class: Any) -> Any:
            return request_struct_class([("__cluster_metadata", [(0, {})], {})], {})

    return DescribeQuorumRequest()


async def describe_quorum(admin_client: Any, node_id: int | None = None) -> tuple[int, int, tuple[tuple[int, int], ...]]:
    """(leader id, high watermark, ((voter id, log end offset), ...)) of the metadata quorum,
    asked of `node_id` (or a random known broker)."""
    response = await admin_client._send_request(describe_quorum_request(), node_id)
    if response.error_code:
        raise RuntimeError(f"DescribeQuorum failed: {error_name(response.error_code)}")
    _topic, partitions, _tags = response.topics[0]
    _index, code, leader, _epoch, hw, voters, _observers, _ptags = partitions[0]
    if code:
        raise RuntimeError(f"DescribeQuorum failed: {error_name(code)}")
    return leader, hw, tuple((v[0], v[1]) for v in voters)
