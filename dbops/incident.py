"""The incident bundle: everything the review needs about a window of time, in one tar.gz.

    recording.dbrec      the recordings' frames and timeline for the window (each cluster's state
                         at the window's start restated as keyframes): `dbops replay` opens it
    audit.jsonl          the audit log's records of the window, as written (each carries its hash)
    audit-verify.txt     the whole log's chain verdict now, and each excerpt record's hash recomputed
    runs/, drills/       the runbook journals and drill reports written in the window
    check.json           `dbops check --json` of the clusters as they are when the bundle is made
    logs/                dbops.log and crash.log lines of the window
    summary.md           the timeline in Markdown: what was seen, what was done, the notes
    MANIFEST.json        each file's size and SHA-256

Credentials are scrubbed from every file: the patterns dbops.secrets knows (URLs, key=value,
SQL PASSWORD literals) and every credential value the config names that is readable here; the
recording's payloads are checked the same way. Before the tar is written, every file (payloads
decompressed) is searched for those values once more, and the bundle is refused if one is found.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from dbops.recording import (
    Codec,
    Event,
    Reading,
    RecordingError,
    clock_text,
    config_secret_values,
    create_file,
    insert_events,
    parse_time,
    recording_files,
    recordings_dir,
    scrub_values,
)

if TYPE_CHECKING:
    from dbops.config import Config

_AGE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class BundleError(Exception):
    pass


def parse_since(text: str, now: float) -> float:
    """ "2h", "90m", "1d", "30s" (that long before `now`) or a time parse_time() reads."""
    m = _AGE.match(text.strip())
    if m:
        return now - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        return parse_time(text, now)
    except ValueError:
        raise ValueError(f"{text!r}: give an age (90m, 2h, 1d) or a time (HH:MM, an ISO date-time)") from None


@dataclass
class BundleResult:
    path: Path
    files: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what is missing or failed, in words
    shipped: str | None = None
    ok: bool = True

    def lines(self) -> list[str]:
        out = [f"bundle: {self.path} ({sum(self.files.values()) / 1e6:.2f} MB uncompressed, {len(self.files)} files)"]
        out += [f"  {name}  {size} bytes" for name, size in sorted(self.files.items())]
        out += [f"note: {n}" for n in self.notes]
        if self.shipped:
            out.append(self.shipped)
        return out


class Scrubber:
    """Credentials out of a text: the patterns dbops.secrets knows, and the config's own values."""

    def __init__(self, config: Config) -> None:
        self.secrets = config_secret_values(config)

    def text(self, value: str) -> str:
        from dbops.secrets import REDACTED, scrub_text

        value = scrub_text(value)
        for s in self.secrets:
            value = value.replace(s, REDACTED)
        return value

    def found_in(self, data: bytes) -> bool:
        return any(s.encode() in data for s in self.secrets)


def _in_window(ts: float, start: float, end: float) -> bool:
    return start <= ts <= end


def slice_recordings(sources: list[Path], dest: Path, config: Config, start: float, end: float, cluster: str | None,
                     scrubber: Scrubber) -> tuple[int, int]:
    """One recording of [start, end] from the files that overlap it: each cluster's newest
    state at `start` as keyframes, then the frames and events of the window. (frames, events)."""
    codec = Codec()
    db = create_file(dest, config, start)
    keyframes: dict[tuple[str, str], tuple[float, bytes]] = {}
    frames: list[tuple[float, str, str, bytes]] = []
    events: list[Event] = []
    for path in sources:
        try:
            reading = Reading(path)
        except RecordingError:
            continue  # not one this dbops reads (the summary's notes say which were skipped)
        try:
            first, last = reading.span()
            if last < start - 7200 or first > end:
                continue
            with reading.lock:
                rows = reading.db.execute("SELECT ts, kind, cluster, payload FROM frames WHERE ts <= ? ORDER BY ts, id",
                                          (end,)).fetchall()
            running_at_start = first <= start <= last
            for ts, kind, key, payload in rows:
                if cluster is not None and key not in (cluster, ""):
                    continue
                if ts <= start:
                    # Only a recording that was running at the window's start says what was
                    # shown then (an older session's last frame could be hours stale).
                    if running_at_start and ((kind, key) not in keyframes or keyframes[(kind, key)][0] <= ts):
                        keyframes[(kind, key)] = (ts, payload)
                else:
                    frames.append((ts, kind, key, payload))
            events += reading.events(start, end, cluster)
        finally:
            reading.close()
    db.execute("BEGIN")

    def clean(payload: bytes) -> bytes:
        raw = codec.decompress(payload)
        if not scrubber.found_in(raw):
            return payload
        return codec.compress(codec.pack_raw(scrub_values(codec.unpack(payload), scrubber.secrets)))

    for (kind, key), (_, payload) in sorted(keyframes.items()):
        db.execute("INSERT INTO frames (ts, kind, cluster, keyframe, payload) VALUES (?, ?, ?, 1, ?)",
                   (start, kind, key, clean(payload)))
    for ts, kind, key, payload in sorted(frames, key=lambda f: f[0]):
        db.execute("INSERT INTO frames (ts, kind, cluster, keyframe, payload) VALUES (?, ?, ?, 0, ?)", (ts, kind, key, clean(payload)))
    events.sort(key=lambda e: e.ts)
    insert_events(db, [Event(e.ts, e.source, e.cluster, e.member, e.severity, scrubber.text(e.text),
                             scrubber.text(e.detail) if e.detail else None) for e in events])
    db.execute("INSERT OR REPLACE INTO meta VALUES ('ended', ?)", (repr(end),))
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("PRAGMA journal_mode=DELETE")  # one self-contained file in the tar
    db.close()
    return len(keyframes) + len(frames), len(events)


def audit_excerpt(path: Path, start: float, end: float, cluster: str | None) -> tuple[list[bytes], str]:
    """The log's lines of the window (as written), and the verification text."""
    from dbops.audit import parse_timestamp, record_hash, verify

    if not path.exists():
        return [], f"no audit log at {path}\n"
    whole = verify(path)
    lines: list[bytes] = []
    recomputed = bad = 0
    for raw in path.read_bytes().splitlines():
        try:
            record = json.loads(raw)
            ts = parse_timestamp(record["ts"]).timestamp()
        except (ValueError, KeyError, TypeError):
            continue  # a damaged line: the whole-log verdict above names it
        if not _in_window(ts, start, end):
            continue
        if cluster is not None and f"{record.get('environment')}/{record.get('cluster')}" != cluster:
            continue
        lines.append(raw)
        recomputed += 1
        if record_hash({k: v for k, v in record.items() if k != "hash"}) != record.get("hash"):
            bad += 1
    text = (f"audit log: {path}\n"
            f"whole log now: {whole.summary()}\n"
            f"excerpt: {recomputed} record(s) of {clock_text(start, True)} – {clock_text(end, True)}"
            + (f" on {cluster}" if cluster else "") + "\n"
            f"each excerpt record's hash recomputed: {'all match' if not bad else f'{bad} do NOT match'}\n"
            "(each record's `prev` is the hash of the record before it in the whole log: the shipped copy or\n"
            " `dbops audit verify` on the host checks the chain between them)\n")
    return lines, text


def _files_touched(directory: Path, pattern: str, start: float, end: float) -> list[Path]:
    if not directory.is_dir():
        return []
    out = []
    for p in sorted(directory.rglob(pattern)):
        try:
            if p.is_file() and p.stat().st_mtime >= start:  # written in the window (or since)
                out.append(p)
        except FileNotFoundError:
            continue
    return out


_LOG_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2})")


def log_lines(path: Path, start: float, end: float) -> str:
    """The lines of a log whose record starts in the window (continuation lines follow theirs)."""
    if not path.exists():
        return ""
    keep = False
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _LOG_TIME.match(line) or (re.match(r"^--- (\S+)", line) if line.startswith("--- ") else None)
        if m:
            try:
                ts = datetime.fromisoformat(m.group(1).replace(" ", "T")[:19]).timestamp()
                keep = _in_window(ts, start, end)
            except ValueError:
                pass
        if keep:
            out.append(line)
    return "\n".join(out) + ("\n" if out else "")


def run_check(config_path: Path | None, cluster: str | None) -> tuple[str, str | None]:
    """`dbops check --json` as a user runs it: (its JSON, or None and why)."""
    argv = [sys.executable, "-m", "dbops.cli"] + (["--config", str(config_path)] if config_path else []) + \
        ["check", "--json", "--no-platform"] + (["--cluster", cluster] if cluster else [])
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return "", "dbops check did not answer within 180 s"
    try:
        json.loads(r.stdout)
    except ValueError:
        return "", f"dbops check did not give JSON (exit {r.returncode}): {(r.stderr or r.stdout).strip()[:500]}"
    return r.stdout, None


def summary_markdown(config: Config, start: float, end: float, cluster: str | None, events: list[Event],
                     verification: str, notes: list[str], files: Iterable[str]) -> str:
    host = socket.gethostname()
    out = [f"# Incident bundle: {cluster or 'every cluster'}", "",
           f"- window: {clock_text(start, True)} – {clock_text(end, True)} ({datetime.fromtimestamp(end).astimezone().tzname()})",
           f"- made on {host} at {clock_text(time.time(), True)} by {os.environ.get('SUDO_USER') or os.environ.get('USER') or '?'}",
           f"- clusters: {', '.join(r.key for r in config.clusters() if cluster in (None, r.key))}",
           "- replay it: `dbops replay recording.dbrec` (T: this timeline; . and , step from event to event)", "",
           "## Timeline", ""]
    if events:
        out += ["| time | what | cluster | event |", "|---|---|---|---|"]
        label = {"state": "seen", "alert": "alert", "audit": "action", "note": "**note**", "recording": "dbops"}
        for e in events:
            text = e.text.replace("|", "\\|")
            if e.source == "note":
                who = json.loads(e.detail or "{}")
                text = f"**{text}** ({who.get('operator', '?')}{', in review' if who.get('review') else ''})"
            out.append(f"| {clock_text(e.ts)} | {label.get(e.source, e.source)} | {e.cluster or 'fleet'} | {text} |")
    else:
        out.append("Nothing was recorded in this window (was a console or `dbops record` running?).")
    out += ["", "## Audit log", "", "```", verification.rstrip(), "```", ""]
    if notes:
        out += ["## Missing or failed", ""] + [f"- {n}" for n in notes] + [""]
    out += ["## Files", ""] + [f"- `{f}`" for f in sorted(files)] + [""]
    return "\n".join(out)


def make_bundle(config: Config, state_dir: Path, start: float, end: float, *, cluster: str | None = None,
                output: Path | None = None, with_check: bool = True, config_path: Path | None = None) -> BundleResult:
    stamp = datetime.fromtimestamp(end).strftime("%Y%m%dT%H%M%S")
    name = f"incident-{stamp}"
    path = output or Path.cwd() / f"{name}.tar.gz"
    result = BundleResult(path)
    scrubber = Scrubber(config)
    contents: dict[str, bytes] = {}
    work = state_dir / "tmp"
    work.mkdir(parents=True, exist_ok=True, mode=0o700)

    # The recording.
    sources = recording_files(recordings_dir(config.recording, state_dir))
    events: list[Event] = []
    if not sources:
        result.notes.append(f"no recording in {recordings_dir(config.recording, state_dir)}: the bundle has no replay")
    else:
        slice_path = work / f"{name}-{os.getpid()}.dbrec"
        slice_path.unlink(missing_ok=True)
        try:
            frames, _ = slice_recordings(sources, slice_path, config, start, end, cluster, scrubber)
            reading = Reading(slice_path)
            try:
                events = reading.events()
            finally:
                reading.close()
            if frames == 0:
                result.notes.append("the recordings hold no frame of this window")
            contents["recording.dbrec"] = slice_path.read_bytes()
        except (sqlite3.Error, RecordingError, OSError) as exc:
            result.notes.append(f"the recording could not be sliced: {scrubber.text(str(exc))}")
        finally:
            for p in (slice_path, slice_path.with_name(slice_path.name + "-wal"), slice_path.with_name(slice_path.name + "-shm")):
                p.unlink(missing_ok=True)

    # The audit log.
    lines, verification = audit_excerpt(state_dir / "audit.jsonl", start, end, cluster)
    contents["audit.jsonl"] = b"".join(scrubber.text(line.decode()).encode() + b"\n" for line in lines)
    contents["audit-verify.txt"] = verification.encode()

    # Runbook journals and drill reports of the window (of the cluster, when one is named).
    for base, pattern in ((state_dir / "runs", "*.jsonl"), (state_dir / "drills", "*")):
        for p in _files_touched(base, pattern, start, end):
            text = p.read_text(encoding="utf-8", errors="replace")
            if cluster is not None and cluster.split("/")[-1] not in text:
                continue
            contents[f"{base.name}/{p.relative_to(base)}"] = scrubber.text(text).encode()

    # The clusters now.
    if with_check:
        check, why = run_check(config_path, cluster.split("/")[-1] if cluster else None)
        if why is not None:
            result.notes.append(why)
            contents["check.txt"] = scrubber.text(why).encode()
        else:
            contents["check.json"] = scrubber.text(check).encode()

    # Logs.
    for log_name in ("dbops.log", "crash.log"):
        text = log_lines(state_dir / log_name, start, end)
        if text:
            contents[f"logs/{log_name}"] = scrubber.text(text).encode()

    contents["summary.md"] = scrubber.text(summary_markdown(config, start, end, cluster, events, verification, result.notes,
                                                            [*contents, "summary.md", "MANIFEST.json"])).encode()
    manifest = {n: {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()} for n, b in contents.items()}
    contents["MANIFEST.json"] = json.dumps(manifest, indent=2, sort_keys=True).encode()

    # The last look: no credential value anywhere, the recording's payloads included.
    leaks = [n for n, b in contents.items() if scrubber.found_in(b)]
    if "recording.dbrec" in contents:
        leaks += _leaks_in_recording(contents["recording.dbrec"], scrubber, work)
    if leaks:
        raise BundleError(f"a credential is still in {', '.join(sorted(set(leaks)))}: no bundle written (a bug: please report it)")

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "wb") as fh, tarfile.open(fileobj=fh, mode="w:gz") as tar:
        for n, b in contents.items():
            info = tarfile.TarInfo(f"{name}/{n}")
            info.size, info.mtime, info.mode = len(b), int(end), 0o600
            tar.addfile(info, io.BytesIO(b))
    os.replace(tmp, path)
    result.files = {n: len(b) for n, b in contents.items()}

    if config.audit.ship is not None:
        from dbops.audit_ship import ship_files

        shipped = ship_files([path], config.audit.ship, "incidents", name, "incident bundle")
        if shipped is not None:
            result.ok, result.shipped = shipped
    return result


def _leaks_in_recording(data: bytes, scrubber: Scrubber, work: Path) -> list[str]:
    """Every payload decompressed, every event, the config: searched for the credential values."""
    probe = work / f"leak-check-{os.getpid()}.dbrec"
    probe.write_bytes(data)
    try:
        db = sqlite3.connect(f"file:{probe}?mode=ro", uri=True)
        codec = Codec()
        leaks = []
        if any(scrubber.found_in(codec.decompress(p)) for (p,) in db.execute("SELECT payload FROM frames")):
            leaks.append("recording.dbrec (a frame)")
        if any(scrubber.found_in(str(row).encode()) for row in db.execute("SELECT * FROM events")):
            leaks.append("recording.dbrec (an event)")
        if any(scrubber.found_in(codec.decompress(bytes.fromhex(v))) for (v,) in db.execute("SELECT value FROM meta WHERE key = 'config'")):
            leaks.append("recording.dbrec (its config)")
        db.close()
        return leaks
    finally:
        probe.unlink(missing_ok=True)
