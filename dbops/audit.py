"""The audit log: append-only JSONL, hash-chained, durable before an action starts.

One JSON object per line, in canonical form (``json.dumps(sort_keys=True,
separators=(",", ":"), ensure_ascii=False)``). Every record carries:

    ts           UTC RFC 3339 with milliseconds and a ``Z``
    seq          0-based position in the log; consecutive
    prev         ``hash`` of the record before it (64 zeros for the first)
    hash         SHA-256 hex of ``prev + canonical JSON of the record without "hash"``
    run_id       ties the records of one operation (or runbook run) together
    step         runbook step, or None
    phase        "intent" (written and fsynced before the action), "result", or "abort"
                 (the action never started: declined, refused, precondition failed)
    operator     {login, uid, sudo_user, ssh_client, tty} as this process sees them
    host         socket.gethostname()
    environment, cluster, member, action
    params       redacted: keys that look like credentials hold "***"
    outcome      "ok", "failed", "declined", ...; None for an intent
    duration_ms  result only: time since the intent
    error        message or None
    reason       optional: why (an override, a refusal)
    detail       optional: dict with anything else worth keeping
    intent_seq   result only: seq of the intent it answers

Writing: the log is opened with O_APPEND|O_CREAT (mode 0600) and an exclusive ``flock`` is
held while the tail is read and the new line appended, so two dbops processes never fork the
chain. Each line is written with one ``write``, then the file is fsynced (and its directory,
when the file was just created). ``AuditLog.intent()`` returns only after that fsync: the
intent is on disk before the caller touches the database.

The head file. A hash chain shows an edited, inserted, removed or reordered record, but not
records cut off the *end*: a log truncated after record N is still a perfect chain. So after
every append the ``seq`` and ``hash`` of the newest record are written to a second file beside
the log, ``<log>.head`` (atomically: temp file, fsync, rename, fsync of the directory). verify
compares the last record with the head; **the head is what catches deletion of the newest
records** (and a self-consistent forgery appended at the end). The appender checks the head
too and refuses to extend a log whose tail no longer matches it, so a later append cannot
paper over a truncation.

What this does not protect against: anyone who can write these files can rebuild the whole
chain and the head (there is no key). The chain makes accidental damage and naive edits
evident; to resist a deliberate local attacker, ship records off the host as they are written
or record the head hash somewhere the attacker cannot write.

This module is core: no textual, nothing heavy at import time.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import getpass
import hashlib
import json
import math
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dbops.secrets import REDACTED, Secret, is_secret_key, scrub_text

GENESIS = "0" * 64
PHASES = ("intent", "result", "abort")
LOG_NAME = "audit.jsonl"

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class AuditError(Exception):
    """The audit log cannot be written or read. The message is safe to show to the operator."""


# ---------------------------------------------------------------------------------------------
# Canonical form and hashing


def canonical(obj: Any) -> bytes:
    """The bytes that are hashed, and the bytes of a line (without the newline)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 hex over ``prev`` followed by the canonical JSON of the record without ``hash``."""
    body = {k: v for k, v in record.items() if k != "hash"}
    prev = record.get("prev")
    prev_text = prev if isinstance(prev, str) else json.dumps(prev)
    return hashlib.sha256(prev_text.encode("utf-8") + canonical(body)).hexdigest()


def _clean_str(s: str) -> str:
    # A lone surrogate (from a mis-decoded filename, say) cannot be written as UTF-8.
    return s.encode("utf-8", "replace").decode("utf-8")


def _jsonable(value: Any) -> Any:
    """A copy of value made only of what JSON round-trips exactly (so verify re-hashes the same)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return _clean_str(str(value))
    if _is_secret(value):
        return "***"
    if isinstance(value, dict):
        return {_clean_str(str(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_jsonable(v) for v in value), key=lambda v: canonical(v))
    if isinstance(value, datetime):
        return value.isoformat()
    return _clean_str(str(value))


# ---------------------------------------------------------------------------------------------
# Redaction

# A key naming a credential (dbops.secrets.is_secret_key: the one list of secret words) has its
# value replaced by "***". Credentials written inside strings (URLs, password=..., SQL PASSWORD
# '...') are removed by dbops.secrets.scrub_text: the PostgreSQL adapter scrubs query texts with
# the same function.


def _is_secret(value: Any) -> bool:
    return isinstance(value, Secret)


def redact(value: Any) -> Any:
    """A JSON-safe copy of value with credentials removed, for params and detail."""
    if _is_secret(value):
        return REDACTED
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            key = _clean_str(str(k))
            out[key] = REDACTED if is_secret_key(key) else redact(v)
        return out
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((redact(v) for v in value), key=canonical)
    value = _jsonable(value)
    if isinstance(value, str):
        return scrub_text(value)
    return value


def _redact_text(value: str | None) -> str | None:
    return None if value is None else scrub_text(_clean_str(str(value)))


# ---------------------------------------------------------------------------------------------
# Who and when


def utc_timestamp(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_timestamp(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def operator_identity() -> dict[str, Any]:
    """Who is at the keyboard, as far as this process can tell.

    login comes from getpass (LOGNAME/USER, then the password database); uid is the real
    uid, which an environment variable cannot change.
    """
    try:
        login: str | None = getpass.getuser()
    except (KeyError, OSError):
        # No LOGNAME/USER and no passwd entry (a bare container): uid still identifies.
        login = None
    ssh = os.environ.get("SSH_CLIENT") or os.environ.get("SSH_CONNECTION")
    tty: str | None = None
    if os.isatty(0):
        try:
            tty = os.ttyname(0)
        except OSError:
            # A terminal with no device name (some container ptys): recorded as unknown.
            tty = None
    return {
        "login": login,
        "uid": os.getuid(),
        "sudo_user": os.environ.get("SUDO_USER"),
        "ssh_client": ssh.split()[0] if ssh and ssh.split() else None,
        "tty": tty,
    }


# ---------------------------------------------------------------------------------------------
# Reading


def head_path_for(path: Path) -> Path:
    return path.with_name(path.name + ".head")


@dataclass(frozen=True)
class _Line:
    number: int  # 1-based
    raw: bytes
    record: dict[str, Any] | None
    problem: str | None


def _split_lines(data: bytes) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, bytes, terminated) for each line; a final unterminated line is flagged."""
    if not data:
        return
    parts = data.split(b"\n")
    terminated_last = parts[-1] == b""
    if terminated_last:
        parts.pop()
    for i, raw in enumerate(parts, start=1):
        yield i, raw, (terminated_last or i < len(parts))


def _parse_line(number: int, raw: bytes, terminated: bool) -> _Line:
    if not terminated:
        return _Line(number, raw, None, "incomplete last line (no newline): the write was cut off")
    if not raw.strip():
        return _Line(number, raw, None, "empty line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _Line(number, raw, None, f"not UTF-8 ({exc.reason} at byte {exc.start})")
    try:
        record = json.loads(text)
    except ValueError as exc:
        return _Line(number, raw, None, f"not valid JSON ({exc})")
    if not isinstance(record, dict):
        return _Line(number, raw, None, f"not a JSON object (a {type(record).__name__})")
    return _Line(number, raw, record, None)


@dataclass(frozen=True)
class _Snapshot:
    lines: list[_Line]
    head: bytes | None  # the head file's bytes; None when there is none


def _snapshot(path: Path) -> _Snapshot:
    """The log and its head, read together under a shared lock.

    Appenders hold the exclusive lock from reading the tail to renaming the head into place,
    so a reader never sees half an append, nor a record that the head does not yet cover.
    Raises OSError when the log cannot be read.
    """
    with open(path, "rb") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
        data = fh.read()
        try:
            head: bytes | None = head_path_for(path).read_bytes()
        except FileNotFoundError:
            head = None
    # closing the file released the lock
    return _Snapshot([_parse_line(n, raw, term) for n, raw, term in _split_lines(data)], head)


def read_bytes(path: Path) -> tuple[bytes, bytes | None]:
    """The log's bytes and its head file's (None when there is none), read together under the
    shared lock, as _snapshot does: for shipping an exact copy. Raises OSError."""
    with open(path, "rb") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
        data = fh.read()
        try:
            head: bytes | None = head_path_for(Path(path)).read_bytes()
        except FileNotFoundError:
            head = None
    return data, head


def verify_bytes(data: bytes, head: bytes | None, name: str = LOG_NAME) -> VerifyResult:
    """verify() of a copy held in memory (a shipped copy); `head` is its head file's content,
    `name` names the copy in the messages."""
    snap = _Snapshot([_parse_line(n, raw, term) for n, raw, term in _split_lines(data)], head)
    return _verify(Path(name), snap)


def _records_of(lines: list[_Line]) -> list[dict[str, Any]]:
    return [line.record for line in lines if line.record is not None]


def read_records(path: Path, *, strict: bool = True) -> list[dict[str, Any]]:
    """Every record in the log, oldest first. A missing log has no records.

    strict: raise AuditError naming the first line that is not a record. Not strict: leave
    such lines out (for display next to a verify verdict, which reports them).
    """
    try:
        lines = _snapshot(path).lines
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise AuditError(f"cannot read audit log {path}: {exc.strerror or exc}") from exc
    if strict:
        for line in lines:
            if line.record is None:
                raise AuditError(f"audit log {path} line {line.number}: {line.problem}")
    return _records_of(lines)


@dataclass(frozen=True)
class _Head:
    seq: int
    hash: str


def _read_head(path: Path) -> _Head | None:
    """The head file's content; None when there is no head file. Raises ValueError if malformed."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return _parse_head(path, data)


def _parse_head(path: Path, data: bytes | None) -> _Head | None:
    if data is None:
        return None
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"head file {path} is not valid JSON ({exc})") from None
    if (
        not isinstance(obj, dict)
        or not isinstance(obj.get("seq"), int)
        or isinstance(obj.get("seq"), bool)
        or obj["seq"] < 0
        or not isinstance(obj.get("hash"), str)
        or not _HEX64.match(obj["hash"])
    ):
        raise ValueError(f"head file {path} does not hold {{seq, hash}}")
    return _Head(obj["seq"], obj["hash"])


# ---------------------------------------------------------------------------------------------
# Verifying


@dataclass(frozen=True)
class VerifyResult:
    """ok: the chain and the head agree. count: records verified (all of them when ok; those
    before the first bad one otherwise). first_bad_line is 1-based; first_bad_seq is the seq
    written in that record, or the first missing seq when records were cut off the end."""

    ok: bool
    count: int
    first_bad_line: int | None
    first_bad_seq: int | None
    reason: str | None

    def summary(self) -> str:
        if self.ok:
            return f"chain intact: {self.count} record{'s' if self.count != 1 else ''}"
        where = ""
        if self.first_bad_line is not None:
            where = f" at line {self.first_bad_line}"
            if self.first_bad_seq is not None:
                where += f" (seq {self.first_bad_seq})"
        elif self.first_bad_seq is not None:
            where = f" at seq {self.first_bad_seq}"
        return f"TAMPERED{where}: {self.reason}"


def _bad(count: int, line: int | None, seq: int | None, reason: str) -> VerifyResult:
    return VerifyResult(False, count, line, seq, reason)


def _check_record(line: _Line, expected_seq: int, prev_hash: str) -> tuple[int | None, str | None]:
    """(seq as written, problem or None) for one parsed record."""
    rec = line.record
    assert rec is not None
    seq = rec.get("seq")
    seq_val = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
    for field, kind in (("seq", int), ("prev", str), ("hash", str), ("ts", str), ("phase", str)):
        if field not in rec:
            return seq_val, f"field {field!r} is missing"
        value = rec[field]
        if not isinstance(value, kind) or isinstance(value, bool):
            return seq_val, f"field {field!r} is not a {kind.__name__}"
    try:
        actual = record_hash(rec)
        canon = canonical(rec)
    except ValueError as exc:
        return seq_val, f"cannot be put in canonical form ({exc})"
    if actual != rec["hash"]:
        return seq_val, "content does not match its hash: the record was edited"
    if canon != line.raw:
        return seq_val, "line is not byte-for-byte the canonical form of its record: the line was edited"
    if rec["seq"] != expected_seq:
        return seq_val, (
            f"seq is {rec['seq']} where {expected_seq} was expected: "
            "records before this line were removed, inserted or reordered"
        )
    if rec["prev"] != prev_hash:
        return seq_val, (
            "prev does not match the hash of the record before it: "
            "a record was removed, inserted or replaced before this line"
        )
    if rec["phase"] not in PHASES:
        return seq_val, f"phase {rec['phase']!r} is not one of {', '.join(PHASES)}"
    return seq_val, None


def verify(path: Path) -> VerifyResult:
    """Check the whole chain and the head file.

    Raises OSError (FileNotFoundError, PermissionError, ...) when the log itself cannot be
    read; everything wrong *inside* the files is reported in the result, first problem only.
    """
    path = Path(path)
    return _verify(path, _snapshot(path))


def verify_and_read(path: Path) -> tuple[VerifyResult, list[dict[str, Any]]]:
    """verify() and the records that parse (read_records(strict=False)), from one read.

    Raises OSError when the log cannot be read.
    """
    path = Path(path)
    snap = _snapshot(path)
    return _verify(path, snap), _records_of(snap.lines)


def _verify(path: Path, snap: _Snapshot) -> VerifyResult:
    lines = snap.lines
    head_file = head_path_for(path)
    prev_hash = GENESIS
    count = 0
    last_seq: int | None = None
    for line in lines:
        if line.record is None:
            return _bad(count, line.number, None, line.problem or "not a record")
        seq, problem = _check_record(line, count, prev_hash)
        if problem:
            return _bad(count, line.number, seq, problem)
        prev_hash = line.record["hash"]
        last_seq = line.record["seq"]
        count += 1

    try:
        head = _parse_head(head_file, snap.head)
    except ValueError as exc:
        return _bad(count, None, None, str(exc))
    if head is None:
        if count == 0:
            return VerifyResult(True, 0, None, None, None)
        return _bad(
            count,
            None,
            None,
            f"head file {head_file.name} is missing, so removal of the newest records cannot be ruled out",
        )
    if last_seq is None:
        return _bad(
            0,
            1,
            0,
            f"the log is empty but its head file records {head.seq + 1} record(s): the log was truncated",
        )
    if head.seq > last_seq:
        missing = head.seq - last_seq
        return _bad(
            count,
            count + 1,
            last_seq + 1,
            f"the log ends at seq {last_seq} but its head file records seq {head.seq}: "
            f"the newest {missing} record(s) were removed",
        )
    if head.seq < last_seq:
        return _bad(
            head.seq + 1,
            head.seq + 2,
            head.seq + 1,
            f"records after seq {head.seq} are not in the head file: appended by something other than dbops, "
            "or dbops stopped between writing a record and updating the head",
        )
    if head.hash != prev_hash:
        return _bad(
            count - 1,
            count,
            last_seq,
            "the newest record's hash does not match the head file: the newest record was replaced",
        )
    return VerifyResult(True, count, None, None, None)


# ---------------------------------------------------------------------------------------------
# Writing


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_last_line(fd: int, size: int) -> bytes:
    """The bytes of the last line (newline included) of a non-empty file."""
    block = 4096
    end = size
    buf = b""
    while True:
        start = max(0, end - block)
        buf = os.pread(fd, end - start, start) + buf
        idx = buf.rfind(b"\n", 0, len(buf) - 1)
        if idx >= 0:
            return buf[idx + 1 :]
        if start == 0:
            return buf
        end = start
        block *= 2


class AuditLog:
    """Appends records to one audit log. Safe to share between threads and processes."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.head_path = head_path_for(self.path)
        self._started: dict[str, float] = {}  # intent hash -> time.monotonic() at intent
        self._started_lock = threading.Lock()

    @classmethod
    def default(cls) -> AuditLog:
        """The log in the state directory ($DBOPS_STATE_DIR or the user state dir)."""
        from dbops.config import state_dir

        return cls(state_dir() / LOG_NAME)

    # -- public API ------------------------------------------------------------------------

    def intent(
        self,
        *,
        action: str,
        environment: str,
        cluster: str,
        member: str | None = None,
        params: dict | None = None,
        run_id: str | None = None,
        step: str | None = None,
        reason: str | None = None,
    ) -> dict:
        """Record that `action` is about to run. Returns once the record is fsynced to disk."""
        fields = self._base(
            phase="intent",
            action=action,
            environment=environment,
            cluster=cluster,
            member=member,
            params=params,
            run_id=run_id,
            step=step,
            reason=reason,
        )
        fields.update(outcome=None, duration_ms=None, error=None)
        started = time.monotonic()
        record = self._append(fields)
        with self._started_lock:
            self._started[record["hash"]] = started
        return record

    def result(self, intent: dict, *, outcome: str, error: str | None = None, detail: dict | None = None) -> dict:
        """Record how the action announced by `intent` (a record intent() returned) ended."""
        with self._started_lock:
            started = self._started.pop(intent.get("hash", ""), None)
        if started is not None:
            duration_ms = max(0, round((time.monotonic() - started) * 1000))
        else:
            # The intent was written by another AuditLog (or process): use the wall clock.
            elapsed = datetime.now(UTC) - parse_timestamp(intent["ts"])
            duration_ms = max(0, round(elapsed.total_seconds() * 1000))
        fields = {
            "run_id": intent.get("run_id"),
            "step": intent.get("step"),
            "phase": "result",
            "operator": operator_identity(),
            "host": socket.gethostname(),
            "environment": intent.get("environment"),
            "cluster": intent.get("cluster"),
            "member": intent.get("member"),
            "action": intent.get("action"),
            "params": redact(intent.get("params") or {}),
            "outcome": outcome,
            "duration_ms": duration_ms,
            "error": _redact_text(error),
            "intent_seq": intent.get("seq"),
        }
        if intent.get("reason") is not None:
            fields["reason"] = intent["reason"]
        if detail is not None:
            fields["detail"] = redact(detail)
        return self._append(fields)

    def abort(
        self,
        *,
        action: str,
        environment: str,
        cluster: str,
        member: str | None = None,
        params: dict | None = None,
        run_id: str | None = None,
        step: str | None = None,
        reason: str | None = None,
        outcome: str = "declined",
    ) -> dict:
        """Record an action that was never started (declined, refused, precondition failed)."""
        fields = self._base(
            phase="abort",
            action=action,
            environment=environment,
            cluster=cluster,
            member=member,
            params=params,
            run_id=run_id,
            step=step,
            reason=reason,
        )
        fields.update(outcome=outcome, duration_ms=None, error=None)
        return self._append(fields)

    def records(self) -> list[dict]:
        """Every record, oldest first. Raises AuditError on a line that is not a record."""
        return read_records(self.path, strict=True)

    # -- internals -------------------------------------------------------------------------

    def _base(
        self,
        *,
        phase: str,
        action: str,
        environment: str,
        cluster: str,
        member: str | None,
        params: dict | None,
        run_id: str | None,
        step: str | None,
        reason: str | None,
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "run_id": run_id or uuid.uuid4().hex[:12],
            "step": step,
            "phase": phase,
            "operator": operator_identity(),
            "host": socket.gethostname(),
            "environment": environment,
            "cluster": cluster,
            "member": member,
            "action": action,
            "params": redact(params or {}),
        }
        if reason is not None:
            fields["reason"] = _redact_text(reason)
        return fields

    def _open(self) -> tuple[int, bool]:
        """(fd, created) for the log, creating it (0600) and its directory if needed."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise AuditError(
                f"cannot create the audit log directory {self.path.parent}: {exc.strerror or exc}"
            ) from exc
        # Racing creators may both think they created the file; both then fsync the
        # directory, which is harmless.
        created = not self.path.exists()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise AuditError(f"cannot open the audit log {self.path}: {exc.strerror or exc}") from exc
        return fd, created

    def _tail(self, fd: int, size: int) -> tuple[int, str]:
        """(next seq, prev hash) after checking the last record against the head file."""
        try:
            head = _read_head(self.head_path)
        except ValueError as exc:
            raise AuditError(f"{exc}; not appending to {self.path} (run `dbops audit verify`)") from None
        except OSError as exc:
            raise AuditError(f"cannot read {self.head_path}: {exc.strerror or exc}") from exc
        if size == 0:
            if head is not None:
                raise AuditError(
                    f"audit log {self.path} is empty but {self.head_path.name} records {head.seq + 1} record(s): "
                    "the log was truncated or replaced. Not appending; keep both files as evidence and move "
                    "them aside to start a new log."
                )
            return 0, GENESIS
        raw = _read_last_line(fd, size)
        if not raw.endswith(b"\n"):
            raise AuditError(
                f"audit log {self.path} ends in an incomplete line (a write was cut off); not appending to a "
                "damaged chain. Run `dbops audit verify`, then move the file aside to start a new log."
            )
        line = _parse_line(0, raw[:-1], True)
        rec = line.record
        if (
            rec is None
            or not isinstance(rec.get("seq"), int)
            or isinstance(rec.get("seq"), bool)
            or not isinstance(rec.get("hash"), str)
        ):
            raise AuditError(
                f"the last line of audit log {self.path} is not a valid record ({line.problem or 'no seq/hash'}); "
                "not appending. Run `dbops audit verify`."
            )
        last_seq, last_hash = rec["seq"], rec["hash"]
        if head is None:
            # Tolerated only for a log of one record: dbops stopped between writing the first
            # record and its head file.
            if last_seq != 0:
                raise AuditError(
                    f"{self.head_path.name} is missing beside audit log {self.path} (which ends at seq "
                    f"{last_seq}), so truncation cannot be ruled out; not appending. Run `dbops audit verify`."
                )
        elif (head.seq, head.hash) != (last_seq, last_hash) and not (
            # dbops stopped between writing the last record and its head: the head is one behind.
            head.seq == last_seq - 1 and head.hash == rec.get("prev")
        ):
            raise AuditError(
                f"audit log {self.path} ends at seq {last_seq} but {self.head_path.name} records seq {head.seq}: "
                "records were removed or the log was edited. Not appending; run `dbops audit verify`."
            )
        return last_seq + 1, last_hash

    def _write_head(self, seq: int, digest: str) -> None:
        tmp = self.head_path.with_name(f".{self.head_path.name}.{os.getpid()}.tmp")
        data = canonical({"seq": seq, "hash": digest}) + b"\n"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.head_path)
        _fsync_dir(self.head_path.parent)

    def _append(self, fields: dict[str, Any]) -> dict[str, Any]:
        fd, created = self._open()
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                raise AuditError(f"cannot lock the audit log {self.path}: {exc.strerror or exc}") from exc
            try:
                size = os.fstat(fd).st_size
                seq, prev = self._tail(fd, size)
            except OSError as exc:
                raise AuditError(f"cannot read the audit log {self.path}: {exc.strerror or exc}") from exc
            record: dict[str, Any] = _jsonable({"ts": utc_timestamp(), "seq": seq, "prev": prev, **fields})
            record["hash"] = record_hash(record)
            line = canonical(record) + b"\n"
            try:
                written = os.write(fd, line)
                if written != len(line):
                    raise OSError(errno.ENOSPC, f"short write ({written} of {len(line)} bytes)")
                os.fsync(fd)
                if created:
                    _fsync_dir(self.path.parent)
            except OSError as exc:
                self._undo(fd, size, exc)
            try:
                self._write_head(seq, record["hash"])
            except OSError as exc:
                raise AuditError(
                    f"audit record seq {seq} was written but its head file {self.head_path} could not be "
                    f"updated: {exc.strerror or exc}"
                ) from exc
            return record
        finally:
            # Closing the descriptor releases the flock.
            os.close(fd)

    def _undo(self, fd: int, size: int, exc: OSError) -> None:
        """A failed append: cut the file back to where it was, so no partial line is left. Raises."""
        why = exc.strerror or str(exc)
        if exc.errno == errno.ENOSPC:
            why = "no space left on the device"
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        except OSError as undo_exc:
            raise AuditError(
                f"cannot write the audit log {self.path}: {why}; removing the partial record also failed "
                f"({undo_exc.strerror or undo_exc}), run `dbops audit verify`"
            ) from exc
        raise AuditError(f"cannot write the audit log {self.path}: {why}") from exc
