"""Credentials kept in services (aws_secret, k8s_secret, rds_iam): the config's rules, the
re-read on a refusal (dbops.secrets.with_reread), the in-memory cache, and RDS IAM tokens, which
boto3 signs locally (no AWS call: nothing to stand in for). Reads from Secrets Manager and the
Kubernetes API are tests/integration/test_pg_credentials.py's, against real servers."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import parse_qs, urlsplit

import pytest

from dbops.config import AwsLocation, ConfigError, SecretRef, parse
from dbops.platform.credentials import TOKEN_RENEW_SECONDS, Cache, Credential, Target, _pick
from dbops.secrets import CredentialRejected, Secret, SecretError, resolve, with_reread

CLUSTER = """
[environments.{env}]
sandbox = {sandbox}

[environments.{env}.clusters.orders]
engine = "{engine}"
members = [{{ name = "a", host = "db.example", port = 5432 }}]
password = {password}
{extra}
"""


def config(password: str, *, env: str = "prod", sandbox: str = "false", engine: str = "postgres", extra: str = ""):
    return parse(CLUSTER.format(env=env, sandbox=sandbox, engine=engine, password=password, extra=extra), "dbops.toml")


def problems(password: str, **kw: str) -> str:
    with pytest.raises(ConfigError) as err:
        config(password, **kw)
    return str(err.value)


# ---------------------------------------------------------------------------------------------
# Config


def test_remote_references_load_outside_a_sandbox_and_are_not_literals():
    for ref in ('{ aws_secret = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:orders-db", key = "password" }',
                '{ aws_secret = "orders/db" }',
                '{ k8s_secret = "db/orders-pg-app", key = "password" }'):
        pw = config(ref).environments["prod"].clusters["orders"].password
        assert pw is not None and pw.remote and pw.value is None
    iam = config("{ rds_iam = true }", extra='tls = { mode = "verify-full" }').environments["prod"].clusters["orders"]
    assert iam.password is not None and iam.password.rds_iam


def test_a_literal_outside_a_sandbox_is_still_refused():
    assert "a literal credential is only allowed in a sandbox environment" in problems('{ value = "hunter2" }')


@pytest.mark.parametrize("mode", ["disable", "prefer"])
def test_rds_iam_without_tls_is_a_config_error_at_its_line(mode):
    text = problems("{ rds_iam = true }", extra=f'tls = {{ mode = "{mode}" }}')
    # dbops.toml:8 is the password line (the template's eighth line)
    assert text.startswith("dbops.toml:8: environments.prod.clusters.orders.password.rds_iam: ")
    assert "only over TLS" in text and f'(it is "{mode}")' in text


def test_rds_iam_without_a_tls_section_is_refused_too():
    assert 'it is "prefer"' in problems("{ rds_iam = true }")


def test_rds_iam_on_another_engine_is_refused():
    assert 'rds_iam is for an engine = "postgres" cluster' in problems(
        "{ rds_iam = true }", engine="redis", extra='tls = { mode = "require" }')


@pytest.mark.parametrize(("ref", "said"), [
    ('{ k8s_secret = "orders-pg-app", key = "password" }', 'give the Secret as "namespace/name"'),
    ('{ k8s_secret = "db/orders" }', "a k8s_secret needs key"),
    ('{ env = "PGPASSWORD", key = "password" }', "key picks a field of an aws_secret or a k8s_secret"),
    ('{ aws_secret = "x", env = "Y" }', "give exactly one of env, file or value"),
    ('{ k8s_secret = "db/x", key = "p", region = "eu-west-1" }', "region is for aws_secret or rds_iam"),
    ('{ aws_secret = "x", kubeconfig = "/k" }', "kubeconfig is for k8s_secret"),
    ('{ rds_iam = false }', "rds_iam = false names no credential"),
])
def test_malformed_references_say_what_to_fix(ref, said):
    assert said in problems(ref)


def test_describe_names_the_reference_never_a_value():
    assert SecretRef(aws_secret="orders/db", key="password").describe() == "aws_secret orders/db (key password)"
    assert SecretRef(k8s_secret="db/app", key="pw").describe() == "k8s_secret db/app (key pw)"
    assert SecretRef(rds_iam=True).describe() == "rds_iam token"


def test_plain_resolve_says_which_references_it_cannot_read():
    with pytest.raises(SecretError, match="aws_secret reference: this connection reads only env, file or value"):
        resolve(SecretRef(aws_secret="orders/db"))


# ---------------------------------------------------------------------------------------------
# A SecretString's key


def test_pick_reads_a_key_or_the_whole_string():
    assert _pick('{"username": "app", "password": "s3cr3t"}', "password", "ref").reveal() == "s3cr3t"
    assert _pick("plain-s3cr3t", None, "ref").reveal() == "plain-s3cr3t"
    assert _pick('{"port": 5432}', "port", "ref").reveal() == "5432"


@pytest.mark.parametrize(("text", "key", "said"), [
    ('{"username": "app", "pw": "s3cr3t"}', "password", "has no key 'password' (its keys: pw, username)"),
    ("plain-s3cr3t", "password", "is not a JSON object"),
    ('{"password": {"nested": "s3cr3t"}}', "password", "is not a string"),
])
def test_pick_failures_name_the_reference_and_never_the_value(text, key, said):
    with pytest.raises(SecretError) as err:
        _pick(text, key, "aws_secret orders/db (key password)")
    assert said in str(err.value) and str(err.value).startswith("aws_secret orders/db (key password): ")
    assert "s3cr3t" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# with_reread: one re-read, one retry


class Refused(Exception):
    pass


class Source:
    """A credential source whose stored value a test changes, as a rotation does."""

    def __init__(self, *values: str, rereadable: bool = True) -> None:
        self.values = list(values)
        self.cached: Secret | None = None
        self.reads = 0
        self._rereadable = rereadable

    def describe(self) -> str:
        return "aws_secret orders/db (key password)"

    @property
    def rereadable(self) -> bool:
        return self._rereadable

    async def get(self) -> Secret | None:
        if self.cached is None:
            self.reads += 1
            self.cached = Secret(self.values[min(self.reads, len(self.values)) - 1])
        return self.cached

    def invalidate(self, rejected: Secret | None) -> None:
        if self.cached is not None and rejected is not None and self.cached.reveal() == rejected.reveal():
            self.cached = None


def server(accepts: str, calls: list[str]):
    async def attempt(secret: Secret | None) -> str:
        assert secret is not None
        calls.append(secret.reveal())
        if secret.reveal() != accepts:
            raise Refused("password authentication failed")
        return "connected"
    return attempt


def refused(exc: BaseException) -> bool:
    return isinstance(exc, Refused)


def test_a_rotated_secret_is_read_again_and_the_connect_retried_once():
    source, calls = Source("old-pw", "new-pw"), []
    assert asyncio.run(with_reread(source, server("new-pw", calls), refused)) == "connected"
    assert calls == ["old-pw", "new-pw"] and source.reads == 2


def test_an_unchanged_secret_is_not_retried_and_names_the_reference():
    source, calls = Source("wrong-pw", "wrong-pw"), []
    with pytest.raises(CredentialRejected) as err:
        asyncio.run(with_reread(source, server("right-pw", calls), refused))
    assert calls == ["wrong-pw"] and source.reads == 2
    assert str(err.value) == "aws_secret orders/db (key password) was refused; read again, it is unchanged"
    assert isinstance(err.value.cause, Refused)


def test_a_second_refusal_is_reported_not_retried_again():
    source, calls = Source("pw-1", "pw-2", "pw-3"), []
    with pytest.raises(CredentialRejected, match="refused, and again after reading it anew"):
        asyncio.run(with_reread(source, server("pw-3", calls), refused))
    assert calls == ["pw-1", "pw-2"]


def test_local_references_and_other_errors_are_not_retried():
    calls: list[str] = []
    with pytest.raises(Refused):
        asyncio.run(with_reread(Source("a", "b", rereadable=False), server("b", calls), refused))
    assert calls == ["a"]

    async def down(secret: Secret | None) -> str:
        raise ConnectionRefusedError("refused")
    source = Source("a", "b")
    with pytest.raises(ConnectionRefusedError):
        asyncio.run(with_reread(source, down, refused))
    assert source.reads == 1


# ---------------------------------------------------------------------------------------------
# The cache and RDS IAM tokens


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


AWS = AwsLocation(region="eu-west-1", access_key_id=SecretRef(value="AKIAEXAMPLEKEYID0001"),
                  secret_access_key=SecretRef(value="example-secret-access-key-not-real"))
TARGET = Target(host="orders.abc123.eu-west-1.rds.amazonaws.com", port=5432, user="app", aws=AWS)


def test_rds_iam_token_is_signed_for_the_member_and_renewed_before_it_expires():
    # boto3 computes the token locally (SigV4 presigned URL) with the configured keys; no sandbox
    # PostgreSQL can verify one (RDS does), so what is checked is what the token says and when a
    # new one is made. The clock is injected: nothing sleeps.
    clock = Clock()
    cache = Cache(clock)
    cred = Credential(SecretRef(rds_iam=True), TARGET, cache)
    token = asyncio.run(cred.get())
    assert token is not None and cache.reads[cred.key] == 1
    url = urlsplit("https://" + token.reveal())
    query = parse_qs(url.query)
    assert url.netloc == "orders.abc123.eu-west-1.rds.amazonaws.com:5432"
    assert query["Action"] == ["connect"] and query["DBUser"] == ["app"]
    assert query["X-Amz-Expires"] == ["900"]
    assert query["X-Amz-Credential"][0].startswith("AKIAEXAMPLEKEYID0001/")
    assert "/eu-west-1/rds-db/aws4_request" in query["X-Amz-Credential"][0]

    clock.now += TOKEN_RENEW_SECONDS - 1  # still young enough: the same token
    assert asyncio.run(cred.get()) is token and cache.reads[cred.key] == 1
    clock.now += 1  # ten minutes old: a new one, five minutes before RDS would refuse it
    renewed = asyncio.run(cred.get())
    assert renewed is not token and cache.reads[cred.key] == 2


def test_rds_iam_tokens_are_per_member_and_user():
    cache = Cache(Clock())
    a = Credential(SecretRef(rds_iam=True), TARGET, cache)
    b = Credential(SecretRef(rds_iam=True), Target(host="replica.example", port=5432, user="app", aws=AWS), cache)
    assert a.key != b.key
    assert "replica.example:5432" in (asyncio.run(b.get()) or Secret("")).reveal()


def test_a_refused_token_is_made_anew_but_a_newer_cached_one_is_kept():
    clock = Clock()
    cache = Cache(clock)
    cred = Credential(SecretRef(rds_iam=True), TARGET, cache)
    first = asyncio.run(cred.get())
    cred.invalidate(Secret("some other, older value"))  # another connection already renewed it
    assert asyncio.run(cred.get()) is first and cache.reads[cred.key] == 1
    cred.invalidate(first)
    asyncio.run(cred.get())
    assert cache.reads[cred.key] == 2


def test_rds_iam_without_credentials_says_so_and_names_the_reference(monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    cred = Credential(SecretRef(rds_iam=True), Target(host="h", port=5432, user="app"), Cache(Clock()))
    with pytest.raises(SecretError, match=r"^rds_iam token: no AWS credentials to sign it with"):
        asyncio.run(cred.get())


def test_the_rds_iam_token_never_reaches_the_log(caplog):
    caplog.set_level(logging.DEBUG)
    token = asyncio.run(Credential(SecretRef(rds_iam=True), TARGET, Cache(Clock())).get())
    assert token is not None
    signature = parse_qs(urlsplit("https://" + token.reveal()).query)["X-Amz-Signature"][0]
    assert signature not in caplog.text
    assert "example-secret-access-key-not-real" not in caplog.text
