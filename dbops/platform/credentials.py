"""Credentials kept where production setups keep them: AWS Secrets Manager, a Kubernetes Secret,
and RDS IAM authentication tokens (the config's `{ aws_secret = ... }`, `{ k8s_secret = ... }`
and `{ rds_iam = true }`; env, file and value references are dbops.secrets.resolve's).

A value read from a service is cached in this process's memory only (never written anywhere),
so that every member's poll does not call the service: one read per reference until a server
refuses the value (dbops.secrets.with_reread drops it and reads it again: a rotation), and an
RDS IAM token is made anew once it is TOKEN_RENEW_SECONDS old (RDS accepts one for 15 minutes).

boto3 and the kubernetes client are imported inside the functions that read (through
dbops.platform.aws and dbops.platform.kubernetes), in a worker thread when read from the event
loop: never on the console's first paint. Every failure is a SecretError whose message names the
reference and says why (not found, no permission, key missing, unreachable), never a value.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import importlib
import json
import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dbops.secrets import Secret, SecretError
from dbops.secrets import resolve as resolve_local

if TYPE_CHECKING:
    from dbops.config import AwsLocation, ClusterRef, KubernetesRef, Member, SecretRef

__all__ = ["CACHE", "Cache", "Credential", "Target", "TOKEN_RENEW_SECONDS", "credential", "resolve"]

# RDS accepts an IAM token for 15 minutes after it was made; a new one is made after 10, so that
# a token handed to a connect is never about to expire.
TOKEN_RENEW_SECONDS = 600.0
K8S_TIMEOUT = 10.0

_ARN_REGION = re.compile(r"^arn:aws[\w-]*:secretsmanager:([a-z0-9-]+):")
# What to do about Secrets Manager's errors, added to AWS's own words.
_HINTS = {
    "ResourceNotFoundException": "there is no such secret in this region (check aws_secret, its name or ARN, and the region)",
    "AccessDeniedException": "these AWS credentials may not read it: secretsmanager:GetSecretValue on the secret",
    "DecryptionFailure": "its KMS key does not let these AWS credentials decrypt it (kms:Decrypt)",
    "InvalidRequestException": "the secret may be scheduled for deletion",
    "UnrecognizedClientException": "check the AWS credentials",
    "InvalidClientTokenId": "check access_key_id",
    "SignatureDoesNotMatch": "check secret_access_key",
    "ExpiredToken": "the session token has expired",
    "ExpiredTokenException": "the session token has expired",
}


@dataclass(frozen=True)
class Target:
    """What reading a reference needs besides the reference: the connection it is for (RDS IAM
    tokens are per host, port and user) and the cluster's AWS and Kubernetes locations."""

    host: str | None = None
    port: int | None = None
    user: str | None = None
    aws: AwsLocation | None = None  # the cluster's [rds] aws
    kubernetes: KubernetesRef | None = None  # the cluster's [kubernetes]
    timeout: float = K8S_TIMEOUT

    @classmethod
    def of(cls, ref: ClusterRef, member: Member | None = None) -> Target:
        c = ref.cluster
        return cls(host=member.host if member else None, port=member.port if member else None, user=c.user,
                   aws=c.rds.aws if c.rds is not None else None, kubernetes=c.kubernetes, timeout=max(ref.timeout, 5.0))


class Cache:
    """Credentials read from services, by reference and target, in memory only. One read at a
    time per key (the members of a cluster connect at once: one read, not one each)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._values: dict[Hashable, tuple[Secret, float]] = {}
        self._locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()
        self.reads: Counter[Hashable] = Counter()  # how often each key was read from its service

    def lookup(self, key: Hashable, max_age: float | None = None) -> Secret | None:
        with self._guard:
            found = self._values.get(key)
        if found is None or (max_age is not None and self.clock() - found[1] >= max_age):
            return None
        return found[0]

    def read(self, key: Hashable, fetch: Callable[[], Secret], max_age: float | None = None) -> Secret:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            cached = self.lookup(key, max_age)
            if cached is not None:
                return cached
            value = fetch()
            with self._guard:
                self._values[key] = (value, self.clock())
                self.reads[key] += 1
            return value

    def drop(self, key: Hashable, rejected: Secret | None = None) -> None:
        """Forget the value, unless it is no longer `rejected` (another connection already read
        the new one)."""
        with self._guard:
            found = self._values.get(key)
            if found is not None and (rejected is None or found[0].reveal() == rejected.reveal()):
                del self._values[key]

    def clear(self) -> None:
        with self._guard:
            self._values.clear()


CACHE = Cache()


class Credential:
    """One connection's credential (dbops.secrets.CredentialSource): env, file and value read
    each time as before; the kinds kept in a service read through the cache."""

    def __init__(self, ref: SecretRef | None, target: Target, cache: Cache | None = None) -> None:
        self.ref = ref
        self.target = target
        self.cache = cache if cache is not None else CACHE

    def describe(self) -> str:
        return self.ref.describe() if self.ref is not None else "no password"

    @property
    def rereadable(self) -> bool:
        return self.ref is not None and self.ref.remote

    @property
    def key(self) -> Hashable:
        ref, t = self.ref, self.target
        assert ref is not None
        aws = t.aws
        where: tuple[Any, ...] = ()
        if ref.aws_secret is not None or ref.rds_iam:
            loc = _aws_location(ref, t)
            keys = (loc.access_key_id.describe() if loc.access_key_id else None,
                    loc.secret_access_key.describe() if loc.secret_access_key else None)
            where = (loc.region, loc.endpoint_url, keys, aws is not None)
        if ref.k8s_secret is not None:
            where = _kube_where(ref, t)
        if ref.rds_iam:
            where += (t.host, t.port, t.user)
        return (ref.kind, ref.aws_secret, ref.k8s_secret, ref.key, where)

    @property
    def max_age(self) -> float | None:
        return TOKEN_RENEW_SECONDS if self.ref is not None and self.ref.rds_iam else None

    def read(self) -> Secret | None:
        """The credential, blocking (boto3 / the Kubernetes API): call it off the event loop."""
        ref = self.ref
        if ref is None or not ref.remote:
            return resolve_local(ref)
        return self.cache.read(self.key, lambda: _fetch(ref, self.target), self.max_age)

    async def get(self) -> Secret | None:
        ref = self.ref
        if ref is None or not ref.remote:
            return resolve_local(ref)
        cached = self.cache.lookup(self.key, self.max_age)
        return cached if cached is not None else await asyncio.to_thread(self.read)

    def invalidate(self, rejected: Secret | None) -> None:
        if self.rereadable:
            self.cache.drop(self.key, rejected)


def credential(ref: ClusterRef, member: Member | None = None, secret: SecretRef | None = None) -> Credential:
    """The credential a connection to `member` of cluster `ref` uses: the cluster's password, or
    `secret` (another of the cluster's references)."""
    return Credential(secret if secret is not None else ref.cluster.password, Target.of(ref, member))


def resolve(secret: SecretRef | None, target: Target | None = None) -> Secret | None:
    """Any reference's value, blocking (for code that runs in a worker thread)."""
    return Credential(secret, target or Target()).read()


# ---------------------------------------------------------------------------------------------
# Reading


def _fetch(ref: SecretRef, target: Target) -> Secret:
    if ref.k8s_secret is not None:
        with _quiet_bodies("kubernetes.client"):
            return _k8s_secret(ref, target)
    if ref.aws_secret is not None or ref.rds_iam:
        with _quiet_bodies("boto3.session", "botocore.auth", "botocore.parsers"):
            return _aws_secret(ref, target) if ref.aws_secret is not None else _rds_iam_token(ref, target)
    raise SecretError(f"{ref.describe()}: not a reference read from a service")


def _aws_location(ref: SecretRef, target: Target) -> AwsLocation:
    """Where to call AWS for `ref`: its own region / endpoint_url, else the region in the ARN,
    else the cluster's [rds] aws (whose keys are used too), else AWS_REGION / AWS_DEFAULT_REGION
    and boto3's credential chain."""
    from dbops.config import AwsLocation

    base = target.aws
    arn = _ARN_REGION.match(ref.aws_secret or "")
    region = (ref.region or (arn.group(1) if arn else None) or (base.region if base is not None else None)
              or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
    endpoint = ref.endpoint_url or (base.endpoint_url if base is not None else None)
    if base is None:
        return AwsLocation(region=region, endpoint_url=endpoint)
    return AwsLocation(region=region, endpoint_url=endpoint, access_key_id=base.access_key_id,
                       secret_access_key=base.secret_access_key)


def _aws_client(ref: SecretRef, target: Target, service: str) -> tuple[Any, AwsLocation, tuple[Secret | None, ...]]:
    from dbops.platform.aws import READ_TIMEOUT, TOTAL_ATTEMPTS, endpoint_shown, new_client, resolve_keys, safe_line

    what = ref.describe()
    aws = _aws_location(ref, target)
    try:
        keys = resolve_keys(aws)
    except SecretError as exc:
        raise SecretError(f"{what}: the cluster's [rds] AWS credentials: {exc}") from None
    try:
        return new_client(aws, service, keys, read_timeout=READ_TIMEOUT, attempts=TOTAL_ATTEMPTS), aws, keys
    except ValueError as exc:  # botocore's "Invalid endpoint: ..."
        raise SecretError(f"{what}: endpoint {endpoint_shown(aws, service)}: {safe_line(str(exc), keys)}") from None


def _aws_secret(ref: SecretRef, target: Target) -> Secret:
    from botocore.exceptions import BotoCoreError, ClientError

    from dbops.platform.aws import NO_CREDENTIALS, READ_TIMEOUT, endpoint_shown, explain

    what = ref.describe()
    client, aws, keys = _aws_client(ref, target, "secretsmanager")
    try:
        answer = client.get_secret_value(SecretId=ref.aws_secret)
    except (ClientError, BotoCoreError) as exc:
        message, _code = explain(
            exc, target=f"{what} in Secrets Manager ({aws.region})", endpoint=endpoint_shown(aws, "secretsmanager"),
            secrets=keys, read_timeout=READ_TIMEOUT, hints=_HINTS,
            no_credentials=f"{what}: no AWS credentials found; "
                           + NO_CREDENTIALS.format(where="cluster's [rds] aws = { ... }"))
        raise SecretError(message) from None
    finally:
        client.close()
    text = answer.get("SecretString")
    if not isinstance(text, str):
        raise SecretError(f"{what}: the secret holds no SecretString (a SecretBinary is not read)")
    return _pick(text, ref.key, what)


def _pick(text: str, key: str | None, what: str) -> Secret:
    """The whole SecretString, or its JSON object's `key`."""
    if key is None:
        return Secret(text)
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise SecretError(f"{what}: the SecretString is not a JSON object, so it has no key {key!r} "
                          "(leave key out to use the whole SecretString)")
    if key not in doc:
        raise SecretError(f"{what}: the secret has no key {key!r} (its keys: {_names(doc)})")
    value = doc[key]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise SecretError(f"{what}: the secret's {key!r} is not a string")
    return Secret(str(value))


def _names(d: dict[Any, Any]) -> str:
    names = sorted(str(k) for k in d)
    return ", ".join(names[:20]) + (" ..." if len(names) > 20 else "") if names else "none"


def _kube_where(ref: SecretRef, target: Target) -> tuple[str | None, str | None]:
    kube = target.kubernetes
    return (ref.kubeconfig or (kube.kubeconfig if kube is not None else None),
            ref.context or (kube.context if kube is not None else None))


def _k8s_secret(ref: SecretRef, target: Target) -> Secret:
    from dbops.platform.kubernetes import KubernetesError, connect

    what = ref.describe()
    ns, _, name = (ref.k8s_secret or "").partition("/")
    kubeconfig, context = _kube_where(ref, target)
    try:
        conn = connect(ns, kubeconfig, context, target.timeout)
    except KubernetesError as exc:
        raise SecretError(f"{what}: {exc}") from None
    try:
        obj = conn.call(f"read Secret {ns}/{name}", conn.core.read_namespaced_secret, name, ns)
    except KubernetesError as exc:
        if exc.status == 404:
            raise SecretError(f"{what}: no Secret {name!r} in namespace {ns!r} at {conn.server}") from None
        if exc.status == 403:
            raise SecretError(f"{what}: the Kubernetes credentials may not read Secret {ns}/{name} "
                              f"(RBAC: get on secrets in {ns}): {exc}") from None
        raise SecretError(f"{what}: {exc}") from None
    finally:
        conn.close()
    data = obj.get("data") if isinstance(obj, dict) else None
    data = data if isinstance(data, dict) else {}
    key = ref.key or ""
    if key not in data:
        raise SecretError(f"{what}: Secret {ns}/{name} has no data field {key!r} (its fields: {_names(data)})")
    try:
        value = base64.b64decode(str(data[key]), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise SecretError(f"{what}: Secret {ns}/{name}'s field {key!r} is not base64-encoded UTF-8 text") from None
    # `kubectl create secret --from-file` keeps the file's newline; it is never part of a password.
    return Secret(value.rstrip("\r\n"))


def _rds_iam_token(ref: SecretRef, target: Target) -> Secret:
    """An RDS IAM authentication token: boto3 signs it locally with the AWS credentials (no call
    to AWS); RDS checks it when the connection is made."""
    from botocore.exceptions import BotoCoreError, ClientError

    from dbops.platform.aws import NO_CREDENTIALS, READ_TIMEOUT, endpoint_shown, explain

    what = ref.describe()
    if not target.host or not target.port or not target.user:
        raise SecretError(f"{what}: a token is made for a connection's host, port and user; this one names none")
    client, aws, keys = _aws_client(ref, target, "rds")
    try:
        token = client.generate_db_auth_token(DBHostname=target.host, Port=target.port, DBUsername=target.user,
                                              Region=aws.region)
    except (ClientError, BotoCoreError) as exc:
        message, _code = explain(
            exc, target=f"{what} for {target.user}@{target.host}:{target.port}", endpoint=endpoint_shown(aws, "rds"),
            secrets=keys, read_timeout=READ_TIMEOUT,
            no_credentials=f"{what}: no AWS credentials to sign it with; "
                           + NO_CREDENTIALS.format(where="cluster's [rds] aws = { ... }"))
        raise SecretError(message) from None
    finally:
        client.close()
    return Secret(str(token))


# botocore logs every response body at DEBUG ("Response body: ..."): a GetSecretValue's holds the
# secret; botocore.auth logs a token's signature. While this thread reads a credential, every
# record of the client libraries' loggers from this thread is dropped, whatever level a user logs
# at (other threads' records are untouched).
_reading = threading.local()
_LIBRARIES = ("boto3", "botocore", "kubernetes", "urllib3", "s3transfer")


class _DropWhileReading(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_reading, "active", False)


_FILTER = _DropWhileReading()


class _quiet_bodies:
    """The block's reads log nothing through the client libraries' loggers. The `modules` that
    read are imported first, so that every logger they make exists when the filter is put on."""

    def __init__(self, *modules: str) -> None:
        self.modules = modules

    def __enter__(self) -> None:
        for module in self.modules:
            importlib.import_module(module)
        for name, logger in list(logging.Logger.manager.loggerDict.items()):
            if isinstance(logger, logging.Logger) and name.split(".")[0] in _LIBRARIES and _FILTER not in logger.filters:
                logger.addFilter(_FILTER)
        _reading.active = True

    def __exit__(self, *exc: object) -> None:
        _reading.active = False
