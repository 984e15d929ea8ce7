"""PostgreSQL passwords kept where production keeps them, against real servers: AWS Secrets
Manager (the sandbox's moto server, over HTTP), a Kubernetes Secret (the API stand-in) and the
sandbox's PostgreSQL 15.

What an operator sees is asserted: `dbops check` finds every member up, a rotated password is
read again once and the connection made, a missing or wrong secret is an AUTH state whose message
names the reference, and no value ever appears in a message, the output or the log.

RDS IAM tokens are not here: the sandbox PostgreSQL cannot verify one (only RDS can), and boto3
makes them locally without calling AWS; tests/unit/test_secrets_credentials.py checks what a
token says and that it is made anew before it expires.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import os
import re
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from dbops.config import ClusterRef, SecretRef, load
from dbops.engines.postgres.adapter import PostgresAdapter
from dbops.model import Reachability
from dbops.platform.credentials import CACHE, Credential, Target
from dbops.secrets import CredentialRejected

from ..fakes.kubernetes import ApiError, Kube

NS = "dbops-credentials"
ROLE = "dbops_rotated"


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers


def sandbox_ref(pg_sandbox: Any) -> ClusterRef:
    cfg = load(pg_sandbox.config_path)
    return next(r for r in cfg.clusters() if r.cluster.engine == "postgres" and r.cluster.rds is not None)


@pytest.fixture(scope="module")
def secretsmanager(pg_sandbox: Any) -> Any:
    """A boto3 Secrets Manager client of the test's own on the sandbox's moto server (the same
    endpoint and keys as the cluster's [rds] aws, which dbops reads the secrets with)."""
    import boto3

    aws = sandbox_ref(pg_sandbox).cluster.rds.aws
    assert aws.access_key_id is not None and aws.secret_access_key is not None
    return boto3.session.Session().client(
        "secretsmanager", region_name=aws.region, endpoint_url=aws.endpoint_url,
        aws_access_key_id=aws.access_key_id.value, aws_secret_access_key=aws.secret_access_key.value)


@pytest.fixture(scope="module")
def kube(kube_stand_in: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Kube, Path]]:
    """The shared stand-in, this module's namespace, and a kubeconfig of this module's own."""
    with contextlib.suppress(ApiError):  # already there when the session ran this module before
        kube_stand_in.namespace(NS)
    yield kube_stand_in, kube_stand_in.stand_in.kubeconfig(tmp_path_factory.mktemp("k8s") / "kubeconfig")


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    """Each test starts as a new console would: nothing read yet."""
    CACHE.clear()
    yield
    CACHE.clear()


def put_aws_secret(sm: Any, name: str, value: str) -> None:
    try:
        sm.create_secret(Name=name, SecretString=value)
    except sm.exceptions.ResourceExistsException:
        sm.put_secret_value(SecretId=name, SecretString=value)


def put_k8s_secret(kube: Kube, name: str, data: dict[str, str]) -> None:
    obj = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": name, "namespace": NS},
           "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}
    path = f"/api/v1/namespaces/{NS}/secrets"
    try:
        kube.create(path, obj)
    except ApiError as exc:
        if exc.status != 409:
            raise
        kube.replace(f"{path}/{name}", obj)


def new_password() -> str:
    # Letters and digits only: the SQL below quotes it as a literal.
    return "pw" + secrets.token_hex(12)


def with_password(ref: ClusterRef, password: SecretRef, **cluster: Any) -> ClusterRef:
    return dataclasses.replace(ref, cluster=dataclasses.replace(ref.cluster, password=password, **cluster))


@contextlib.asynccontextmanager
async def rotated_role(pg_sandbox: Any, password: str) -> AsyncIterator[str]:
    """A login role of this test's own (rotating the sandbox's postgres password would pull the
    rug from every other test of the session), dropped afterwards."""
    await pg_sandbox.fetch("pg1", f"CREATE ROLE {ROLE} LOGIN PASSWORD '{password}' IN ROLE pg_monitor")
    try:
        yield ROLE
    finally:
        await pg_sandbox.fetch("pg1", f"DROP ROLE IF EXISTS {ROLE}")


async def poll(ref: ClusterRef, member: str = "pg1") -> tuple[Reachability, str]:
    """One poll of a member as the console makes it: UP, or what classify() says."""
    adapter = PostgresAdapter(ref, next(m for m in ref.cluster.members if m.name == member))
    try:
        data = await adapter.collect()
    except Exception as exc:
        return adapter.classify(exc)
    finally:
        await adapter.close()
    assert data.server_version
    return Reachability.UP, f"server {data.server_version}"


def run_check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dbops.cli", "--config", str(config), "check", "--json", "--no-backups", "--no-platform"],
        capture_output=True, text=True, timeout=120, env={**os.environ},
    )


def config_with_password(pg_sandbox: Any, tmp_path: Path, password_toml: str) -> Path:
    """The sandbox's config with the cluster's own password replaced (its first `password =`
    line: PgBouncer's and the coordination database's stay literals of the sandbox)."""
    text, n = re.subn(r"(?m)^password = \{ value = .* \}$", lambda m: f"password = {password_toml}",
                      pg_sandbox.config_path.read_text(), count=1)
    assert n == 1
    path = tmp_path / "dbops.toml"
    path.write_text(text)
    load(path)  # valid, with the reference
    return path


def dbops_log() -> str:
    log = Path(os.environ["DBOPS_STATE_DIR"]) / "dbops.log"
    return log.read_text() if log.exists() else ""


# ---------------------------------------------------------------------------------------------
# Connecting


def test_check_connects_with_a_password_from_secrets_manager(pg_sandbox, secretsmanager, tmp_path):
    put_aws_secret(secretsmanager, "dbops-it/sandbox-pg", json.dumps({"username": "postgres", "password": pg_sandbox.password}))
    # Region, endpoint and keys come from the cluster's [rds] aws (moto).
    config = config_with_password(pg_sandbox, tmp_path, '{ aws_secret = "dbops-it/sandbox-pg", key = "password" }')
    r = run_check(config)
    assert r.returncode == 0, r.stdout + r.stderr
    (cluster,) = json.loads(r.stdout)["clusters"]
    assert [(m["name"], m["reachable"]) for m in cluster["members"]] == [("pg1", True), ("pg2", True), ("pg3", True)]
    assert pg_sandbox.password not in r.stdout + r.stderr + dbops_log()


def test_check_connects_with_a_password_from_a_kubernetes_secret(pg_sandbox, kube, tmp_path):
    stand_in, kubeconfig = kube
    put_k8s_secret(stand_in, "sandbox-pg", {"username": "postgres", "password": pg_sandbox.password})
    config = config_with_password(
        pg_sandbox, tmp_path, f'{{ k8s_secret = "{NS}/sandbox-pg", key = "password", kubeconfig = "{kubeconfig}" }}')
    r = run_check(config)
    assert r.returncode == 0, r.stdout + r.stderr
    (cluster,) = json.loads(r.stdout)["clusters"]
    assert all(m["reachable"] for m in cluster["members"]) and len(cluster["members"]) == 3
    assert pg_sandbox.password not in r.stdout + r.stderr + dbops_log()


async def test_a_password_given_whole_as_the_secret_string_connects(pg_sandbox, secretsmanager):
    # No key: the whole SecretString is the password; region and endpoint on the reference itself
    # (the keys still from the cluster's [rds] aws).
    ref = sandbox_ref(pg_sandbox)
    put_aws_secret(secretsmanager, "dbops-it/plain", pg_sandbox.password)
    aws = ref.cluster.rds.aws
    password = SecretRef(aws_secret="dbops-it/plain", region=aws.region, endpoint_url=aws.endpoint_url)
    reach, message = await poll(with_password(ref, password), "pg2")
    assert reach is Reachability.UP and message.startswith("server 15"), message


# ---------------------------------------------------------------------------------------------
# Rotation: the cached password goes stale; one re-read, one retry


@pytest.mark.parametrize("kind", ["aws_secret", "k8s_secret"])
async def test_a_rotated_password_is_read_again_once_and_connects(pg_sandbox, secretsmanager, kube, kind, caplog):
    caplog.set_level(logging.DEBUG)
    stand_in, kubeconfig = kube
    old, new = new_password(), new_password()
    name = f"dbops-it-rotated-{kind.replace('_', '-')}"

    def store(value: str) -> None:
        if kind == "aws_secret":
            put_aws_secret(secretsmanager, name, json.dumps({"password": value}))
        else:
            put_k8s_secret(stand_in, name, {"password": value})

    password = (SecretRef(aws_secret=name, key="password") if kind == "aws_secret"
                else SecretRef(k8s_secret=f"{NS}/{name}", key="password", kubeconfig=str(kubeconfig)))
    store(old)
    async with rotated_role(pg_sandbox, old) as role:
        ref = with_password(sandbox_ref(pg_sandbox), password, user=role)
        key = Credential(password, Target.of(ref, ref.cluster.members[0])).key
        for _ in range(2):  # the second poll takes the password from the cache
            reach, message = await poll(ref)
            assert reach is Reachability.UP, message
        assert CACHE.reads[key] == 1

        # The rotation: the role's password changes on the server, then in the secret store.
        await pg_sandbox.fetch("pg1", f"ALTER ROLE {role} PASSWORD '{new}'")
        store(new)
        caplog.clear()  # (the test's own boto3 client logs what it stored)
        reach, message = await poll(ref)
        assert reach is Reachability.UP, message
        # The cached (old) password was refused once, read again, and the retry connected.
        assert CACHE.reads[key] == 2
        assert f"{password.describe()} was refused; read it again (it changed: rotated) and retrying once" in caplog.text
        assert old not in caplog.text and new not in caplog.text

        # The next poll uses the new value from the cache: no further read.
        assert (await poll(ref))[0] is Reachability.UP and CACHE.reads[key] == 2


async def test_a_secret_not_rotated_with_the_server_is_an_auth_failure_naming_it(pg_sandbox, secretsmanager, caplog):
    caplog.set_level(logging.DEBUG)
    right, wrong = new_password(), new_password()
    put_aws_secret(secretsmanager, "dbops-it/stale", json.dumps({"password": wrong}))
    caplog.clear()  # (the test's own boto3 client logs what it stored)
    async with rotated_role(pg_sandbox, right) as role:
        ref = with_password(sandbox_ref(pg_sandbox), SecretRef(aws_secret="dbops-it/stale", key="password"), user=role)
        reach, message = await poll(ref)
    where = f"127.0.0.1:{pg_sandbox.port('pg1')}"
    assert reach is Reachability.AUTH
    assert message.startswith(f"{where} rejected user {role}: password authentication failed")
    assert message.endswith("; aws_secret dbops-it/stale (key password) was refused; read again, it is unchanged")
    assert wrong not in message + caplog.text and right not in message + caplog.text


async def test_a_refusal_after_the_re_read_is_reported_not_retried_again(pg_sandbox, secretsmanager):
    # The secret changes between the reads, but to another wrong value: one retry, then AUTH.
    right = new_password()
    put_aws_secret(secretsmanager, "dbops-it/twice", json.dumps({"password": new_password()}))
    async with rotated_role(pg_sandbox, right) as role:
        password = SecretRef(aws_secret="dbops-it/twice", key="password")
        ref = with_password(sandbox_ref(pg_sandbox), password, user=role)
        member = ref.cluster.members[0]
        await Credential(password, Target.of(ref, member)).get()  # cached: the first wrong one
        second = new_password()
        put_aws_secret(secretsmanager, "dbops-it/twice", json.dumps({"password": second}))
        adapter = PostgresAdapter(ref, member)
        with pytest.raises(CredentialRejected) as err:
            await adapter.open_connection()
        reach, message = adapter.classify(err.value)
    assert reach is Reachability.AUTH
    assert message.endswith("; aws_secret dbops-it/twice (key password) was refused, and again after reading it anew")
    assert second not in message and right not in message


# ---------------------------------------------------------------------------------------------
# A reference that cannot be read: AUTH, naming the reference and why


@pytest.mark.parametrize(("password", "said"), [
    (SecretRef(aws_secret="dbops-it/missing", key="password"),
     "password for postgres: aws_secret dbops-it/missing (key password) in Secrets Manager (us-east-1): "
     "ResourceNotFoundException (Secrets Manager can't find the specified secret.; there is no such secret in this region "
     "(check aws_secret, its name or ARN, and the region))"),
    (SecretRef(aws_secret="dbops-it/no-key", key="password"),
     "password for postgres: aws_secret dbops-it/no-key (key password): the secret has no key 'password' "
     "(its keys: pass, username)"),
])
async def test_an_unreadable_aws_secret_is_an_auth_state_that_says_why(pg_sandbox, secretsmanager, password, said, caplog):
    caplog.set_level(logging.DEBUG)
    put_aws_secret(secretsmanager, "dbops-it/no-key", json.dumps({"username": "postgres", "pass": pg_sandbox.password}))
    caplog.clear()  # (the test's own boto3 client logs what it stored)
    assert await poll(with_password(sandbox_ref(pg_sandbox), password)) == (Reachability.AUTH, said)
    assert pg_sandbox.password not in caplog.text


async def test_secrets_manager_unreachable_is_said_as_such(pg_sandbox):
    ref = sandbox_ref(pg_sandbox)
    closed = "http://127.0.0.1:9"  # discard: nothing listens
    reach, message = await poll(with_password(ref, SecretRef(aws_secret="dbops-it/sandbox-pg", endpoint_url=closed)))
    assert reach is Reachability.AUTH
    assert message.startswith("password for postgres: aws_secret dbops-it/sandbox-pg in Secrets Manager (us-east-1): "
                              f"cannot reach {closed}")


@pytest.mark.parametrize(("secret", "said"), [
    ("absent", "k8s_secret {ns}/absent (key password): no Secret 'absent' in namespace '{ns}' at {url}"),
    ("sandbox-pg-other", "k8s_secret {ns}/sandbox-pg-other (key password): Secret {ns}/sandbox-pg-other has no data "
                         "field 'password' (its fields: pgpass)"),
])
async def test_an_unreadable_kubernetes_secret_is_an_auth_state_that_says_why(pg_sandbox, kube, secret, said, caplog):
    caplog.set_level(logging.DEBUG)
    stand_in, kubeconfig = kube
    put_k8s_secret(stand_in, "sandbox-pg-other", {"pgpass": pg_sandbox.password})
    password = SecretRef(k8s_secret=f"{NS}/{secret}", key="password", kubeconfig=str(kubeconfig))
    reach, message = await poll(with_password(sandbox_ref(pg_sandbox), password))
    assert (reach, message) == (Reachability.AUTH, "password for postgres: " + said.format(ns=NS, url=stand_in.url))
    assert pg_sandbox.password not in caplog.text


async def test_the_secret_value_never_reaches_the_log_even_at_debug(pg_sandbox, secretsmanager, kube, caplog):
    # botocore logs response bodies at DEBUG: a GetSecretValue's holds the password.
    caplog.set_level(logging.DEBUG)
    stand_in, kubeconfig = kube
    value = new_password()
    put_aws_secret(secretsmanager, "dbops-it/logged", json.dumps({"password": value}))
    put_k8s_secret(stand_in, "logged", {"password": value})
    caplog.clear()  # (the test's own boto3 client logs what it stored)
    ref = sandbox_ref(pg_sandbox)
    for password in (SecretRef(aws_secret="dbops-it/logged", key="password"),
                     SecretRef(k8s_secret=f"{NS}/logged", key="password", kubeconfig=str(kubeconfig))):
        got = await Credential(password, Target.of(ref, ref.cluster.members[0])).get()
        assert got is not None and got.reveal() == value
    assert value not in caplog.text
