"""A drill's report for people: Markdown (a ticket, a wiki page) and one self-contained HTML file
(an attachment that opens anywhere, offline, years later), both from the runner's report.json.

The HTML makes no request of any kind: inline CSS, the timeline as inline SVG, no script, no web
font, no image; its Content-Security-Policy forbids loading anything, so even a string that
slipped through escaping could not fetch. Every string from the report is escaped.

A report of a drill that failed early has few fields: every field may be missing, None or of the
wrong type, and rendering never raises; what is missing reads as such.
"""

from __future__ import annotations

import hashlib
import html
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

MARKERS = ("fault", "detected", "decision", "recovered")
MARKER_TEXT = {
    "fault": "fault injected",
    "detected": "fault detected",
    "decision": "decision to recover",
    "recovered": "service recovered",
}
OUTCOMES = {
    "met": "MET: every target was met",
    "missed": "MISSED: a target was missed",
    "failed": "FAILED: the drill failed before it could finish",
    "declined": "DECLINED: the operator declined to go on",
    "aborted": "ABORTED: the drill was stopped before it finished",
}
PHASE_OUTCOMES = ("done", "failed", "skipped", "pending", "aborted")
# Lost writes can be thousands: the reader needs the count and a sample, not every row.
LOST_SHOWN = 20
# Above this many probe attempts the chart draws one mark per time bucket (red when any attempt
# in it failed), so a long drill at 10 attempts a second still gives a small file.
ATTEMPTS_DRAWN = 3000
STRIP_CHARS = 60  # the Markdown timeline's width

DEFINITIONS = (
    ("RTO", "from the fault to the first probe write and read-back that succeeded after the last one that "
            "failed (availability), or to the lost data verified back (data scenarios)."),
    ("RPO", "the acknowledged writes missing from the recovered service: how many, and the window from the "
            "oldest missing write's acknowledgement to the fault, which is judged against the target. "
            "A write counts only if the service acknowledged it: nothing is estimated."),
)


def report_sha256(text: str) -> str:
    """The SHA-256 of a rendered report (UTF-8), hex: what an audit record or a ticket quotes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- reading a report that may be partial ---------------------------------------------------

def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _utc(t: float | None) -> str:
    if t is None:
        return "—"
    try:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{t!r} (not a time)"


def _duration(seconds: float | None) -> str:
    """42.3 s, 2 min 5 s, 15 min, 1 h 5 min, 2 d 3 h."""
    if seconds is None:
        return "—"
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    if round(s, 1) < 60:
        return f"{sign}{s:.1f} s"
    whole = round(s)
    if whole < 3600:
        minutes, rest = divmod(whole, 60)
        return f"{sign}{minutes} min" + (f" {rest} s" if rest else "")
    total_minutes = round(s / 60)
    if total_minutes < 24 * 60:
        hours, minutes = divmod(total_minutes, 60)
        return f"{sign}{hours} h" + (f" {minutes} min" if minutes else "")
    days, hours = divmod(round(s / 3600), 24)
    return f"{sign}{days} d" + (f" {hours} h" if hours else "")


def _relative(t: float | None, origin: float | None) -> str:
    if t is None or origin is None:
        return ""
    return f"+{t - origin:.1f} s" if t >= origin else f"{t - origin:.1f} s"


def _verdict(met: object, measured: float | None, target: float | None) -> str:
    if met is True:
        return "met"
    if met is False:
        return "MISSED"
    if measured is None:
        return "not measured"
    if target is None:
        return "no target"
    return "met" if measured <= target else "MISSED"


def _seqs(values: object) -> str:
    seqs = [s for s in _list(values) if s is not None]
    return ", ".join(f"#{_text(s)}" for s in seqs) if seqs else "—"


@dataclass(frozen=True)
class _Attempt:
    t: float
    ok: bool
    seq: str
    error: str


@dataclass(frozen=True)
class _Facts:
    """Everything both renderings show, read once from the report, as plain strings."""

    title: str
    outcome: str  # the outcome key ("met" ...), or "unknown"
    outcome_line: str
    meta: list[tuple[str, str]]
    targets: list[tuple[str, str, str, str]]  # what, measured, target, verdict
    measures: list[tuple[str, str]]
    origin: float | None
    phases: list[dict[str, str]]
    runbooks: list[dict[str, Any]]
    verification: list[tuple[str, bool, str]]
    notes: list[tuple[str, str]]  # (phase title or key, note): every note, in the phases' order
    lost_total: int
    rpo_measured: bool  # whether the recovered service was read at all (else "nothing lost" would be a guess)
    lost_rows: list[tuple[str, str, str]]  # seq, acked at, before the fault
    attempts: list[_Attempt]
    markers: list[tuple[str, float]]
    times: list[float]  # every other time recorded (phases, the end): the timeline spans them too
    probe_target: str
    version: str


def _facts(report: object) -> _Facts:
    report = _dict(report)
    drill = _dict(report.get("drill"))
    targets = _dict(report.get("targets"))
    measured = _dict(report.get("measured"))
    markers = _dict(report.get("markers"))
    probe = _dict(report.get("probe"))
    notes = {str(k): _text(v) for k, v in _dict(report.get("notes")).items() if _text(v).strip()}

    started, finished = _num(drill.get("started")), _num(drill.get("finished"))
    outcome = _text(drill.get("outcome")) or "unknown"
    message = _text(drill.get("message"))
    line = OUTCOMES.get(outcome, f"UNKNOWN: the report records no known outcome ({outcome})")
    outcome_line = f"{line}. {message}" if message else line

    operator = _dict(drill.get("operator"))
    who = f"{_text(operator.get('user')) or '?'}@{_text(operator.get('host')) or '?'}"
    extra = ", ".join(f"{k} {_text(v)}" for k, v in operator.items() if k not in ("user", "host") and _text(v))
    if not operator:
        who = "not recorded"
    elif extra:
        who = f"{who} ({extra})"
    took = _duration(finished - started) if started is not None and finished is not None else "—"
    meta = [
        ("Scenario", _text(drill.get("scenario")) or "—"),
        ("Cluster", _text(drill.get("cluster")) or "—"),
        ("Environment", _text(drill.get("environment")) or "—"),
        ("Operator", who),
        ("Started (UTC)", _utc(started)),
        ("Finished (UTC)", _utc(finished) if finished is not None else "did not finish"),
        ("Duration", took),
        ("Run", _text(drill.get("run_id")) or "—"),
        ("dbops version", _text(drill.get("dbops_version")) or "—"),
        ("Config hash", _text(drill.get("config_hash")) or "—"),
    ]

    rto, rto_target = _num(measured.get("rto_seconds")), _num(targets.get("rto_seconds"))
    window, rpo_target = _num(measured.get("rpo_window_seconds")), _num(targets.get("rpo_seconds"))
    lost_list = _list(report.get("lost"))
    lost_count = _num(measured.get("rpo_lost"))
    lost_total = max(int(lost_count) if lost_count is not None else 0, len(lost_list))
    rpo_measured = "—" if window is None else _duration(window) + " window"
    if lost_count is not None:
        rpo_measured += f", {int(lost_count)} acknowledged writes lost"
    target_rows = [
        ("RTO", _duration(rto), _duration(rto_target), _verdict(measured.get("rto_met"), rto, rto_target)),
        ("RPO", rpo_measured, _duration(rpo_target), _verdict(measured.get("rpo_met"), window, rpo_target)),
    ]
    acked = _num(measured.get("acked"))
    measures = [
        ("Time to detect (fault to detection)", _duration(_num(measured.get("detection_seconds")))),
        ("Time to decide", _duration(_num(measured.get("decision_seconds")))),
        ("Acknowledged writes", str(int(acked)) if acked is not None else "—"),
        ("Acknowledged writes lost", str(lost_total) if lost_count is not None or lost_list else "—"),
        ("Newest lost write's age at the fault", _duration(_num(measured.get("newest_lost_age_seconds")))),
        ("RTO measured as", _text(measured.get("rto_note")) or "—"),
        ("RPO measured as", _text(measured.get("rpo_note")) or "—"),
    ]

    marker_times = [(name, t) for name in MARKERS if (t := _num(markers.get(name))) is not None]
    attempts = []
    for raw in _list(probe.get("attempts")):
        attempt = _dict(raw)
        t = _num(attempt.get("t"))
        if t is not None:
            attempts.append(_Attempt(t, attempt.get("ok") is True, _text(attempt.get("seq")), _text(attempt.get("error"))))
    attempts.sort(key=lambda a: a.t)

    phases = []
    times = [t for t in (finished,) if t is not None]
    for i, raw in enumerate(_list(report.get("phases")), 1):
        phase = _dict(raw)
        name = _text(phase.get("name"))
        p_start, p_end = _num(phase.get("started")), _num(phase.get("finished"))
        note = _text(phase.get("note")).strip()
        listed = notes.get(name, "").strip()
        if listed and listed != note:
            note = f"{note}\n{listed}" if note else listed
        times += [t for t in (p_start, p_end) if t is not None]
        outcome_key = _text(phase.get("outcome")) or "pending"
        phases.append({
            "n": str(i), "name": name, "title": _text(phase.get("title")) or name or f"phase {i}",
            "started": _utc(p_start), "started_rel": _relative(p_start, started),
            "finished": _utc(p_end), "finished_rel": _relative(p_end, started),
            "took": _duration(p_end - p_start) if p_start is not None and p_end is not None else "—",
            "outcome": outcome_key, "css": outcome_key if outcome_key in PHASE_OUTCOMES else "other",
            "detail": _text(phase.get("detail")), "note": note,
        })
    # The retrospective reads every note in one place; each phase's row shows its own too.
    phase_names = {p["name"] for p in phases}
    all_notes = [(p["title"], p["note"]) for p in phases if p["note"]]
    all_notes += [(k, v) for k, v in notes.items() if k not in phase_names]

    runbooks = []
    for raw in _list(report.get("runbooks")):
        book = _dict(raw)
        steps = [(_text(_dict(s).get("title")), _text(_dict(s).get("outcome")) or "—", _seqs(_dict(s).get("audit_seqs")))
                 for s in _list(book.get("steps"))]
        runbooks.append({"runbook": _text(book.get("runbook")) or "?", "run_id": _text(book.get("run_id")) or "—",
                         "outcome": _text(book.get("outcome")) or "—", "message": _text(book.get("message")),
                         "steps": steps})
    verification = [(_text(_dict(v).get("title")), _dict(v).get("ok") is True, _text(_dict(v).get("detail")))
                    for v in _list(report.get("verification"))]

    fault = _num(markers.get("fault"))
    lost_rows = []
    for raw in lost_list[:LOST_SHOWN]:
        write = _dict(raw)
        acked_at = _num(write.get("acked_at"))
        before = _duration(fault - acked_at) if fault is not None and acked_at is not None else "—"
        lost_rows.append((_text(write.get("seq")), _utc(acked_at), before))

    origin = started
    if origin is None:  # a drill that failed before it recorded its start: its earliest time
        known = [t for _, t in marker_times] + [a.t for a in attempts[:1]]
        origin = min(known) if known else None
    return _Facts(
        title=_text(drill.get("title")) or _text(drill.get("scenario")) or "DR drill",
        outcome=outcome, outcome_line=outcome_line, meta=meta, targets=target_rows, measures=measures,
        origin=origin, phases=phases, runbooks=runbooks, verification=verification, notes=all_notes,
        lost_total=lost_total, rpo_measured=lost_count is not None or window is not None or bool(lost_list), lost_rows=lost_rows, attempts=attempts, markers=marker_times, times=times,
        probe_target=_text(probe.get("target")), version=_text(drill.get("dbops_version")),
    )


# --- the timeline, shared by both renderings --------------------------------------------------

@dataclass(frozen=True)
class _Span:
    lo: float  # seconds from the drill's start
    hi: float

    def at(self, rel: float, width: float) -> float:
        return (rel - self.lo) / (self.hi - self.lo) * width


def _span(facts: _Facts) -> _Span | None:
    if facts.origin is None:
        return None
    times = [a.t for a in facts.attempts] + [t for _, t in facts.markers] + facts.times
    rel = [t - facts.origin for t in times]
    lo, hi = min([0.0, *rel]), max([0.0, *rel])
    return _Span(lo, hi if hi - lo >= 1.0 else lo + 1.0)


def _buckets(attempts: Iterable[_Attempt], origin: float, span: _Span, count: int) -> list[tuple[int, int]]:
    """(ok, failed) attempts per equal slice of the span."""
    buckets = [[0, 0] for _ in range(count)]
    for a in attempts:
        i = min(count - 1, max(0, int(span.at(a.t - origin, count))))
        buckets[i][0 if a.ok else 1] += 1
    return [(ok, failed) for ok, failed in buckets]


# --- Markdown ---------------------------------------------------------------------------------

def _md(value: str) -> str:
    # Backslash-escape what would turn a note into markup that a Markdown viewer acts on: raw
    # HTML (<script>, <img src=...>), links and images ([...](...)), and table cell breaks.
    out = value
    for ch in "\\<>[]|`":
        out = out.replace(ch, "\\" + ch)
    return " ".join(out.split()) if "\n" in out else out


def _md_table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> list[str]:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md(c) or " " for c in row) + " |" for row in rows]
    return lines


def _md_quote(text: str) -> list[str]:
    return ["> " + _md(line) if line.strip() else ">" for line in text.splitlines()]


def render_markdown(report: dict[str, Any]) -> str:
    facts = _facts(report)
    out = [f"# DR drill: {_md(facts.title)}", "", f"**Outcome: {_md(facts.outcome_line)}**", ""]
    out += _md_table(("", ""), facts.meta)
    out += ["", "## Targets", ""]
    out += _md_table(("", "measured", "target", "verdict"), facts.targets)
    out += [""]
    out += _md_table(("", ""), facts.measures)

    out += ["", "## Timeline", ""]
    out += _md_timeline(facts)

    out += ["", "## Phases", ""]
    if not facts.phases:
        out.append("No phase was recorded.")
    for p in facts.phases:
        out += [f"### {p['n']}. {_md(p['title'])}: {_md(p['outcome'])}", ""]
        started = p["started"] + (f" ({p['started_rel']})" if p["started_rel"] else "")
        finished = p["finished"] + (f" ({p['finished_rel']})" if p["finished_rel"] else "")
        out.append(f"- started {started}, finished {finished}, took {p['took']}")
        if p["detail"]:
            out.append(f"- {_md(p['detail'])}")
        if p["note"]:
            out += ["- operator's note:", ""] + ["  " + q for q in _md_quote(p["note"])]
        out.append("")

    out += ["## Runbooks", ""]
    if not facts.runbooks:
        out += ["No runbook ran.", ""]
    for book in facts.runbooks:
        out += [f"### {_md(book['runbook'])}, run {_md(book['run_id'])}: {_md(book['outcome'])}", ""]
        if book["message"]:
            out += [_md(book["message"]), ""]
        if book["steps"]:
            out += _md_table(("step", "outcome", "audit records"), book["steps"])
        else:
            out.append("No step ran.")
        out.append("")

    out += ["## Verification", ""]
    if facts.verification:
        out += _md_table(("check", "result", "detail"),
                         ((title, "ok" if ok else "FAILED", detail) for title, ok, detail in facts.verification))
    else:
        out.append("Nothing was verified.")

    if facts.notes:
        out += ["", "## Notes", ""]
        for title, note in facts.notes:
            out += [f"**{_md(title)}**", ""] + _md_quote(note) + [""]

    out += ["", "## Lost writes", ""]
    if facts.lost_total == 0:
        out.append("No acknowledged write is missing from the recovered service." if facts.rpo_measured else "Not measured.")
    else:
        out += [f"{facts.lost_total} acknowledged writes are missing after the recovery.", ""]
        out += _md_table(("seq", "acknowledged at (UTC)", "before the fault"), facts.lost_rows)
        if facts.lost_total > len(facts.lost_rows):
            out += ["", f"... and {facts.lost_total - len(facts.lost_rows)} more."]

    out += ["", "## How these were measured", ""]
    out += [f"- **{name}**: {text}" for name, text in DEFINITIONS]
    out += ["", f"_Rendered by dbops {_md(facts.version) or '?'}._", ""]
    return "\n".join(out)


def _md_timeline(facts: _Facts) -> list[str]:
    span = _span(facts)
    if span is None or facts.origin is None:
        return ["No time was recorded: nothing to draw."]
    origin = facts.origin
    width = STRIP_CHARS
    strip = "".join("░" if failed else "█" if ok else " "
                    for ok, failed in _buckets(facts.attempts, origin, span, width))
    label = 10
    lines = ["```", f"{'probe':<{label}}|{strip}|"]
    for name, t in facts.markers:
        col = min(width - 1, max(0, int(span.at(t - origin, width))))
        row = " " * col + "^" + " " * (width - col - 1)
        lines.append(f"{name:<{label}}|{row}|  {_relative(t, origin)}  {_utc(t)}")
    left, right = _relative(origin + span.lo, origin) or "+0.0 s", _relative(origin + span.hi, origin)
    lines.append(" " * (label + 1) + left + right.rjust(width - len(left)))
    lines.append("```")
    failed = sum(1 for a in facts.attempts if not a.ok)
    if facts.attempts:
        lines += ["", f"Probe{' (' + _md(facts.probe_target) + ')' if facts.probe_target else ''}: "
                  f"{len(facts.attempts)} attempts, {failed} failed. █ every attempt ok, ░ at least one failed, "
                  "blank: no attempt. Times from the drill's start."]
    else:
        lines += ["", "The probe made no attempt."]
    return lines


# --- HTML -------------------------------------------------------------------------------------

def _e(text: str) -> str:
    return html.escape(text, quote=True)

CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: #1d2430; background: #fff; margin: 0; }
main { max-width: 1100px; margin: 0 auto; padding: 24px; }
h1 { font-size: 22px; margin: 0 0 8px; }
h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #d8dde6; padding-bottom: 4px; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { border: 1px solid #d8dde6; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f2f4f8; font-weight: 600; }
table.meta td:first-child { width: 230px; font-weight: 600; background: #f2f4f8; }
.rel { color: #5b6475; font-size: 12px; display: block; }
.outcome { font-size: 16px; font-weight: 600; padding: 8px 12px; border-radius: 4px; border: 1px solid; }
.outcome.met { background: #e8f5ec; border-color: #2e9e44; }
.outcome.missed, .outcome.failed, .outcome.aborted, .outcome.unknown { background: #fdecea; border-color: #d1342f; }
.outcome.declined { background: #fff5e0; border-color: #e08e0b; }
.verdict-met, .ok { color: #1b7f3a; font-weight: 600; }
.verdict-MISSED, .bad { color: #c0261f; font-weight: 700; }
td.phase-failed, td.phase-aborted { color: #c0261f; font-weight: 700; }
td.phase-done { color: #1b7f3a; }
td.phase-skipped, td.phase-pending { color: #5b6475; }
.note { white-space: pre-wrap; background: #fffbe6; }
td.note:empty { background: none; }
td.time { white-space: nowrap; }
.muted { color: #5b6475; }
code { font: 12px ui-monospace, "DejaVu Sans Mono", monospace; }
svg#timeline { display: block; width: 100%; height: auto; border: 1px solid #d8dde6; background: #fbfcfe; }
svg .attempt.ok { fill: #2e9e44; }
svg .attempt.failed { fill: #d1342f; }
svg .strip { fill: #eef1f5; }
svg .axis { stroke: #8a93a3; stroke-width: 1; }
svg .tick { fill: #5b6475; font-size: 11px; }
svg .marker line { stroke-width: 2; stroke-dasharray: 5 3; }
svg .marker text { font-size: 11px; font-weight: 600; }
svg .marker.fault line { stroke: #8e0b0b; } svg .marker.fault text { fill: #8e0b0b; }
svg .marker.detected line { stroke: #d47700; } svg .marker.detected text { fill: #a85d00; }
svg .marker.decision line { stroke: #4a4ac4; } svg .marker.decision text { fill: #4a4ac4; }
svg .marker.recovered line { stroke: #1b7f3a; } svg .marker.recovered text { fill: #1b7f3a; }
svg .empty { fill: #5b6475; font-size: 13px; }
.legend span { margin-right: 14px; }
.sw { display: inline-block; width: 10px; height: 10px; margin-right: 4px; vertical-align: -1px; }
@media print { main { max-width: none; } }
"""
# No fetch of any kind, whatever the page holds: inline style only, no script, no image, font,
# frame, form target or base URL.
CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def _html_table(header: Iterable[str] | None, rows: Iterable[Iterable[str]], cls: str = "") -> str:
    """A table of already escaped cells."""
    parts = [f'<table class="{cls}">' if cls else "<table>"]
    if header is not None:
        parts.append("<tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>")
    parts += ["<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows]
    parts.append("</table>")
    return "\n".join(parts)


def render_html(report: dict[str, Any]) -> str:
    facts = _facts(report)
    outcome_css = facts.outcome if facts.outcome in OUTCOMES else "unknown"
    body = [
        f"<h1>DR drill: {_e(facts.title)}</h1>",
        f'<p class="outcome {outcome_css}">Outcome: {_e(facts.outcome_line)}</p>',
        _html_table(None, ((_e(k), _e(v)) for k, v in facts.meta), "meta"),
        "<h2>Targets</h2>",
        _html_table(("", "measured", "target", "verdict"),
                    ((_e(w), _e(m), _e(t), f'<span class="verdict-{"MISSED" if v == "MISSED" else "met" if v == "met" else "none"}">'
                      f"{_e(v)}</span>") for w, m, t, v in facts.targets)),
        _html_table(None, ((_e(k), _e(v)) for k, v in facts.measures), "meta"),
        "<h2>Timeline</h2>",
        _svg_timeline(facts),
        _html_legend(facts),
        "<h2>Phases</h2>",
    ]
    if facts.phases:
        rows = [
            f"<tr><td>{_e(p['n'])}</td><td>{_e(p['title'])}</td>"
            f'<td class="time">{_e(p["started"])}<span class="rel">{_e(p["started_rel"])}</span></td>'
            f'<td class="time">{_e(p["finished"])}<span class="rel">{_e(p["finished_rel"])}</span></td>'
            f'<td class="time">{_e(p["took"])}</td>'
            f'<td class="phase-{p["css"]}">{_e(p["outcome"])}</td><td>{_e(p["detail"])}</td>'
            f'<td class="note">{_e(p["note"])}</td></tr>'
            for p in facts.phases
        ]
        head = "".join(f"<th>{h}</th>" for h in ("#", "phase", "started (UTC)", "finished (UTC)", "took", "outcome",
                                                 "detail", "operator&#x27;s note"))
        body.append("<table>\n<tr>" + head + "</tr>\n" + "\n".join(rows) + "\n</table>")
    else:
        body.append('<p class="muted">No phase was recorded.</p>')

    body.append("<h2>Runbooks</h2>")
    if not facts.runbooks:
        body.append('<p class="muted">No runbook ran.</p>')
    for book in facts.runbooks:
        body.append(f"<h3><code>{_e(book['runbook'])}</code>, run <code>{_e(book['run_id'])}</code>: {_e(book['outcome'])}</h3>")
        if book["message"]:
            body.append(f"<p>{_e(book['message'])}</p>")
        if book["steps"]:
            body.append(_html_table(("step", "outcome", "audit records"),
                                    ((_e(t), _e(o), _e(s)) for t, o, s in book["steps"])))
        else:
            body.append('<p class="muted">No step ran.</p>')

    body.append("<h2>Verification</h2>")
    if facts.verification:
        body.append(_html_table(("check", "result", "detail"),
                                ((_e(t), '<span class="ok">ok</span>' if ok else '<span class="bad">FAILED</span>', _e(d))
                                 for t, ok, d in facts.verification)))
    else:
        body.append('<p class="muted">Nothing was verified.</p>')

    if facts.notes:
        body.append("<h2>Notes</h2>")
        body += [f'<h3>{_e(title)}</h3><p class="note">{_e(note)}</p>' for title, note in facts.notes]

    body.append("<h2>Lost writes</h2>")
    if facts.lost_total == 0:
        body.append("<p>No acknowledged write is missing from the recovered service.</p>" if facts.rpo_measured
                    else '<p class="muted">Not measured.</p>')
    else:
        body.append(f'<p class="bad">{facts.lost_total} acknowledged writes are missing after the recovery.</p>')
        body.append(_html_table(("seq", "acknowledged at (UTC)", "before the fault"),
                                ((_e(s), _e(a), _e(b)) for s, a, b in facts.lost_rows)))
        if facts.lost_total > len(facts.lost_rows):
            body.append(f"<p>... and {facts.lost_total - len(facts.lost_rows)} more.</p>")

    body.append("<h2>How these were measured</h2><ul>")
    body += [f"<li><b>{_e(name)}</b>: {_e(text)}</li>" for name, text in DEFINITIONS]
    body.append(f'</ul><p class="muted">Rendered by dbops {_e(facts.version or "?")}.</p>')

    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>DR drill: {_e(facts.title)}</title>",
        f"<style>{CSS}</style>",
        "</head><body><main>",
        *body,
        "</main></body></html>",
        "",
    ])


def _html_legend(facts: _Facts) -> str:
    if not facts.attempts:
        return '<p class="muted">The probe made no attempt.</p>'
    failed = sum(1 for a in facts.attempts if not a.ok)
    target = f" on {_e(facts.probe_target)}" if facts.probe_target else ""
    marks = "".join(f"<span>{_e(name)} {_e(_relative(t, facts.origin))} ({_e(_utc(t))})</span>" for name, t in facts.markers)
    return (f'<p class="legend"><span><i class="sw" style="background:#2e9e44"></i>write and read-back ok</span>'
            f'<span><i class="sw" style="background:#d1342f"></i>failed</span>'
            f"<span>{len(facts.attempts)} probe attempts{target}, {failed} failed; times from the drill's start</span></p>"
            f'<p class="legend">{marks}</p>')


def _nice_step(span: float, most: int = 10) -> float:
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 21600, 43200, 86400):
        if span / step <= most:
            return float(step)
    return float(math.ceil(span / most / 86400) * 86400)


def _tick_label(rel: float) -> str:
    if rel == 0:
        return "0"
    if abs(rel) < 60:
        return f"{rel:+.0f} s"
    if abs(rel) < 3600:
        return f"{rel / 60:+.0f} min" if rel % 60 == 0 else f"{rel / 60:+.1f} min"
    return f"{rel / 3600:+.1f} h"


def _svg_timeline(facts: _Facts) -> str:
    width, left, right = 1000.0, 70.0, 20.0
    plot = width - left - right
    label_row, strip_top, strip_h = 14.0, 14.0 + 14.0 * len(MARKERS) + 4.0, 30.0
    axis_y = strip_top + strip_h + 6.0
    height = axis_y + 22.0
    head = (f'<svg id="timeline" viewBox="0 0 {width:.0f} {height:.0f}" '
            f'width="{width:.0f}" height="{height:.0f}" role="img" shape-rendering="crispEdges" '
            'aria-label="Probe attempts and drill markers over time">'
            "<title>Probe attempts (green ok, red failed) and the drill's markers, in seconds from its start</title>")
    span = _span(facts)
    if span is None or facts.origin is None:
        return head + f'<text class="empty" x="{left:.0f}" y="{strip_top + 20:.0f}">No time was recorded: nothing to draw.</text></svg>'
    origin = facts.origin

    def x(rel: float) -> float:
        return left + span.at(rel, plot)

    parts = [head, f'<text class="tick" x="4" y="{strip_top + strip_h / 2 + 4:.0f}">probe</text>',
             f'<rect class="strip" x="{left:.0f}" y="{strip_top:.0f}" width="{plot:.0f}" height="{strip_h:.0f}"/>']
    if not facts.attempts:
        parts.append(f'<text class="empty" x="{left + 8:.0f}" y="{strip_top + 20:.0f}">The probe made no attempt.</text>')
    elif len(facts.attempts) <= ATTEMPTS_DRAWN:
        mark_w = max(1.5, min(6.0, plot / len(facts.attempts)))
        # Failures last: where marks overlap, a failure stays visible.
        for a in sorted(facts.attempts, key=lambda a: a.ok, reverse=True):
            rel = a.t - origin
            title = "" if a.ok else f"<title>{_e(_relative(a.t, origin))} seq {_e(a.seq)}: {_e(a.error or 'failed')}</title>"
            parts.append(f'<rect class="attempt {"ok" if a.ok else "failed"}" x="{x(rel) - mark_w / 2:.1f}" '
                         f'y="{strip_top:.0f}" width="{mark_w:.1f}" height="{strip_h:.0f}">{title}</rect>'
                         if title else
                         f'<rect class="attempt ok" x="{x(rel) - mark_w / 2:.1f}" y="{strip_top:.0f}" '
                         f'width="{mark_w:.1f}" height="{strip_h:.0f}"/>')
    else:
        count = int(plot)  # one bucket per pixel of the chart
        step = (span.hi - span.lo) / count
        for i, (ok, failed) in enumerate(_buckets(facts.attempts, origin, span, count)):
            if not ok and not failed:
                continue
            state = "failed" if failed else "ok"
            title = (f"<title>{_e(_relative(origin + span.lo + i * step, origin))}: {failed} of {ok + failed} failed</title>"
                     if failed else "")
            parts.append(f'<rect class="attempt {state}" x="{left + i * plot / count:.1f}" y="{strip_top:.0f}" '
                         f'width="{max(1.0, plot / count):.1f}" height="{strip_h:.0f}">{title}</rect>')

    tick = _nice_step(span.hi - span.lo)
    parts.append(f'<line class="axis" x1="{left:.0f}" y1="{axis_y:.0f}" x2="{left + plot:.0f}" y2="{axis_y:.0f}"/>')
    t = math.ceil(span.lo / tick) * tick
    while t <= span.hi + 1e-9:
        parts.append(f'<line class="axis" x1="{x(t):.1f}" y1="{axis_y:.0f}" x2="{x(t):.1f}" y2="{axis_y + 4:.0f}"/>'
                     f'<text class="tick" x="{x(t):.1f}" y="{axis_y + 16:.0f}" text-anchor="middle">{_e(_tick_label(t))}</text>')
        t += tick

    # Each marker has its own label row, so markers seconds apart do not print over each other.
    for name, at in facts.markers:
        mx = x(at - origin)
        y = label_row + 14.0 * MARKERS.index(name)
        anchor = "end" if mx > left + plot * 0.7 else "start"
        dx = -4 if anchor == "end" else 4
        parts.append(f'<g class="marker {name}"><title>{_e(MARKER_TEXT[name])} {_e(_relative(at, origin))} '
                     f'({_e(_utc(at))})</title>'
                     f'<line x1="{mx:.1f}" y1="{y - 10:.0f}" x2="{mx:.1f}" y2="{strip_top + strip_h + 2:.0f}"/>'
                     f'<text x="{mx + dx:.1f}" y="{y:.0f}" text-anchor="{anchor}">{_e(name)} {_e(_relative(at, origin))}</text></g>')
    parts.append("</svg>")
    return "".join(parts)
