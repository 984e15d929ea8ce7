"""Copies of the audit log in an S3 bucket with Object Lock ([audit.ship]).

The hash chain shows edits but not a rebuilt chain: anyone who can write the log can forge a
consistent one. A copy off the host, locked in COMPLIANCE mode (nobody, the account's root
included, can delete or overwrite it before its retain-until date) is what makes the history
stand: `dbops audit verify --shipped` checks the newest copy's chain and that the local log still
begins with exactly those bytes.

Object naming, one object per shipping, never overwritten::

    <prefix><host>/audit-<999999999999 - last seq, 12 digits>-seq<last seq>.jsonl

* per host: each console host has its own log and chain;
* the whole log each time (not the new records only): every copy verifies on its own, with
  no earlier object needed;
* the inverted sequence number makes S3's lexicographic listing return the newest copy first,
  so "the newest shipped copy" is one LIST with MaxKeys=1 however many copies accumulate;
* the last seq in the name makes shipping idempotent: a log with no new record since the last
  copy has the same key, which is then found (HEAD) and not uploaded again. (Locked objects
  could not be overwritten anyway; in a versioned bucket a second PUT would add a version.)

The object's metadata holds the head (seq and hash of the last record), so the copy is verified
like a log beside its head file. Every PUT sends Content-MD5 (S3 requires it, or a checksum, with
Object Lock headers) and ObjectLockMode=COMPLIANCE with ObjectLockRetainUntilDate = now +
retain_days.

Shipping refuses a bucket without Object Lock enabled, and a local log that does not verify (a
broken chain must not become the "newest copy"; the older copies stay as the evidence). Shipping
is not itself audited: its record would make the log change with every shipping.

Core: no textual; boto3 is imported by dbops.platform.s3 inside its functions. Synchronous:
callers on an event loop run it in a thread (the console's timer: dbops.platform.backups.in_daemon_thread).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbops.audit import VerifyResult, canonical, read_bytes, verify_bytes

if TYPE_CHECKING:
    from dbops.config import AuditShipping, S3Location

log = logging.getLogger(__name__)

MAX_SEQ = 10**12 - 1
KEY_RE = re.compile(r"audit-(\d{12})-seq(\d+)\.jsonl$")


class ShipError(Exception):
    """Shipping or reading a shipped copy failed; the message is one line, safe to show."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class ShipResult:
    key: str | None  # the object written (or found already there); None for an empty log
    last_seq: int | None
    records: int
    uploaded: bool
    retain_until: datetime | None = None
    bucket: str = ""

    def summary(self) -> str:
        if self.key is None:
            return "the audit log is empty: nothing to ship"
        url = f"s3://{self.bucket}/{self.key}"
        if not self.uploaded:
            return f"already shipped: {url} holds the log up to seq {self.last_seq}"
        until = self.retain_until.strftime("%Y-%m-%d") if self.retain_until else "?"
        return f"shipped {self.records} record(s) up to seq {self.last_seq} to {url} (COMPLIANCE lock until {until})"


def host_name() -> str:
    """This host's name as a key segment: letters, digits, . _ - only."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"


def _prefix(location: S3Location) -> str:
    p = location.prefix.strip("/")
    return p + "/" if p else ""


def host_prefix(location: S3Location, host: str) -> str:
    return f"{_prefix(location)}{host}/audit-"


def object_key(location: S3Location, host: str, last_seq: int) -> str:
    return f"{host_prefix(location, host)}{MAX_SEQ - last_seq:012d}-seq{last_seq}.jsonl"


def _last_record(data: bytes) -> dict[str, Any]:
    return json.loads(data.rstrip(b"\n").rsplit(b"\n", 1)[-1])


def require_object_lock(location: S3Location) -> None:
    """ShipError unless the bucket has Object Lock enabled."""
    from dbops.platform import s3 as s3ops

    try:
        protection = s3ops.bucket_protection(location)
    except s3ops.S3Error as exc:
        raise ShipError(f"audit shipping: {exc.message}") from None
    lock = protection.get("object_lock")
    if not lock or not lock.get("enabled"):
        raise ShipError(
            f"audit shipping: bucket {location.bucket} does not have Object Lock enabled: refusing to ship the audit "
            "log there (a copy anyone can delete proves nothing); create a bucket with Object Lock "
            "(ObjectLockEnabledForBucket) and point [audit.ship] s3 at it"
        )


def ship(log_path: Path, shipping: AuditShipping, *, host: str | None = None, now: datetime | None = None) -> ShipResult:
    """Upload the whole audit log as one locked object (see the module docstring)."""
    from dbops.platform import s3 as s3ops

    location = shipping.s3
    host = host or host_name()
    try:
        data, head = read_bytes(log_path)
    except FileNotFoundError:
        return ShipResult(None, None, 0, False, bucket=location.bucket)
    except OSError as exc:
        raise ShipError(f"audit shipping: cannot read {log_path}: {exc.strerror or exc}") from None
    if not data:
        return ShipResult(None, None, 0, False, bucket=location.bucket)
    verdict = verify_bytes(data, head, log_path.name)
    if not verdict.ok:
        raise ShipError(f"audit shipping: the local audit log does not verify ({verdict.summary()}): not shipped; "
                        "run `dbops audit verify`")
    last = _last_record(data)
    last_seq = int(last["seq"])
    key = object_key(location, host, last_seq)
    require_object_lock(location)

    try:
        bucket = s3ops.Bucket(location)
        if bucket.head(key) is not None:
            return ShipResult(key, last_seq, verdict.count, False, bucket=location.bucket)
        now = now or datetime.now(UTC)
        until = now + timedelta(days=shipping.retain_days)
        with bucket.errors(bucket.url(key)):
            bucket.client.put_object(
                Bucket=location.bucket, Key=key, Body=data, ContentType="application/x-ndjson",
                ContentMD5=base64.b64encode(hashlib.md5(data).digest()).decode("ascii"),
                ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=until,
                Metadata={"seq": str(last_seq), "hash": str(last["hash"]), "records": str(verdict.count),
                          "sha256": hashlib.sha256(data).hexdigest(), "host": host},
            )
    except s3ops.S3Error as exc:
        raise ShipError(f"audit shipping: {exc.message}") from None
    return ShipResult(key, last_seq, verdict.count, True, until, location.bucket)


def ship_reporting(log_path: Path, shipping: AuditShipping | None) -> tuple[bool, str] | None:
    """ship(), for the end of a runbook run and the console's timer: never raises, logs every
    outcome. (ok, one line to show) or None when shipping is not configured."""
    if shipping is None:
        return None
    try:
        result = ship(log_path, shipping)
    except ShipError as exc:
        log.warning("%s", exc.message)
        return False, exc.message
    except Exception as exc:  # a bug of ours must not cost a runbook its outcome: report it
        from dbops.crash import write_crash_report

        where = write_crash_report(exc, "audit shipping")
        message = f"audit shipping failed unexpectedly ({type(exc).__name__}); details in {where}"
        log.error("%s", message)
        return False, message
    log.info("%s", result.summary())
    return True, result.summary()


# ---------------------------------------------------------------------------------------------
# Reading a shipped copy back


@dataclass(frozen=True)
class ShippedCheck:
    key: str
    chain: VerifyResult  # the shipped copy's own chain
    consistent: bool  # the local log begins with exactly the shipped bytes
    consistency: str  # one line: how the local log relates to the copy

    @property
    def ok(self) -> bool:
        return self.chain.ok and self.consistent


def newest_shipped(location: S3Location, host: str) -> tuple[str, bytes, dict[str, str]] | None:
    """(key, bytes, metadata) of the newest shipped copy of `host`'s log, or None."""
    from dbops.platform import s3 as s3ops

    prefix = host_prefix(location, host)
    try:
        bucket = s3ops.Bucket(location)
        with bucket.errors(f"s3://{location.bucket}/{prefix}*"):
            listing = bucket.client.list_objects_v2(Bucket=location.bucket, Prefix=prefix, MaxKeys=1)
            found = [o["Key"] for o in listing.get("Contents", []) if KEY_RE.search(o["Key"])]
            if not found:
                return None
            obj = bucket.client.get_object(Bucket=location.bucket, Key=found[0])
            body = obj["Body"]
            try:
                data = body.read()
            finally:
                body.close()
    except s3ops.S3Error as exc:
        raise ShipError(exc.message) from None
    return found[0], data, dict(obj.get("Metadata", {}))


def compare(shipped: bytes, local: bytes) -> tuple[bool, str]:
    """Whether the local log still begins with the shipped copy, line for line."""
    ship_lines = shipped.splitlines(keepends=True)
    local_lines = local.splitlines(keepends=True)
    for i, line in enumerate(ship_lines):
        if i >= len(local_lines):
            return False, (f"the local log has {len(local_lines)} record(s) but the shipped copy has {len(ship_lines)}: "
                           "records were removed from the local log after shipping")
        if local_lines[i] != line:
            return False, (f"line {i + 1} differs between the local log and the shipped copy: one of them was "
                           "altered after shipping (the shipped copy is locked; suspect the local log)")
    extra = len(local_lines) - len(ship_lines)
    return True, (f"the local log begins with the shipped copy's {len(ship_lines)} record(s)"
                  + (f" and has {extra} newer record(s) not shipped yet" if extra else " and has nothing newer"))


def verify_shipped(log_path: Path, shipping: AuditShipping, *, host: str | None = None) -> ShippedCheck:
    """Download the newest shipped copy, verify its chain, compare it with the local log."""
    location = shipping.s3
    host = host or host_name()
    found = newest_shipped(location, host)
    if found is None:
        raise ShipError(f"no shipped copy of this host's audit log under s3://{location.bucket}/{host_prefix(location, host)}*")
    key, data, meta = found
    head = None
    if meta.get("seq") and meta.get("hash"):
        try:
            head = canonical({"seq": int(meta["seq"]), "hash": meta["hash"]})
        except ValueError:
            head = b"not a head"  # verify_bytes reports it as a malformed head
    chain = verify_bytes(data, head, f"s3://{location.bucket}/{key}")
    try:
        local, _ = read_bytes(log_path)
    except OSError as exc:
        return ShippedCheck(key, chain, False, f"cannot read the local log {log_path}: {exc.strerror or exc}")
    consistent, text = compare(data, local)
    return ShippedCheck(key, chain, consistent, text)


def ship_drill_report(files: list[Path], shipping: AuditShipping | None, run_id: str) -> tuple[bool, str] | None:
    """A drill's report files beside the audit log ([audit.ship]), locked like it, after the
    audit log that records their SHA-256: a reader can check each against its record. Never
    raises; (ok, one line) or None when shipping is not configured."""
    return ship_files(files, shipping, "drills", run_id, "drill report")


def ship_files(files: list[Path], shipping: AuditShipping | None, folder: str, run_id: str, what: str) -> tuple[bool, str] | None:
    """Files beside the audit log, under <host>/<folder>/<run_id>/, locked like it (a drill's
    report, an incident bundle). Never raises; (ok, one line) or None without [audit.ship]."""
    if shipping is None:
        return None
    from dbops.platform import s3 as s3ops

    location = shipping.s3
    prefix = f"{_prefix(location)}{host_name()}/{folder}/{run_id}/"
    try:
        require_object_lock(location)
        bucket = s3ops.Bucket(location)
        until = datetime.now(UTC) + timedelta(days=shipping.retain_days)
        for path in files:
            data = path.read_bytes()
            key = prefix + path.name
            with bucket.errors(bucket.url(key)):
                bucket.client.put_object(
                    Bucket=location.bucket, Key=key, Body=data,
                    ContentMD5=base64.b64encode(hashlib.md5(data).digest()).decode("ascii"),
                    ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=until,
                    Metadata={"sha256": hashlib.sha256(data).hexdigest(), "run-id": run_id})
    except ShipError as exc:
        return False, exc.message
    except s3ops.S3Error as exc:
        return False, f"{what} shipping: {exc.message}"
    except OSError as exc:
        return False, f"{what} shipping: cannot read {exc.filename}: {exc.strerror or exc}"
    return True, f"{what} shipped to s3://{location.bucket}/{prefix} ({len(files)} files)"
