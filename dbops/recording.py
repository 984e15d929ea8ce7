"""Session recordings: what the console saw, on one clock, for replay and the incident review.

A recording is one SQLite file (suffix .dbrec), schema-versioned:

    meta     key/value: schema, dbops version, host, the config (scrubbed), when it started
    frames   one row per change the hub made: a cluster's snapshots and judged health
             ("health"), the fleet's alerts ("alerts"), a cluster's backups ("backups"); the
             payload is the hub's own immutable values, pickled and compressed with zstd (as
             Dolphie's replay files are). `keyframe` rows restate every cluster's state at the
             start of a file, so each file replays on its own.
    events   the timeline: state changes derived from consecutive frames (member down/up,
             role and timeline changes, metrics crossing a severity), alerts firing and
             resolving, the audit log's records (runbook steps, actions), operator notes.

`Recorder` writes from a thread of its own: the hub only hands over the values it already made,
so recording never holds up a poll. Files are cut every `segment_minutes` and the directory is
kept under `keep_hours` and `max_mb` by removing whole old files.

Payloads are read back with a restricted unpickler: only dbops' own (and registered engines')
dataclasses and enums, and a few plain types, can appear; anything else in a file is refused
with a message, never called (a recording may come from another machine in a bundle).

This module is core: no textual. zstandard is imported when a recording is written or read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import importlib
import io
import json
import logging
import operator
import os
import pickle
import socket
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbops.model import ClusterHealth, Reachability, Severity, Snapshot

if TYPE_CHECKING:
    from dbops.config import Config, RecordingOptions
    from dbops.hub import AlertsState

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SUFFIX = ".dbrec"
# How long the writer holds rows before a commit: what a crash of the console can lose.
COMMIT_EVERY = 1.0
# The queue between the hub and the writer: past this many waiting values the writer is far
# behind (a full disk, a stalled file system), and frames are dropped with a "gap" event
# rather than growing the console's memory without end.
QUEUE_LIMIT = 20_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS frames (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, kind TEXT NOT NULL, cluster TEXT NOT NULL,
    keyframe INTEGER NOT NULL DEFAULT 0, payload BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS frames_by_cluster ON frames (kind, cluster, ts);
CREATE INDEX IF NOT EXISTS frames_by_time ON frames (ts);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, source TEXT NOT NULL, cluster TEXT NOT NULL,
    member TEXT NOT NULL, severity TEXT NOT NULL, text TEXT NOT NULL, detail TEXT);
CREATE INDEX IF NOT EXISTS events_by_time ON events (ts);
"""


class RecordingError(Exception):
    """A recording that cannot be written or read; the message says which file and why."""


# -- payloads --------------------------------------------------------------------------------

_PLAIN = {
    ("builtins", "frozenset"), ("builtins", "set"), ("builtins", "complex"), ("builtins", "bytearray"),
    ("datetime", "datetime"), ("datetime", "date"), ("datetime", "time"), ("datetime", "timedelta"),
    ("datetime", "timezone"), ("decimal", "Decimal"), ("collections", "OrderedDict"),
}


def _allowed_roots() -> tuple[str, ...]:
    """dbops itself and every registered engine's package (a plugin's data classes)."""
    from dbops.engine_spec import specs

    roots = {"dbops"}
    for spec in specs().values():
        roots.add(spec.adapter.partition(":")[0].split(".")[0])
    return tuple(sorted(roots))


def _rebuild(cls: type, values: tuple[Any, ...]) -> Any:
    """A dataclass as it was pickled, field by field (no __init__, no __post_init__: a recording
    restores values, it does not validate them again). A field added since the recording was
    made (always at the end, with a default) takes its default."""
    obj: Any = object.__new__(cls)
    fields = dataclasses.fields(cls)
    for f, value in zip(fields, values):
        object.__setattr__(obj, f.name, value)
    for f in fields[len(values):]:
        if f.default is not dataclasses.MISSING:
            object.__setattr__(obj, f.name, f.default)
        elif f.default_factory is not dataclasses.MISSING:
            object.__setattr__(obj, f.name, f.default_factory())
        else:
            raise RecordingError(f"{cls.__name__}.{f.name} is not in the recording and has no default")
    return obj


class _Reducers(dict[type, Any]):
    """Pickle's dispatch table for a frame: a dataclass is its fields' values read by one C
    attrgetter, rebuilt by _rebuild. Frozen slotted dataclasses otherwise pickle through
    dataclasses' own Python __getstate__, which was half of the recording's cost."""

    def __missing__(self, cls: type) -> Any:
        reducer: Any
        if issubclass(cls, type):
            raise KeyError(cls)  # a class itself (a metaclass's instance): pickled by reference, as usual
        if dataclasses.is_dataclass(cls):
            names = [f.name for f in dataclasses.fields(cls)]
            getter = operator.attrgetter(*names) if len(names) > 1 else (lambda o, n=names[0]: (getattr(o, n),))
            reducer = lambda o, cls=cls, get=getter: (_rebuild, (cls, get(o)))  # noqa: E731
        else:
            reducer = _default_reduce
        self[cls] = reducer
        return reducer


def _default_reduce(obj: Any) -> Any:
    return obj.__reduce_ex__(5)


class _SafeUnpickler(pickle.Unpickler):
    roots: tuple[str, ...] = ()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PLAIN:
            return super().find_class(module, name)
        if (module, name) == (__name__, "_rebuild"):
            return _rebuild
        if module.split(".")[0] in self.roots and "." not in name:
            obj = getattr(importlib.import_module(module), name, None)
            if isinstance(obj, type) and (dataclasses.is_dataclass(obj) or issubclass(obj, enum.Enum)):
                return obj
        raise RecordingError(f"the recording holds a {module}.{name}, which this dbops does not read from a recording "
                             "(it may come from another dbops version)")


class Codec:
    """Pickle + zstd, one compressor per writer (zstandard's objects are not thread-safe)."""

    def __init__(self, level: int = 3) -> None:
        import zstandard

        self._compress = zstandard.ZstdCompressor(level=level).compress
        self._decompress = zstandard.ZstdDecompressor().decompress
        self._damaged = zstandard.ZstdError
        self._roots = _allowed_roots()
        self._reducers = _Reducers()

    def pack_raw(self, obj: Any) -> bytes:
        out = io.BytesIO()
        pickler = pickle.Pickler(out, protocol=5)
        pickler.dispatch_table = self._reducers
        pickler.dump(obj)
        return out.getvalue()

    def compress(self, raw: bytes) -> bytes:
        return self._compress(raw)

    def decompress(self, blob: bytes) -> bytes:
        return self._decompress(blob)

    def unpack(self, blob: bytes) -> Any:
        try:
            raw = self._decompress(blob)
        except self._damaged as exc:  # a damaged row
            raise RecordingError(f"a frame cannot be decompressed ({exc})") from None
        unpickler = _SafeUnpickler(io.BytesIO(raw))
        unpickler.roots = self._roots
        try:
            return unpickler.load()
        except RecordingError:
            raise
        except Exception as exc:
            raise RecordingError(f"a frame cannot be read ({type(exc).__name__}: {exc})") from None


# -- secrets ---------------------------------------------------------------------------------


def config_secret_values(config: Config) -> list[str]:
    """Every credential value the config names that can be read here (literals, environment
    variables, files): what must never be written into a recording or a bundle."""
    from dbops.config import SecretRef
    from dbops.secrets import SecretError, resolve

    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, SecretRef):
            try:
                secret = resolve(value) if value.env or value.file or value.value else None
            except SecretError:  # a reference that cannot be read here holds nothing to scrub here
                secret = None
            if secret is not None and len(secret.reveal()) >= 4:
                found.append(secret.reveal())
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                walk(getattr(value, f.name, None))
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    walk(config)
    return sorted(set(found), key=len, reverse=True)


def scrub_values(obj: Any, secrets: list[str]) -> Any:
    """`obj` with every secret value in its strings replaced by ***: dataclasses rebuilt field by
    field (frozen ones too), containers rebuilt, everything else kept."""
    from dbops.config import SecretRef
    from dbops.secrets import REDACTED

    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            for s in secrets:
                if s in value:
                    value = value.replace(s, REDACTED)
            return value
        if isinstance(value, SecretRef):
            return dataclasses.replace(value, value=REDACTED) if value.value is not None else value
        if isinstance(value, enum.Enum) or value is None or isinstance(value, (int, float, bytes)):
            return value
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            clone = object.__new__(type(value))
            for f in dataclasses.fields(value):
                object.__setattr__(clone, f.name, scrub(getattr(value, f.name)))
            return clone
        if isinstance(value, tuple):
            return tuple(scrub(v) for v in value)
        if isinstance(value, list):
            return [scrub(v) for v in value]
        if isinstance(value, dict):
            return {scrub(k): scrub(v) for k, v in value.items()}
        if isinstance(value, (set, frozenset)):
            return type(value)(scrub(v) for v in value)
        return value

    return scrub(obj)


def scrubbed_config(config: Config) -> Config:
    """The config as a recording keeps it: literal credentials replaced by ***."""
    result: Config = scrub_values(config, [])
    return result


# -- what changed: the timeline's state events -----------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    ts: float
    source: str  # state, alert, audit, note, recording
    cluster: str  # "env/name", or "" for the fleet
    member: str
    severity: str  # ok, info, warning, error (a note: note)
    text: str
    detail: str | None = None  # the audit record's JSON, a note's operator


_LEVEL = {Severity.OK: "ok", Severity.WARN: "warning", Severity.CRIT: "error", Severity.UNKNOWN: "warning"}


_FACTS: dict[str, Any] = {}


def _facts_of(engine: str) -> Any:
    """The engine's facts function (EngineSpec.facts), looked up once per engine."""
    try:
        return _FACTS[engine]
    except KeyError:
        from dbops.engine_spec import spec_of

        try:
            found = spec_of(engine).facts_of()
        except Exception as exc:  # an engine that cannot be loaded has no facts to compare
            log.warning("engine %s: its facts cannot be read: %s", engine, exc)
            found = None
        _FACTS[engine] = found
        return found


_FACTS_FAILED: set[str] = set()  # engines whose facts function raised (logged once each)


def _facts(health: ClusterHealth) -> dict[str, dict[str, str]]:
    """The engine's facts (a PostgreSQL member's timeline, a Kafka group's state ...), by member,
    "" for the cluster's own. An engine's function that fails leaves its facts off the timeline
    (said once in the log), never the judgement or the recording."""
    facts_of = _facts_of(health.engine)
    if facts_of is None:
        return {}
    try:
        found: dict[str, dict[str, str]] = facts_of(health)
    except Exception as exc:  # an engine's bug (a plugin's too): the rest of the timeline goes on
        if health.engine not in _FACTS_FAILED:
            _FACTS_FAILED.add(health.engine)
            log.warning("engine %s: its timeline facts failed (%s: %s); they are left off", health.engine, type(exc).__name__, exc)
        return {}
    return found


def _metric_levels(health: ClusterHealth) -> dict[tuple[str, str], tuple[Severity, str]]:
    """(member or "", metric name) -> the worst severity among that name's metrics, and its message."""
    out: dict[tuple[str, str], tuple[Severity, str]] = {}
    groups = [("", health.metrics)] + [(m.name, m.metrics) for m in health.members]
    for member, metrics in groups:
        for metric in metrics:
            if metric.name == "reachability":
                continue  # said by the member's own down/up event
            key = (member, metric.name)
            worst = out.get(key)
            if worst is None or metric.severity.rank > worst[0].rank:
                out[key] = (metric.severity, metric.message)
    return out


def state_of(health: ClusterHealth) -> list[Any]:
    """What the timeline tells about a judgement (two equal ones make no event; only ever
    compared, never hashed): the cluster's severity, each member's reachability, role and
    severity, every metric's severity, and the engine's facts. The hub's thread computes it for
    every refresh of every cluster, so it is list comprehensions and the facts' dicts as they
    are (dicts compare regardless of order): 4 µs for a fleet's mix of PostgreSQL and Redis
    judgements, where tuples built from generators and sorted facts took 26 µs (measured on a
    recorded fleet's frames). Engines' facts read values, never scan."""
    return [health.severity,
            [(m.name, m.snapshot.reachability, m.role, m.severity, [(x.name, x.severity) for x in m.metrics])
             for m in health.members],
            [(x.name, x.severity) for x in health.metrics],
            _facts(health)]


def state_changes(before: ClusterHealth | None, after: ClusterHealth, ts: float) -> list[Event]:
    """What the operator would have noticed between two judgements of one cluster: members
    going down or coming back, role changes, an engine's facts changing (a timeline), metrics
    crossing a severity, the cluster's own severity. A member's first answer after PENDING is
    not a change; a first judgement says only what is wrong."""
    key = f"{after.environment}/{after.name}"
    out: list[Event] = []
    old = {m.name: m for m in before.members} if before is not None else {}
    for m in after.members:
        was = old.get(m.name)
        reach = m.snapshot.reachability
        if reach is Reachability.PENDING:
            continue
        if was is None or was.snapshot.reachability is Reachability.PENDING:
            if not m.snapshot.reachable:
                out.append(Event(ts, "state", key, m.name, "error", f"{m.name} {reach.value}: {m.snapshot.error or 'no answer'}"))
            continue
        if was.snapshot.reachability is not reach:
            if m.snapshot.reachable:
                out.append(Event(ts, "state", key, m.name, "ok", f"{m.name} UP again (was {was.snapshot.reachability.value})"))
            else:
                out.append(Event(ts, "state", key, m.name, "error", f"{m.name} {reach.value}: {m.snapshot.error or 'no answer'}"))
        if m.role != was.role and m.snapshot.reachable and was.snapshot.reachable:
            out.append(Event(ts, "state", key, m.name, "warning", f"{m.name} role {was.role} → {m.role}"))
    if before is not None:
        old_facts, new_facts = _facts(before), _facts(after)
        for member, facts in new_facts.items():
            previous = old_facts.get(member)
            if previous is None:
                continue
            for name, value in facts.items():
                if name in previous and previous[name] != value:
                    # Neutral: what the change means for the cluster is its severities' events.
                    who = f"{member} " if member else ""
                    out.append(Event(ts, "state", key, member, "info", f"{who}{name} {previous[name]} → {value}"))
    old_levels = _metric_levels(before) if before is not None else {}
    for (member, name), (severity, message) in _metric_levels(after).items():
        level = old_levels.get((member, name))
        was_sev = level[0] if level is not None else Severity.OK
        if severity is was_sev:
            continue
        if before is None and severity is Severity.OK:
            continue
        who = f"{member} " if member else ""
        if severity is Severity.OK:
            out.append(Event(ts, "state", key, member, "ok", f"{who}{name} OK again"))
        else:
            out.append(Event(ts, "state", key, member, _LEVEL[severity], f"{who}{name} {severity.name}: {message}"))
    if before is not None and before.severity is not after.severity:
        out.append(Event(ts, "state", key, "", _LEVEL[after.severity], f"cluster {before.severity.name} → {after.severity.name}"))
    return out


def alert_changes(before: AlertsState | None, after: AlertsState, ts: float) -> list[Event]:
    old = {a.fingerprint: a for a in (before.alerts if before is not None else ())}
    new = {a.fingerprint: a for a in after.alerts}
    out = []
    for fp, a in new.items():
        if fp not in old:
            sev = "error" if a.severity in ("critical", "page") else "warning"
            out.append(Event(ts, "alert", a.cluster or "", a.member or "", sev,
                             f"alert {a.name} firing" + (f": {a.summary}" if a.summary else "")))
    for fp, a in old.items():
        if fp not in new:
            out.append(Event(ts, "alert", a.cluster or "", a.member or "", "ok", f"alert {a.name} resolved"))
    if before is not None and (before.error is None) != (after.error is None):
        out.append(Event(ts, "alert", "", "", "warning" if after.error else "ok",
                         f"Alertmanager cannot be read: {after.error}" if after.error else "Alertmanager read again"))
    return out


def audit_event(record: dict[str, Any]) -> Event:
    """An audit record as a line of the timeline: what ran (or was refused), which step, how it ended."""
    from dbops.audit import parse_timestamp

    ts = parse_timestamp(record["ts"]).timestamp()
    action = str(record.get("action") or "?")
    step = record.get("step")
    phase = record.get("phase")
    outcome = record.get("outcome")
    # A runbook's or a drill's action already ends with its step ("postgres.promote-replica:fence").
    said = not step or action.endswith((f":{step}", f".{step}")) or step in ("drill", "drill-resumed")
    text = action + ("" if said else f" step {step}")
    if phase == "intent":
        text += ": starting"
    elif phase == "abort":
        text += f": not run ({outcome})" + (f": {record['reason']}" if record.get("reason") else "")
    else:
        text += f": {outcome}" + (f" in {record['duration_ms'] / 1000:.1f}s" if record.get("duration_ms") is not None else "")
        if record.get("error"):
            text += f": {record['error']}"
    login = (record.get("operator") or {}).get("login")
    if login:
        text += f" (by {login})"
    severity = "error" if outcome == "failed" else "warning" if phase == "abort" else "info"
    cluster = f"{record.get('environment')}/{record.get('cluster')}" if record.get("cluster") else ""
    return Event(ts, "audit", cluster, str(record.get("member") or ""), severity, text, json.dumps(record, sort_keys=True))


@dataclasses.dataclass(frozen=True)
class RecordedAudit:
    """The audit records a recording holds, as the log had them while it recorded."""

    records: list[dict[str, Any]]  # in the log's order
    mismatched: int  # records that no longer match their own hash, with nothing removed from them
    unreadable: int  # audit events whose record cannot be read back
    redacted: int = 0  # records the recorder scrubbed a credential's value from: not checkable

    def verdict(self) -> str:
        said = f"{len(self.records)} audit record(s) in the recording; each one's hash recomputed: "
        checked = len(self.records) - self.redacted
        said += ("all match" if checked else "none could be") if not self.mismatched else f"{self.mismatched} do NOT match"
        if self.redacted:
            said += f"; {self.redacted} had a credential's value removed by the recorder, so their hash cannot be checked"
        if self.unreadable:
            said += f"; {self.unreadable} cannot be read"
        # The chain links each record to the one before it in the whole log, which is not here.
        return said + " (the chain between them: `dbops audit verify` on the host, or a bundle's audit-verify.txt)"

    @property
    def ok(self) -> bool:
        return not self.mismatched and not self.unreadable


def recorded_audit(events: list[Event]) -> RecordedAudit:
    """The audit records among a recording's events (audit_event keeps each one whole)."""
    from dbops.audit import record_hash
    from dbops.secrets import REDACTED

    records: list[dict[str, Any]] = []
    unreadable = 0
    for e in events:
        if e.source != "audit":
            continue
        try:
            record = json.loads(e.detail or "")
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            unreadable += 1
    records.sort(key=lambda r: (r.get("seq") is None, r.get("seq") or 0))
    mismatched = redacted = 0
    for r in records:
        if record_hash({k: v for k, v in r.items() if k != "hash"}) == r.get("hash"):
            continue
        # The recorder replaces a credential's value wherever it finds it (a weak password can
        # be a word of an action's name): such a record cannot match, and is no sign of tampering.
        if REDACTED in json.dumps(r):
            redacted += 1
        else:
            mismatched += 1
    return RecordedAudit(records, mismatched, unreadable, redacted)


# -- one file --------------------------------------------------------------------------------


def _dbops_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dbops")
    except PackageNotFoundError:
        return "unknown"


def create_file(path: Path, config: Config, started: float) -> sqlite3.Connection:
    """A new recording file (mode 0600, like the audit log: it holds what the servers said)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_SCHEMA)
    codec = Codec()
    db.execute("BEGIN")
    db.executemany("INSERT INTO meta VALUES (?, ?)", [
        ("schema", str(SCHEMA_VERSION)), ("dbops", _dbops_version()), ("host", socket.gethostname()),
        ("started", repr(started)), ("pid", str(os.getpid())),
    ])
    db.execute("INSERT INTO meta VALUES ('config', ?)", (codec.compress(codec.pack_raw(scrubbed_config(config))).hex(),))
    db.execute("COMMIT")
    return db


def open_file(path: Path, *, writable: bool = False) -> sqlite3.Connection:
    """A recording to read (and, writable, to add review notes to); RecordingError when it is
    not one this dbops can read."""
    if not path.is_file():
        raise RecordingError(f"{path}: no such recording")
    mode = "rw" if writable else "ro"
    try:
        db = sqlite3.connect(f"file:{path}?mode={mode}", uri=True, check_same_thread=False, isolation_level=None)
        rows = dict(db.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as exc:
        raise RecordingError(f"{path}: not a dbops recording ({exc})") from None
    schema = rows.get("schema")
    if schema != str(SCHEMA_VERSION):
        db.close()
        raise RecordingError(f"{path}: recording schema {schema!r}; this dbops reads schema {SCHEMA_VERSION}")
    return db


@dataclass(frozen=True)
class Frame:
    id: int
    ts: float
    kind: str
    cluster: str
    keyframe: bool
    value: Any


class Reading:
    """A recording opened for reading: its config, its span, its frames and its events."""

    def __init__(self, path: Path, *, writable: bool = False) -> None:
        self.path = path
        self.db = open_file(path, writable=writable)
        self.codec = Codec()
        self.meta = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        self.lock = threading.Lock()  # one connection shared by the replay thread and the UI's notes

    def close(self) -> None:
        self.db.close()

    def config(self) -> Config:
        value = self.codec.unpack(bytes.fromhex(self.meta["config"]))
        from dbops.config import Config

        if not isinstance(value, Config):
            raise RecordingError(f"{self.path}: its config is not a dbops config")
        return value

    def span(self) -> tuple[float, float]:
        """(first, last): from the recording's start to its end (when it was closed), or to the
        last thing it holds (a file still being written, or one whose writer died)."""
        with self.lock:
            lo, hi = self.db.execute("SELECT min(ts), max(ts) FROM frames").fetchone()
            elo, ehi = self.db.execute("SELECT min(ts), max(ts) FROM events").fetchone()
            ended = self.db.execute("SELECT value FROM meta WHERE key = 'ended'").fetchone()
        marks = [x for x in (lo, hi, elo, ehi) if x is not None]
        first = min([float(self.meta["started"]), *marks]) if "started" in self.meta else min(marks or [0.0])
        last = max([first, *marks, *([float(ended[0])] if ended else [])])
        return first, last

    def _frames(self, sql: str, args: Iterable[Any]) -> list[Frame]:
        with self.lock:
            rows = self.db.execute(sql, tuple(args)).fetchall()
        return [Frame(i, ts, kind, cluster, bool(key), self.codec.unpack(payload)) for i, ts, kind, cluster, key, payload in rows]

    def latest(self, kind: str, cluster: str, at: float) -> Frame | None:
        found = self._frames("SELECT id, ts, kind, cluster, keyframe, payload FROM frames WHERE kind = ? AND cluster = ? "
                             "AND ts <= ? ORDER BY ts DESC, id DESC LIMIT 1", (kind, cluster, at))
        return found[0] if found else None

    def frames_between(self, after: float, until: float, kind: str | None = None, cluster: str | None = None) -> list[Frame]:
        """Frames with after < ts <= until, oldest first."""
        sql = "SELECT id, ts, kind, cluster, keyframe, payload FROM frames WHERE ts > ? AND ts <= ?"
        args: list[Any] = [after, until]
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        if cluster is not None:
            sql += " AND cluster = ?"
            args.append(cluster)
        return self._frames(sql + " ORDER BY ts, id", args)

    def event_times(self) -> list[float]:
        """When each event happened: the time bar's marks, and where . and , step to."""
        with self.lock:
            return [r[0] for r in self.db.execute("SELECT ts FROM events ORDER BY ts")]

    def events(self, since: float | None = None, until: float | None = None, cluster: str | None = None) -> list[Event]:
        return read_events(self.db, since, until, cluster, self.lock)

    def add_note(self, note: Event) -> None:
        with self.lock:
            insert_events(self.db, [note])


def read_events(db: sqlite3.Connection, since: float | None, until: float | None, cluster: str | None,
                lock: threading.Lock | None = None) -> list[Event]:
    sql = "SELECT ts, source, cluster, member, severity, text, detail FROM events WHERE 1 = 1"
    args: list[Any] = []
    if since is not None:
        sql += " AND ts >= ?"
        args.append(since)
    if until is not None:
        sql += " AND ts <= ?"
        args.append(until)
    if cluster is not None:
        # The fleet's own lines (an Alertmanager outage, a gap) belong to every cluster's story.
        sql += " AND (cluster = ? OR cluster = '')"
        args.append(cluster)
    with lock if lock is not None else contextlib.nullcontext():
        rows = db.execute(sql + " ORDER BY ts, id", args).fetchall()
    return [Event(*row) for row in rows]


def insert_events(db: sqlite3.Connection, events: Iterable[Event]) -> None:
    db.executemany("INSERT INTO events (ts, source, cluster, member, severity, text, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   [(e.ts, e.source, e.cluster, e.member, e.severity, e.text, e.detail) for e in events])


def note_event(text: str, operator: str, cluster: str | None, at: float, *, review: bool = False) -> Event:
    """An operator's note: `review` marks one added while replaying (after the fact)."""
    from dbops.secrets import scrub_text

    detail = json.dumps({"operator": operator, "review": review})
    return Event(at, "note", cluster or "", "", "note", scrub_text(text.strip()), detail)


# -- the directory ---------------------------------------------------------------------------


def recordings_dir(options: RecordingOptions, state_dir: Path) -> Path:
    return Path(options.dir).expanduser() if options.dir else state_dir / "recordings"


def recording_files(directory: Path) -> list[Path]:
    """The directory's recordings, oldest first (by name: each starts with its UTC start time)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix == SUFFIX and p.is_file())


def file_name(started: float) -> str:
    stamp = datetime.fromtimestamp(started, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{socket.gethostname()}-{os.getpid()}{SUFFIX}"


def enforce_retention(directory: Path, options: RecordingOptions, keep: Path | None, now: float) -> list[Path]:
    """Remove files older than keep_hours, then the oldest while the total is over max_mb;
    never `keep` (the file being written). Returns what was removed."""
    removed: list[Path] = []
    files = [p for p in recording_files(directory) if p != keep]

    def size(p: Path) -> int:
        total = 0
        for q in (p, p.with_name(p.name + "-wal"), p.with_name(p.name + "-shm")):
            try:
                total += q.stat().st_size
            except FileNotFoundError:
                pass
        return total

    sizes = {p: size(p) for p in files}
    total = sum(sizes.values()) + (size(keep) if keep is not None else 0)
    limit = options.max_mb * 1024 * 1024
    for p in files:  # oldest first
        try:
            old = now - p.stat().st_mtime > options.keep_hours * 3600
        except FileNotFoundError:
            continue
        if old or total > limit:
            for q in (p, p.with_name(p.name + "-wal"), p.with_name(p.name + "-shm")):
                q.unlink(missing_ok=True)
            total -= sizes[p]
            removed.append(p)
    return removed


# -- the writer ------------------------------------------------------------------------------


class Recorder:
    """Records what a hub makes into the recordings directory, from a thread of its own.

    The hub calls health() / alerts() / backups() with the values it just made: they are only
    appended to a list (no copy, no encoding, no wake-up on its thread). The writer takes the
    list once per COMMIT_EVERY, encodes, derives the timeline's changes and commits; notes, a
    flush and stop wake it at once.

    What is kept of each cluster: every judgement of the cluster the operator has open, and of
    every cluster, each judgement whose state changed (severity, a member's reachability, role,
    a metric's severity, an engine fact such as a timeline), and otherwise one per
    `unwatched_every_seconds`. Encoding every refresh of every cluster cost a third of the
    pollers' own CPU at 300 targets; the overview in a replay then shows each cluster's values as
    of at most that long before, and every change of state at its moment."""

    def __init__(self, config: Config, directory: Path, *, audit_path: Path | None = None,
                 clock: Any = time.time) -> None:
        self.config = config
        self.options = config.recording
        self.directory = directory
        self.audit_path = audit_path
        self.clock = clock
        self.path: Path | None = None
        self.error: str | None = None  # why recording stopped, when it did
        self.frames_written = 0
        self.dropped = 0
        self.watched: str | None = None
        # Appended by the hub's thread, taken by the writer (deque's append and popleft are atomic).
        self._pending: deque[tuple[Any, ...]] = deque()
        self._kick = threading.Event()
        self._thread: threading.Thread | None = None
        self._secret_text = config_secret_values(config)
        self._secrets = [s.encode() for s in self._secret_text]
        # Per cluster: when its last judgement was kept, and the state it had (the hub's thread).
        self._kept: dict[str, tuple[float, Any]] = {}
        # The last of each value, for the timeline's changes and the next file's keyframes (the writer's).
        self._health: dict[str, tuple[dict[str, Snapshot], ClusterHealth]] = {}
        self._alerts: AlertsState | None = None
        self._backups: dict[str, Any] = {}
        self._audit_offset: int | None = None

    # -- from the hub's thread (cheap, never blocks)

    def watch(self, key: str | None) -> None:
        """The cluster the operator has open: every judgement of it is kept from now on."""
        self.watched = key
        if key is not None:
            self._kept.pop(key, None)

    def health(self, key: str, snapshots: dict[str, Snapshot], health: ClusterHealth) -> None:
        now = self.clock()
        state = state_of(health)
        every = self.options.unwatched_every_seconds
        kept = self._kept.get(key)
        if key != self.watched and every > 0 and kept is not None and kept[1] == state and now - kept[0] < every:
            return
        self._kept[key] = (now, state)
        # Whether the timeline may have something to say: only then does the writer compare.
        changed = kept is None or kept[1] != state
        self._put(("health", key, now, snapshots, health, changed))

    def alerts(self, state: AlertsState) -> None:
        self._put(("alerts", "", self.clock(), state))

    def backups(self, key: str, fetched: Any) -> None:
        self._put(("backups", key, self.clock(), fetched))

    def _put(self, item: tuple[Any, ...]) -> None:
        if self._thread is None or self.error is not None:
            return
        if len(self._pending) >= QUEUE_LIMIT:
            self.dropped += 1
            return
        self._pending.append(item)

    # -- from the console

    def note(self, text: str, operator: str, cluster: str | None = None) -> Event:
        """Record an operator's note now; returns once it is in the file."""
        if self.error is not None:
            raise RecordingError(f"recording stopped: {self.error}")
        event = note_event(text, operator, cluster, self.clock())
        done = threading.Event()
        self._pending.append(("note", event, done))
        self._kick.set()
        if not done.wait(10.0):
            raise RecordingError("the recording did not take the note within 10 s (is the disk stalled?)")
        if self.error is not None:
            raise RecordingError(f"recording stopped: {self.error}")
        return event

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything given so far is in the file."""
        done = threading.Event()
        self._pending.append(("flush", done))
        self._kick.set()
        return done.wait(timeout)

    def events(self, since: float | None = None, cluster: str | None = None) -> list[Event]:
        """The timeline so far (this file's), for the live console: read on a connection of its own."""
        path = self.path
        if path is None:
            return []
        self.flush()
        db = open_file(path)
        try:
            return read_events(db, since, None, cluster)
        finally:
            db.close()

    # -- lifecycle

    def start(self) -> None:
        started = self.clock()
        self.directory.mkdir(parents=True, exist_ok=True)
        enforce_retention(self.directory, self.options, None, time.time())
        self._db = self._new_file(started)
        if self.audit_path is not None:
            try:
                self._audit_offset = self.audit_path.stat().st_size
            except FileNotFoundError:
                self._audit_offset = 0
        self._thread = threading.Thread(target=self._run, name="dbops-recorder", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is None:
            return
        self._pending.append(("stop",))
        self._kick.set()
        self._thread.join(timeout)

    def _new_file(self, started: float) -> sqlite3.Connection:
        path = self.directory / file_name(started)
        n = 1
        while path.exists():
            path = self.directory / file_name(started).replace(SUFFIX, f"-{n}{SUFFIX}")
            n += 1
        db = create_file(path, self.config, started)
        self.path = path
        self._segment_started = started
        return db

    def _run(self) -> None:
        codec = Codec()
        db = self._db
        waiting: list[threading.Event] = []
        try:
            while True:
                self._kick.wait(COMMIT_EVERY)
                self._kick.clear()
                stop = False
                db.execute("BEGIN")
                while self._pending:
                    item = self._pending.popleft()
                    kind = item[0]
                    if kind in ("health", "alerts", "backups"):
                        self._write_frame(db, codec, item)
                    elif kind == "note":
                        insert_events(db, [self._scrub_event(item[1])])
                        waiting.append(item[2])
                    elif kind == "flush":
                        waiting.append(item[1])
                    elif kind == "stop":
                        stop = True
                if self.dropped:
                    insert_events(db, [Event(self.clock(), "recording", "", "", "warning",
                                             f"{self.dropped} frames not recorded: the recording fell behind")])
                    self.dropped = 0
                self._tail_audit(db)
                db.execute("COMMIT")
                for done in waiting:
                    done.set()
                waiting.clear()
                if stop:
                    self._close(db)
                    return
                if self.clock() - self._segment_started >= self.options.segment_minutes * 60:
                    db = self._rotate(db, codec)
        except Exception as exc:
            # A full disk or a removed directory: recording stops, the console goes on, and says so.
            from dbops.secrets import scrub_text

            self.error = scrub_text(f"{type(exc).__name__}: {exc}")
            log.error("recording stopped: %s", self.error)
            try:
                db.close()
            except Exception as close_exc:
                log.error("closing the recording failed too: %s", close_exc)
            # Whoever waits for a note or a flush is told (their wait ends; error is set).
            for done in waiting:
                done.set()
            while self._pending:
                for part in self._pending.popleft():
                    if isinstance(part, threading.Event):
                        part.set()

    def _encode(self, codec: Codec, value: Any) -> bytes:
        raw = codec.pack_raw(value)
        # A secret in what a server said (an error quoting a connection string, a query text
        # the collectors' patterns missed): found in the pickle's bytes, and only then is the
        # value rebuilt without it. Pickle stores strings as UTF-8, so the search is exact.
        if any(s in raw for s in self._secrets):
            raw = codec.pack_raw(scrub_values(value, self._secret_text))
        return codec.compress(raw)

    def _write_frame(self, db: sqlite3.Connection, codec: Codec, item: tuple[Any, ...], keyframe: bool = False) -> None:
        kind, key, ts = item[0], item[1], item[2]
        events: list[Event] = []
        if kind == "health":
            snapshots, health = item[3], item[4]
            value: Any = (snapshots, health)
            if not keyframe:
                before = self._health.get(key)
                if item[5] or before is None:
                    events = state_changes(before[1] if before is not None else None, health, ts)
                self._health[key] = (snapshots, health)
        elif kind == "alerts":
            value = item[3]
            if not keyframe:
                events = alert_changes(self._alerts, value, ts)
                self._alerts = value
        else:
            value = item[3]
            if not keyframe:
                self._backups[key] = value
        db.execute("INSERT INTO frames (ts, kind, cluster, keyframe, payload) VALUES (?, ?, ?, ?, ?)",
                   (ts, kind, key, int(keyframe), self._encode(codec, value)))
        self.frames_written += 1
        if events:
            insert_events(db, [self._scrub_event(e) for e in events])

    def _close(self, db: sqlite3.Connection) -> None:
        """The file's end, said (a replay runs to it), and the file made whole (no -wal left)."""
        db.execute("INSERT OR REPLACE INTO meta VALUES ('ended', ?)", (repr(self.clock()),))
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()

    def _rotate(self, db: sqlite3.Connection, codec: Codec) -> sqlite3.Connection:
        """A new file that starts with every cluster's current state (keyframes)."""
        self._close(db)
        now = self.clock()
        db = self._new_file(now)
        db.execute("BEGIN")
        for key, (snapshots, health) in self._health.items():
            self._write_frame(db, codec, ("health", key, now, snapshots, health, False), keyframe=True)
        if self._alerts is not None:
            self._write_frame(db, codec, ("alerts", "", now, self._alerts), keyframe=True)
        for key, fetched in self._backups.items():
            self._write_frame(db, codec, ("backups", key, now, fetched), keyframe=True)
        db.execute("COMMIT")
        removed = enforce_retention(self.directory, self.options, self.path, time.time())
        if removed:
            log.info("recordings removed by retention: %s", ", ".join(p.name for p in removed))
        return db

    def _tail_audit(self, db: sqlite3.Connection) -> None:
        """The audit records appended since the last look, as timeline events (the log stays
        the record: the bundle takes its excerpt, with the chain, from the log itself)."""
        if self.audit_path is None or self._audit_offset is None:
            return
        try:
            size = self.audit_path.stat().st_size
        except FileNotFoundError:
            return
        if size < self._audit_offset:
            self._audit_offset = 0  # a new log (the old one moved away)
        if size == self._audit_offset:
            return
        with open(self.audit_path, "rb") as f:
            f.seek(self._audit_offset)
            data = f.read(size - self._audit_offset)
        complete = data[: data.rfind(b"\n") + 1]  # a line being written is read next time
        self._audit_offset += len(complete)
        events = []
        for line in complete.splitlines():
            try:
                events.append(audit_event(json.loads(line)))
            except (ValueError, KeyError, TypeError) as exc:
                events.append(Event(self.clock(), "recording", "", "", "warning", f"an audit line could not be read: {exc}"))
        insert_events(db, [self._scrub_event(e) for e in events])

    def _scrub_event(self, event: Event) -> Event:
        """An event without the config's credential values (a server's error quoting one, a
        note with one pasted by mistake)."""
        if not any(s in event.text or (event.detail and s in event.detail) for s in self._secret_text):
            return event
        clean: Event = scrub_values(event, self._secret_text)
        return clean


def open_recorder(config: Config, state_dir: Path, audit_path: Path | None) -> tuple[Recorder | None, str | None]:
    """The console's recorder, started; (None, why) when recording is off or cannot start."""
    if not config.recording.enabled:
        return None, None
    recorder = Recorder(config, recordings_dir(config.recording, state_dir), audit_path=audit_path)
    try:
        recorder.start()
    except (OSError, sqlite3.Error, RecordingError) as exc:
        from dbops.secrets import scrub_text

        return None, scrub_text(f"recording is off: cannot write {recorder.directory}: {exc}")
    return recorder, None


def clock_text(ts: float, with_date: bool = False) -> str:
    """A recording's time as the timeline shows it: the local wall clock, to the second."""
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S")


def parse_time(text: str, around: float) -> float:
    """A typed time: "14:03", "14:03:20" (that time of the day of `around`, local), an ISO
    date-time, "+90s" / "-5m" (relative to `around`), or seconds since the epoch."""
    text = text.strip()
    if not text:
        raise ValueError("no time given")
    if text[0] in "+-":
        units = {"s": 1, "m": 60, "h": 3600}
        unit = units.get(text[-1], None)
        number = text[1:-1] if unit else text[1:]
        try:
            amount = float(number) * (unit or 1)
        except ValueError:
            raise ValueError(f"{text!r}: use +90s, -5m or +1h") from None
        return around + amount if text[0] == "+" else around - amount
    try:
        return float(text)
    except ValueError:
        pass
    for fmt in ("%H:%M:%S", "%H:%M"):
        try:
            clock = datetime.strptime(text, fmt).time()
        except ValueError:
            continue
        day = datetime.fromtimestamp(around)
        return datetime.combine(day.date(), clock).timestamp()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r}: give HH:MM[:SS], an ISO date-time, +/-N[s|m|h], or epoch seconds") from None
    return moment.timestamp()
