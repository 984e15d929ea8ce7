"""Backups as S3 objects, each beside a SHA-256 manifest.

A backup is two objects under the location's prefix::

    <key>                  the backup file; user metadata sha256=<hex digest>, dbops-kind=<kind>
    <key>.manifest.json    a Manifest: key, size, sha256, created (UTC), kind, meta

The manifest is written only after the object is uploaded and its size checked, so a manifest
always describes a complete object, and listing backups means listing manifests. Reading a
backup back recomputes the SHA-256 of what S3 returns and compares it with the manifest: a
backup that was truncated, overwritten or rotted is refused instead of restored.

boto3 is imported inside the functions (it costs a few hundred ms). Everything here is
synchronous; code on the event loop calls it through asyncio.to_thread. Every failure is an
S3Error whose message is one line, safe to show: it names the bucket or object and the reason,
never a credential.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from dbops.platform.aws import (
    NO_CREDENTIALS,
    AwsError,
    client_error_code,
    endpoint_shown,
    explain,
    new_client,
    os_reason,
    resolve_keys,
    safe_line,
    translated,
)
from dbops.secrets import Secret, SecretError

if TYPE_CHECKING:
    from dbops.config import S3Location

__all__ = [
    "MANIFEST_SUFFIX",
    "Bucket",
    "Manifest",
    "S3Error",
    "bucket_protection",
    "client",
    "create_bucket",
    "delete_backup",
    "download_verified",
    "key_for",
    "list_backups",
    "os_reason",
    "read_manifest",
    "upload_with_manifest",
    "verify_object",
]

MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_FORMAT = 1
# A manifest is a few hundred bytes; anything much bigger under that name is not one of ours.
MANIFEST_MAX_BYTES = 1024 * 1024

# (The connect timeout is dbops.platform.aws.CONNECT_TIMEOUT, as for every AWS call.)
READ_TIMEOUT = 60.0  # between two packets of a response, not for a whole transfer
TOTAL_ATTEMPTS = 3  # the first try and two retries (botocore's standard mode, with backoff)
PART_SIZE = 64 * 1024 * 1024  # files above this go up in parts of this size
CHUNK = 1024 * 1024  # read and hash in pieces of this size; a backup is never held in memory

# Called with (bytes done, bytes in total) as a transfer goes on, possibly from boto3's threads.
TransferProgress = Callable[[int, int], None]

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# A kind travels as S3 user metadata (an HTTP header): keep it to a plain ASCII word.
_KIND = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


class S3Error(AwsError):
    """A failed S3 operation. `message` is one line, safe to show (never a credential); `code`
    is S3's error code when S3 answered with one (NoSuchKey, AccessDenied ...), else one of
    ours: unreachable, timeout, credentials, checksum_mismatch, no_manifest, bad_manifest,
    size_mismatch, local_file, bad_key, config, error."""


# ---------------------------------------------------------------------------------------------
# Keys


def _prefix(location: S3Location) -> str:
    """The location's prefix as a folder ('' or 'a/b/'), however it was written in the config."""
    p = location.prefix.strip("/")
    return p + "/" if p else ""


def key_for(location: S3Location, name: str) -> str:
    """The object key of backup file `name` under the location's prefix."""
    name = name.lstrip("/")
    if not name or name.endswith("/"):
        raise S3Error(f"backup name {name!r} must name a file, not a folder", "bad_key")
    return _prefix(location) + name


def _url(location: S3Location, key: str) -> str:
    return f"s3://{location.bucket}/{key}"


# ---------------------------------------------------------------------------------------------
# The manifest


def _aware_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("created must be a timezone-aware datetime")
    return value.astimezone(UTC)


@dataclass(frozen=True)
class Manifest:
    """What was uploaded: the object's key, size and SHA-256, when, and what it is."""

    key: str
    size: int
    sha256: str
    created: datetime  # aware, UTC
    kind: str  # what made the backup, e.g. "pg_dump"
    meta: dict[str, str] = field(default_factory=dict)  # free-form: cluster, database, format ...

    def __post_init__(self) -> None:
        # Checked here so that a manifest read from S3 and one built in code obey the same rules.
        if not isinstance(self.key, str) or not self.key:
            raise ValueError("key must be a non-empty string")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise ValueError("size must be a non-negative integer")
        if not isinstance(self.sha256, str) or not _SHA256_HEX.fullmatch(self.sha256):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        if not isinstance(self.created, datetime):
            raise ValueError("created must be a datetime")
        object.__setattr__(self, "created", _aware_utc(self.created))
        if not isinstance(self.kind, str) or not _KIND.fullmatch(self.kind):
            raise ValueError(f"kind {self.kind!r} must be a word of letters, digits and _ . + - (e.g. pg_dump)")
        if not isinstance(self.meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in self.meta.items()):
            raise ValueError("meta must map strings to strings")
        object.__setattr__(self, "meta", dict(self.meta))  # a private copy: the manifest is immutable

    @property
    def manifest_key(self) -> str:
        return self.key + MANIFEST_SUFFIX

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": MANIFEST_FORMAT,
                "key": self.key,
                "size": self.size,
                "sha256": self.sha256,
                "created": self.created.isoformat(),
                "kind": self.kind,
                "meta": self.meta,
            },
            indent=2,
            sort_keys=True,
        ) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse a manifest; ValueError says what is wrong with it."""
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"manifest format {data.get('format')!r}; this dbops reads format {MANIFEST_FORMAT}")
        missing = [k for k in ("key", "size", "sha256", "created", "kind") if k not in data]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        created = data["created"]
        if not isinstance(created, str):
            raise ValueError("created must be an ISO 8601 string")
        try:
            when = datetime.fromisoformat(created)
        except ValueError:
            raise ValueError(f"created {created!r} is not an ISO 8601 time") from None
        return cls(key=data["key"], size=data["size"], sha256=data["sha256"], created=when,
                   kind=data["kind"], meta=data.get("meta", {}))


# ---------------------------------------------------------------------------------------------
# The client and its errors


def _endpoint_shown(location: S3Location) -> str:
    return endpoint_shown(location, "s3")


def _open(location: S3Location) -> tuple[Any, tuple[Secret | None, ...]]:
    """A boto3 S3 client for the location and the secrets its messages must never show."""
    try:
        secrets = resolve_keys(location)
    except SecretError as exc:
        raise S3Error(f"bucket {location.bucket}: S3 credentials: {exc}", "credentials") from None
    options: dict[str, Any] = {}
    if location.endpoint_url:
        # S3-compatible stores (MinIO, the sandbox's moto) serve buckets by path rather than as
        # <bucket>.<host> names that need DNS, and many reject the CRC checksums boto3 sends by
        # default since 1.36. The manifest's SHA-256 is the end-to-end check either way.
        options.update(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
    try:
        s3 = new_client(location, "s3", secrets, read_timeout=READ_TIMEOUT, attempts=TOTAL_ATTEMPTS, **options)
    except ValueError as exc:  # botocore's "Invalid endpoint: ..."
        raise S3Error(f"S3 endpoint {_endpoint_shown(location)}: {safe_line(str(exc), secrets)}", "config") from None
    return s3, secrets


def client(location: S3Location) -> Any:
    """A boto3 S3 client for `location`: its endpoint, region and keys (boto3's usual credential
    chain when the location names none), connect timeout 5 s, read timeout 60 s, 3 attempts."""
    return _open(location)[0]


def _error_code(exc: Any) -> str:
    """S3's error code of a botocore ClientError. HEAD answers have no body, so botocore gives
    the HTTP status there: name it."""
    code = client_error_code(exc)
    return {"404": "NotFound", "403": "AccessDenied", "400": "BadRequest", "301": "PermanentRedirect"}.get(code, code)


# What to do about the errors an operator can fix, added to S3's own words.
_HINTS = {
    "AccessDenied": "check the credentials and the bucket policy",
    "InvalidAccessKeyId": "check access_key_id",
    "SignatureDoesNotMatch": "check secret_access_key",
    "PermanentRedirect": "the bucket is in another region: check region",
    "AuthorizationHeaderMalformed": "check region",
}


def _translate(exc: BaseException, location: S3Location, secrets: tuple[Secret | None, ...], target: str) -> S3Error:
    from botocore.exceptions import ClientError

    endpoint = _endpoint_shown(location)
    if isinstance(exc, ClientError) and _error_code(exc) == "NoSuchBucket":
        # The bucket, not the object or call, is what is missing: say so whatever was being done.
        return S3Error(safe_line(f"bucket {location.bucket}: NoSuchBucket (no such bucket at {endpoint})", secrets), "NoSuchBucket")
    # An endpoint that cannot be reached is named alone: no object of the bucket is at fault.
    message, code = explain(exc, target=target, endpoint=f"S3 endpoint {endpoint}", secrets=secrets, read_timeout=READ_TIMEOUT,
                            hints=_HINTS, code_of=_error_code, unreachable="",
                            no_credentials=f"bucket {location.bucket}: no S3 credentials found; " + NO_CREDENTIALS.format(where="config"))
    return S3Error(message, code)


def _errors(location: S3Location, secrets: tuple[Secret | None, ...], target: str) -> contextlib.AbstractContextManager[None]:
    """Turn botocore's exceptions raised inside into S3Error (one line, no credentials)."""
    return translated(lambda exc: _translate(exc, location, secrets, target))


class Bucket:
    """One location's S3 client, for code elsewhere that makes its own S3 calls (the backup
    watcher, audit shipping). Raises S3Error (credentials, endpoint) when it cannot be made;
    its helpers raise S3Error for every failure, and `errors()` does the same for any call made
    on `client` directly, so no botocore exception and no credential reaches the caller."""

    def __init__(self, location: S3Location) -> None:
        self.location = location
        self.client, self._secrets = _open(location)

    def url(self, key: str) -> str:
        return _url(self.location, key)

    @contextlib.contextmanager
    def errors(self, target: str) -> Iterator[None]:
        """botocore's exceptions raised inside become S3Error naming `target`."""
        with _errors(self.location, self._secrets, target):
            yield

    def head(self, key: str) -> dict[str, Any] | None:
        """HeadObject's answer for `key`, or None when there is no such object."""
        from botocore.exceptions import ClientError

        with self.errors(self.url(key)):
            try:
                return dict(self.client.head_object(Bucket=self.location.bucket, Key=key))
            except ClientError as exc:
                if _error_code(exc) not in ("NotFound", "NoSuchKey"):
                    raise
                return None

    def read_manifest(self, key: str) -> Manifest:
        """The manifest of backup `key` (see read_manifest), on this client."""
        return _read_manifest(self.client, self._secrets, self.location, key)


# ---------------------------------------------------------------------------------------------
# Upload


def _sha256_of(fh: IO[bytes]) -> str:
    h = hashlib.sha256()
    while chunk := fh.read(CHUNK):
        h.update(chunk)
    return h.hexdigest()


def _counter(progress: TransferProgress | None, total: int) -> Callable[[int], None] | None:
    """boto3's Callback (bytes since the last call, from its worker threads) -> progress(done, total)."""
    if progress is None:
        return None
    lock = threading.Lock()
    done = 0

    def add(amount: int) -> None:
        nonlocal done
        with lock:
            done += amount
            now = done
        progress(now, total)

    return add


def upload_with_manifest(
    location: S3Location,
    path: str | os.PathLike[str],
    key: str,
    *,
    kind: str,
    meta: dict[str, str] | None = None,
    progress: TransferProgress | None = None,
    part_size: int = PART_SIZE,
) -> Manifest:
    """Upload the file at `path` as object `key` (a full key, see key_for), then its manifest.

    The SHA-256 is computed from the local file first (it travels as the object's metadata,
    which is sent before the bytes), the object goes up (in parts of `part_size` when larger),
    a HEAD checks S3 holds all of it, and only then is the manifest written.
    """
    if not key or key.endswith("/") or key.endswith(MANIFEST_SUFFIX):
        raise S3Error(f"{_url(location, key)}: not a valid backup key (empty, a folder, or a manifest's name)", "bad_key")
    path = Path(path)
    url = _url(location, key)
    s3, secrets = _open(location)
    from boto3.s3.transfer import TransferConfig

    try:
        with open(path, "rb") as fh:
            before = os.fstat(fh.fileno())
            size = before.st_size
            digest = _sha256_of(fh)
            fh.seek(0)
            try:
                # Built now so that a bad kind or meta is refused before anything is uploaded.
                manifest = Manifest(key=key, size=size, sha256=digest, created=datetime.now(UTC), kind=kind,
                                    meta=dict(meta or {}))
            except ValueError as exc:
                raise S3Error(f"{url}: {exc}", "bad_manifest") from None
            transfer = TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size, max_concurrency=4)
            with _errors(location, secrets, f"uploading {url}"):
                s3.upload_fileobj(
                    fh,
                    location.bucket,
                    key,
                    ExtraArgs={"Metadata": {"sha256": digest, "dbops-kind": kind},
                               "ContentType": "application/octet-stream"},
                    Callback=_counter(progress, size),
                    Config=transfer,
                )
        # (s3transfer closes the file it read, so look again by path.) A file still being
        # written would give an object that does not match the digest taken before.
        after = os.stat(path)
        if (after.st_size, after.st_mtime_ns, after.st_ino) != (before.st_size, before.st_mtime_ns, before.st_ino):
            raise S3Error(f"{path} changed while it was uploaded to {url}; upload it again once it is complete",
                          "local_file")
    except OSError as exc:  # the local file; botocore's errors became S3Error above
        raise S3Error(f"cannot read {path}: {exc.strerror or exc}", "local_file") from None

    with _errors(location, secrets, url):
        head = s3.head_object(Bucket=location.bucket, Key=key)
    stored = int(head.get("ContentLength", -1))
    if stored != size:
        raise S3Error(f"{url}: upload incomplete: S3 holds {stored} bytes, {path} has {size}", "size_mismatch")
    if head.get("Metadata", {}).get("sha256") != digest:
        raise S3Error(f"{url}: the object was replaced while it was uploaded (its sha256 metadata is not this "
                      "file's); upload it again", "checksum_mismatch")

    # created = the moment the backup became complete in S3.
    manifest = replace(manifest, created=datetime.now(UTC))
    with _errors(location, secrets, f"writing {_url(location, manifest.manifest_key)}"):
        s3.put_object(Bucket=location.bucket, Key=manifest.manifest_key, Body=manifest.to_json().encode("utf-8"),
                      ContentType="application/json")
    return manifest


# ---------------------------------------------------------------------------------------------
# Manifests, download and verification


def _read_manifest(s3: Any, secrets: tuple[Secret | None, ...], location: S3Location, key: str) -> Manifest:
    from botocore.exceptions import ClientError

    manifest_key = key + MANIFEST_SUFFIX
    murl = _url(location, manifest_key)
    with _errors(location, secrets, murl):
        try:
            body = s3.get_object(Bucket=location.bucket, Key=manifest_key)["Body"]
        except ClientError as exc:
            if _error_code(exc) != "NoSuchKey":
                raise
            raise S3Error(f"{_url(location, key)}: no manifest ({murl} is missing), so the backup cannot be verified",
                          "no_manifest") from None
        try:
            raw = body.read(MANIFEST_MAX_BYTES + 1)
        finally:
            body.close()
    if len(raw) > MANIFEST_MAX_BYTES:
        raise S3Error(f"{murl}: not a dbops manifest (larger than {MANIFEST_MAX_BYTES} bytes)", "bad_manifest")
    try:
        manifest = Manifest.from_json(raw)
    except ValueError as exc:
        raise S3Error(f"{murl}: not a valid dbops manifest: {exc}", "bad_manifest") from None
    if manifest.key != key:
        # A manifest copied beside another object would vouch for the wrong bytes.
        raise S3Error(f"{murl}: describes {manifest.key!r}, not {key!r}", "bad_manifest")
    return manifest


def read_manifest(location: S3Location, key: str) -> Manifest:
    """The manifest of backup `key`; S3Error (code no_manifest) when there is none."""
    s3, secrets = _open(location)
    return _read_manifest(s3, secrets, location, key)


def _stream_object(
    s3: Any,
    secrets: tuple[Secret | None, ...],
    location: S3Location,
    manifest: Manifest,
    sink: Callable[[bytes], object],
    progress: TransferProgress | None,
) -> None:
    """Read the object in one stream, feed each piece to `sink`, and compare size and SHA-256
    with the manifest: S3Error (code checksum_mismatch) when they differ."""
    url = _url(location, manifest.key)
    h = hashlib.sha256()
    done = 0
    with _errors(location, secrets, url):
        body = s3.get_object(Bucket=location.bucket, Key=manifest.key)["Body"]
        try:
            for chunk in body.iter_chunks(CHUNK):
                h.update(chunk)
                sink(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, manifest.size)
        finally:
            body.close()
    digest = h.hexdigest()
    if digest != manifest.sha256 or done != manifest.size:
        raise S3Error(
            f"{url}: checksum mismatch: manifest says {manifest.sha256} ({manifest.size} bytes), "
            f"object is {digest} ({done} bytes)",
            "checksum_mismatch",
        )


def download_verified(
    location: S3Location, key: str, dest_path: str | os.PathLike[str], progress: TransferProgress | None = None
) -> Manifest:
    """Download backup `key` to `dest_path` and prove it is what was uploaded.

    The manifest is read first (no manifest, no download). The object streams into a hidden
    temporary file beside `dest_path` while its SHA-256 is computed; only a file that matches the
    manifest is renamed to `dest_path`. On any failure nothing is left at `dest_path` (a file
    that was already there is left as it was).
    """
    dest = Path(dest_path)
    s3, secrets = _open(location)
    manifest = _read_manifest(s3, secrets, location, key)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    except OSError as exc:
        raise S3Error(f"cannot write into {dest.parent}: {exc.strerror or exc}", "local_file") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            _stream_object(s3, secrets, location, manifest, out.write, progress)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except OSError as exc:  # the local disk (full, read-only ...); S3's errors are S3Error by now
        tmp.unlink(missing_ok=True)
        raise S3Error(f"writing {dest}: {exc.strerror or exc}", "local_file") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return manifest


def verify_object(location: S3Location, key: str, progress: TransferProgress | None = None) -> Manifest:
    """Stream backup `key` from S3 and check it against its manifest without storing it."""
    s3, secrets = _open(location)
    manifest = _read_manifest(s3, secrets, location, key)
    _stream_object(s3, secrets, location, manifest, lambda _chunk: None, progress)
    return manifest


# ---------------------------------------------------------------------------------------------
# Listing, deleting, the bucket


def list_backups(location: S3Location, kind: str | None = None) -> list[Manifest]:
    """Every backup under the location's prefix (of `kind`, when given), newest first, read from
    the manifests (objects without a manifest are not backups yet: their upload did not finish)."""
    s3, secrets = _open(location)
    manifest_keys: list[str] = []
    with _errors(location, secrets, f"listing s3://{location.bucket}/{_prefix(location)}"):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=_prefix(location)):
            manifest_keys += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(MANIFEST_SUFFIX)]
    found = []
    for manifest_key in manifest_keys:
        try:
            manifest = _read_manifest(s3, secrets, location, manifest_key[: -len(MANIFEST_SUFFIX)])
        except S3Error as exc:
            # Deleted between the listing and now (retention at work): it is no longer a backup.
            if exc.code == "no_manifest":
                continue
            raise
        if kind is None or manifest.kind == kind:
            found.append(manifest)
    found.sort(key=lambda m: (m.created, m.key), reverse=True)
    return found


def delete_backup(location: S3Location, key: str) -> None:
    """Delete backup `key`: its manifest first (so it stops being listed), then the object.
    Deleting what is not there is not an error. In a versioned bucket this adds delete markers;
    earlier versions stay until the bucket's lifecycle rules remove them."""
    s3, secrets = _open(location)
    for k in (key + MANIFEST_SUFFIX, key):
        with _errors(location, secrets, f"deleting {_url(location, k)}"):
            s3.delete_object(Bucket=location.bucket, Key=k)


def bucket_protection(location: S3Location) -> dict[str, Any]:
    """How well the bucket guards its backups against deletion:

    {"bucket": name, "versioning": "Enabled" | "Suspended" | None (never enabled),
     "mfa_delete": "Enabled" | "Disabled" | None,
     "object_lock": None (no object lock) or {"enabled": bool, "mode": "GOVERNANCE" | "COMPLIANCE" | None,
                                               "days": int | None, "years": int | None}}
    """
    from botocore.exceptions import ClientError

    s3, secrets = _open(location)
    with _errors(location, secrets, f"bucket {location.bucket}"):
        versioning = s3.get_bucket_versioning(Bucket=location.bucket)
        try:
            lock = s3.get_object_lock_configuration(Bucket=location.bucket).get("ObjectLockConfiguration")
        except ClientError as exc:
            if _error_code(exc) != "ObjectLockConfigurationNotFoundError":
                raise
            lock = None
    object_lock = None
    if lock:
        retention = lock.get("Rule", {}).get("DefaultRetention", {})
        object_lock = {
            "enabled": lock.get("ObjectLockEnabled") == "Enabled",
            "mode": retention.get("Mode"),
            "days": retention.get("Days"),
            "years": retention.get("Years"),
        }
    return {
        "bucket": location.bucket,
        "versioning": versioning.get("Status"),
        "mfa_delete": versioning.get("MFADelete"),
        "object_lock": object_lock,
    }


def create_bucket(location: S3Location, *, versioning: bool = True, object_lock: bool = False) -> None:
    """Create the location's bucket (already having it is fine) and switch versioning on;
    with `object_lock`, a bucket with Object Lock enabled (it can only be enabled at creation).
    For the sandbox and tests; production buckets are made by whoever owns the account."""
    from botocore.exceptions import ClientError

    s3, secrets = _open(location)
    with _errors(location, secrets, f"creating bucket {location.bucket}"):
        extra: dict[str, Any] = {}
        if location.region != "us-east-1":  # us-east-1 is the one region that refuses a constraint
            extra["CreateBucketConfiguration"] = {"LocationConstraint": location.region}
        if object_lock:
            extra["ObjectLockEnabledForBucket"] = True
        try:
            s3.create_bucket(Bucket=location.bucket, **extra)
        except ClientError as exc:
            if _error_code(exc) != "BucketAlreadyOwnedByYou":
                raise
        if versioning:
            s3.put_bucket_versioning(Bucket=location.bucket, VersioningConfiguration={"Status": "Enabled"})
