"""The pure parts of S3 backups: object keys, the manifest's JSON, and what importing costs."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone

import pytest

from dbops import sandbox
from dbops.config import S3Location
from dbops.platform.s3 import MANIFEST_SUFFIX, Manifest, S3Error, key_for

SHA = "ab" * 32
WHEN = datetime(2026, 3, 1, 12, 30, 5, 123456, tzinfo=UTC)


def manifest(**changes: object) -> Manifest:
    fields: dict[str, object] = dict(key="orders/2026-03-01.dump", size=42, sha256=SHA, created=WHEN, kind="pg_dump",
                                     meta={"cluster": "orders-db", "database": "orders"})
    fields.update(changes)
    return Manifest(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("prefix", "name", "key"),
    [
        ("", "a.dump", "a.dump"),
        ("orders-db/", "a.dump", "orders-db/a.dump"),
        ("orders-db", "a.dump", "orders-db/a.dump"),  # a prefix is a folder, slash or not
        ("/team/orders-db/", "/daily/a.dump", "team/orders-db/daily/a.dump"),
        ("/", "a.dump", "a.dump"),
    ],
)
def test_key_for_joins_prefix_as_a_folder(prefix: str, name: str, key: str) -> None:
    assert key_for(S3Location(bucket="b", prefix=prefix), name) == key


@pytest.mark.parametrize("name", ["", "/", "daily/"])
def test_key_for_refuses_a_folder(name: str) -> None:
    with pytest.raises(S3Error, match="must name a file, not a folder") as err:
        key_for(S3Location(bucket="b", prefix="p"), name)
    assert err.value.code == "bad_key"


def test_manifest_json_roundtrip() -> None:
    m = manifest()
    text = m.to_json()
    data = json.loads(text)
    assert data == {
        "format": 1,
        "key": "orders/2026-03-01.dump",
        "size": 42,
        "sha256": SHA,
        "created": "2026-03-01T12:30:05.123456+00:00",
        "kind": "pg_dump",
        "meta": {"cluster": "orders-db", "database": "orders"},
    }
    assert Manifest.from_json(text) == m
    assert Manifest.from_json(text.encode()) == m
    assert m.manifest_key == "orders/2026-03-01.dump" + MANIFEST_SUFFIX == "orders/2026-03-01.dump.manifest.json"


def test_created_is_kept_in_utc_and_must_be_aware() -> None:
    plus_two = timezone(timedelta(hours=2))
    m = manifest(created=datetime(2026, 3, 1, 14, 30, 5, 123456, tzinfo=plus_two))
    assert m.created == WHEN and m.created.tzinfo == UTC
    assert Manifest.from_json(m.to_json()).created.utcoffset() == timedelta(0)
    with pytest.raises(ValueError, match="timezone-aware"):
        manifest(created=datetime(2026, 3, 1, 12, 30))


def test_meta_is_a_private_copy() -> None:
    meta = {"cluster": "a"}
    m = manifest(meta=meta)
    meta["cluster"] = "changed"
    assert m.meta == {"cluster": "a"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{nope", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"format": 2}', "manifest format 2; this dbops reads format 1"),
        ('{"format": 1, "key": "k"}', "missing size, sha256, created, kind"),
        ('{"format": 1, "key": "k", "size": 1, "sha256": "%s", "created": "yesterday", "kind": "pg_dump"}' % SHA,
         "created 'yesterday' is not an ISO 8601 time"),
        ('{"format": 1, "key": "k", "size": 1, "sha256": "%s", "created": "2026-03-01T12:00:00", "kind": "pg_dump"}'
         % SHA, "timezone-aware"),
        ('{"format": 1, "key": "k", "size": -1, "sha256": "%s", "created": "2026-03-01T12:00:00Z", "kind": "pg_dump"}'
         % SHA, "size must be a non-negative integer"),
        ('{"format": 1, "key": "k", "size": true, "sha256": "%s", "created": "2026-03-01T12:00:00Z", "kind": "x"}'
         % SHA, "size must be a non-negative integer"),
        ('{"format": 1, "key": "k", "size": 1, "sha256": "ABC", "created": "2026-03-01T12:00:00Z", "kind": "pg_dump"}',
         "sha256 must be 64 lowercase hex digits"),
        ('{"format": 1, "key": "", "size": 1, "sha256": "%s", "created": "2026-03-01T12:00:00Z", "kind": "pg_dump"}'
         % SHA, "key must be a non-empty string"),
        ('{"format": 1, "key": "k", "size": 1, "sha256": "%s", "created": "2026-03-01T12:00:00Z", "kind": "pg dump"}'
         % SHA, "kind 'pg dump' must be a word"),
        ('{"format": 1, "key": "k", "size": 1, "sha256": "%s", "created": "2026-03-01T12:00:00Z", "kind": "x", '
         '"meta": {"a": 1}}' % SHA, "meta must map strings to strings"),
    ],
)
def test_from_json_says_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(ValueError) as err:
        Manifest.from_json(text)
    assert problem in str(err.value)


def test_s3error_carries_a_code() -> None:
    e = S3Error("s3://b/k: NoSuchKey", "NoSuchKey")
    assert (str(e), e.message, e.code) == ("s3://b/k: NoSuchKey", "s3://b/k: NoSuchKey", "NoSuchKey")


def test_importing_s3_modules_loads_neither_boto3_nor_moto() -> None:
    code = ("import sys, dbops.platform.s3, dbops.sandbox.s3, dbops.sandbox.cli;"
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore', 'moto', 'flask'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == []


def test_s3_starts_before_and_stops_after_the_engines_that_use_it() -> None:
    assert sandbox._start_order(["postgres", "s3"]) == ["s3", "postgres"]
    assert sandbox._start_order(["s3", "postgres"]) == ["s3", "postgres"]
    assert sandbox._start_order(["postgres"]) == ["postgres"]
    assert sandbox.DEFAULT_ENGINES == ("s3", "postgres")


def test_cli_default_engines_are_the_sandbox_defaults() -> None:
    from dbops.sandbox.cli import up

    [option] = [p for p in up.params if p.name == "engines"]
    assert tuple(option.default) == sandbox.DEFAULT_ENGINES  # type: ignore[arg-type]
