"""A drill's report as its reader sees it: RTO and RPO against the targets, what was missed, the
lost writes, every phase with its note, the runbooks' audit records; a drill that failed early
still renders and says so; the HTML escapes the report's strings and references nothing outside
itself."""

from __future__ import annotations

import copy
import re
from html.parser import HTMLParser
from typing import Any

from dbops.drill.report import render_html, render_markdown, report_sha256

START = 1_773_480_600.0  # 2026-03-14T09:30:00Z


def full_report(*, attempts_per_second: int = 10, outage: tuple[float, float] = (60.0, 102.3),
                lost: int = 37) -> dict[str, Any]:
    """A realistic report: a PostgreSQL primary lost at +60 s, a switchover, service back at +102.3 s,
    37 acknowledged writes lost; the RTO target (30 s) missed, the RPO target (15 min) met."""
    fault, detected, decision, recovered = START + 60.0, START + 64.8, START + 81.5, START + 102.3
    duration = 180.0
    attempts = []
    seq = 0
    for i in range(int(duration * attempts_per_second)):
        t = START + i / attempts_per_second
        ok = not (START + outage[0] <= t < START + outage[1])
        attempt: dict[str, Any] = {"t": t, "seq": seq, "ok": ok}
        if ok:
            seq += 1
        else:
            attempt["error"] = "connection refused (pgbouncer: server conn crashed?)"
        attempts.append(attempt)
    phase_times = [("announce", 0.0, 2.0), ("steady", 2.0, 60.0), ("inject", 60.0, 60.4), ("detect", 60.4, 64.8),
                   ("recover", 81.5, 102.3), ("verify", 107.3, 120.0), ("restore", 120.0, 170.0), ("report", 170.0, 180.0)]
    titles = {"announce": "Announce the drill", "steady": "Steady state: probe writing, cluster healthy",
              "inject": "Inject the fault", "detect": "Detect: dbops shows the fault", "recover": "Recover: the runbooks",
              "verify": "Verify: the data and the service", "restore": "Return to the steady state", "report": "Report"}
    return {
        "drill": {"run_id": "drill-20260314-093000-pg", "scenario": "pg-primary-loss",
                  "title": "PostgreSQL: lose the primary", "cluster": "orders-db", "environment": "staging",
                  "operator": {"user": "alice", "host": "bastion-1", "tty": "pts/3"}, "started": START,
                  "finished": START + duration, "dbops_version": "0.9.0", "config_hash": "sha256:4f1c2a9e",
                  "outcome": "missed", "message": "the RTO of 42.3 s missed its target of 30.0 s"},
        "targets": {"rto_seconds": 30.0, "rpo_seconds": 900.0},
        "measured": {"rto_seconds": 42.3, "rto_note": f"{sum(not a['ok'] for a in attempts)} probe attempts failed", "detection_seconds": 4.8,
                     "decision_seconds": 16.7, "rpo_lost": lost, "rpo_window_seconds": 3.7,
                     "newest_lost_age_seconds": 0.1, "acked": seq, "rto_met": False, "rpo_met": True,
                     "rpo_note": f"{lost} of {seq} acknowledged writes are missing from the recovered service"},
        "phases": [{"name": name, "title": titles[name], "started": START + a, "finished": START + b, "outcome": "done",
                    "detail": f"{name} went as planned", "note": ""} for name, a, b in phase_times],
        "markers": {"fault": fault, "detected": detected, "decision": decision, "recovered": recovered},
        "probe": {"target": "table dbops_drill_probe through PgBouncer", "attempts": attempts},
        "runbooks": [{"runbook": "postgres.promote", "run_id": "rb-7f3a", "outcome": "done",
                      "message": "pg2 promoted; PgBouncer repointed",
                      "steps": [{"title": "Fence the old primary pg1", "outcome": "done", "audit_seqs": [1041, 1042]},
                                {"title": "Promote pg2", "outcome": "done", "audit_seqs": [1043]},
                                {"title": "Repoint PgBouncer to pg2", "outcome": "done", "audit_seqs": [1044, 1045]}]}],
        "verification": [{"title": "probe writes and reads back on the new primary", "ok": True, "detail": "seq 1523"},
                         {"title": "pg3 follows pg2", "ok": False, "detail": "pg3 still streams from pg1"}],
        "notes": {"detect": "Overview went CRIT after one refresh; the pager fired 40 s later.",
                  "recover": "Took a while to find the promote runbook: add it to the on-call page."},
        "lost": [{"seq": 1000 + i, "acked_at": fault - 3.7 + i * 0.1} for i in range(lost)],
    }


def failed_early() -> dict[str, Any]:
    """The drill failed at its steady state: no probe attempt, no measurement, no runbook."""
    return {
        "drill": {"run_id": "drill-x", "scenario": "pg-primary-loss", "title": None, "cluster": "orders-db",
                  "environment": None, "operator": {"user": "bob", "host": None}, "started": START, "finished": None,
                  "dbops_version": "0.9.0", "config_hash": None, "outcome": "failed",
                  "message": "pg3 is 40 MB behind: not a steady state"},
        "targets": {"rto_seconds": 30.0, "rpo_seconds": None},
        "measured": {"rto_seconds": None, "rto_note": "", "detection_seconds": None, "decision_seconds": None,
                     "rpo_lost": None, "rpo_window_seconds": None, "newest_lost_age_seconds": None, "acked": 0,
                     "rto_met": None, "rpo_met": None, "rpo_note": ""},
        "phases": [{"name": "announce", "title": "Announce the drill", "started": START, "finished": START + 1,
                    "outcome": "done", "detail": "", "note": ""},
                   {"name": "steady", "title": None, "started": START + 1, "finished": None, "outcome": "failed",
                    "detail": "pg3 is 40 MB behind", "note": None}],
        "markers": {"fault": None, "detected": None, "decision": None, "recovered": None},
        "probe": {"target": "", "attempts": []},
        "runbooks": [], "verification": [], "notes": {}, "lost": [],
    }


def _text(html_doc: str) -> str:
    """What a reader of the HTML sees: its text, tags dropped, entities decoded, spaces collapsed."""
    class Text(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.parts: list[str] = []
            self.skip = 0

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self.skip += tag in ("style", "title")

        def handle_endtag(self, tag: str) -> None:
            self.skip -= tag in ("style", "title")

        def handle_data(self, data: str) -> None:
            if not self.skip:
                self.parts.append(data)

    parser = Text()
    parser.feed(html_doc)
    return " ".join(" ".join(parser.parts).split())


def test_full_report_shows_rto_and_rpo_against_targets_and_what_was_missed():
    report = full_report()
    md = render_markdown(report)
    assert "**Outcome: MISSED: a target was missed. the RTO of 42.3 s missed its target of 30.0 s**" in md
    assert "| RTO | 42.3 s | 30.0 s | MISSED |" in md
    assert "| RPO | 3.7 s window, 37 acknowledged writes lost | 15 min | met |" in md
    assert "| Time to detect (fault to detection) | 4.8 s |" in md
    assert "| Time to decide | 16.7 s |" in md
    assert "| Operator | alice@bastion-1 (tty pts/3) |" in md
    assert "| Started (UTC) | 2026-03-14T09:30:00Z |" in md
    assert "| dbops version | 0.9.0 |" in md and "| Config hash | sha256:4f1c2a9e |" in md

    text = _text(render_html(report))
    assert "Outcome: MISSED: a target was missed." in text
    assert "RTO 42.3 s 30.0 s MISSED" in text
    assert "RPO 3.7 s window, 37 acknowledged writes lost 15 min met" in text
    assert "Operator alice@bastion-1 (tty pts/3)" in text
    assert "Scenario pg-primary-loss Cluster orders-db Environment staging" in text


def test_lost_writes_counted_and_only_the_first_twenty_listed():
    md = render_markdown(full_report())
    assert "37 acknowledged writes are missing after the recovery." in md
    assert "| 1019 | 2026-03-14T09:30:58Z | 1.8 s |" in md  # the 20th, acked 1.8 s before the fault
    assert "| 1020 |" not in md
    assert "... and 17 more." in md

    text = _text(render_html(full_report()))
    assert "37 acknowledged writes are missing after the recovery." in text
    assert "1019 2026-03-14T09:30:58Z 1.8 s" in text and " 1020 " not in text
    assert "... and 17 more." in text


def test_phases_show_times_outcome_detail_and_the_operators_note():
    md = render_markdown(full_report())
    assert "### 4. Detect: dbops shows the fault: done" in md
    assert "- started 2026-03-14T09:31:00Z (+60.4 s), finished 2026-03-14T09:31:04Z (+64.8 s), took 4.4 s" in md
    assert "  > Overview went CRIT after one refresh; the pager fired 40 s later." in md
    assert "  > Took a while to find the promote runbook: add it to the on-call page." in md
    assert "- detect went as planned" in md

    text = _text(render_html(full_report()))
    assert ("4 Detect: dbops shows the fault 2026-03-14T09:31:00Z +60.4 s 2026-03-14T09:31:04Z +64.8 s 4.4 s done "
            "detect went as planned Overview went CRIT after one refresh; the pager fired 40 s later.") in text


def test_runbooks_list_their_steps_with_audit_sequence_numbers_and_verification_results():
    report = full_report()
    md = render_markdown(report)
    assert "### postgres.promote, run rb-7f3a: done" in md
    assert "| Fence the old primary pg1 | done | #1041, #1042 |" in md
    assert "| Repoint PgBouncer to pg2 | done | #1044, #1045 |" in md
    assert "| pg3 follows pg2 | FAILED | pg3 still streams from pg1 |" in md

    text = _text(render_html(report))
    assert "postgres.promote , run rb-7f3a : done" in text
    assert "Promote pg2 done #1043" in text
    assert "probe writes and reads back on the new primary ok seq 1523" in text
    assert "pg3 follows pg2 FAILED pg3 still streams from pg1" in text


def test_markdown_timeline_strip_shows_the_outage_and_the_markers():
    md = render_markdown(full_report())
    strip = re.search(r"^probe     \|(.{60})\|$", md, re.M)
    assert strip is not None
    cells = strip.group(1)
    # 180 s over 60 cells, 3 s each: the outage, +60.0 s to +102.2 s, is cells 20 to 34.
    assert cells == "█" * 20 + "░" * 15 + "█" * 25
    fault = re.search(r"^fault     \|( *)\^ *\|  \+60\.0 s  2026-03-14T09:31:00Z$", md, re.M)
    assert fault is not None and len(fault.group(1)) == 20
    assert re.search(r"^recovered \| *\^ *\|  \+102\.3 s", md, re.M)


def test_a_drill_that_failed_early_renders_and_says_it_failed():
    report = failed_early()
    md = render_markdown(report)
    assert "**Outcome: FAILED: the drill failed before it could finish. pg3 is 40 MB behind: not a steady state**" in md
    assert "| RTO | — | 30.0 s | not measured |" in md
    assert "| RPO | — | — | not measured |" in md
    assert "| Finished (UTC) | did not finish |" in md
    assert "| Operator | bob@? |" in md
    assert "### 2. steady: failed" in md
    assert "The probe made no attempt." in md
    assert "No runbook ran." in md and "Nothing was verified." in md
    assert "## Lost writes\n\nNot measured." in md  # never "nothing lost" when nothing was read

    html_doc = render_html(report)
    text = _text(html_doc)
    assert "Outcome: FAILED: the drill failed before it could finish. pg3 is 40 MB behind" in text
    assert 'id="timeline"' in html_doc and "The probe made no attempt." in text


def test_nearly_empty_and_malformed_reports_never_raise():
    broken: list[Any] = [
        {}, {"drill": None}, {"drill": {"outcome": "aborted"}, "phases": [None, 3, {"started": "soon"}]},
        {"probe": {"attempts": [{"t": None}, {"t": START, "ok": True}, "x"]}, "lost": [{"seq": 1}], "notes": {"x": None}},
        {"drill": {"started": 1e300, "finished": float("nan")}, "markers": {"fault": 1e300}, "measured": {"rpo_lost": 3}},
        {"runbooks": [{"steps": [{"audit_seqs": None}, None, {"title": "s", "audit_seqs": [None, 7]}]}], "verification": [{}], "targets": [], "measured": "?"},
    ]
    for report in broken:
        assert "Outcome:" in render_markdown(report)
        assert "Outcome:" in _text(render_html(report))
    assert "UNKNOWN: the report records no known outcome" in render_markdown({})
    assert "ABORTED: the drill was stopped" in render_markdown(broken[2])
    assert "| s | — | #7 |" in render_markdown(broken[5])  # a step's record without a seq is not shown as one


def test_html_escapes_every_string_from_the_report():
    report = full_report()
    evil = '<script>alert("x")</script>'
    report["drill"]["title"] = evil
    report["drill"]["operator"]["user"] = evil
    report["phases"][2]["note"] = f"pasted from chat: {evil}"
    report["notes"]["nowhere"] = evil
    report["runbooks"][0]["steps"][0]["title"] = '"><img src=x onerror=alert(1)>'
    report["probe"]["attempts"][700]["error"] = evil
    html_doc = render_html(report)
    assert "<script" not in html_doc.lower() and "<img" not in html_doc.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html_doc
    assert f"pasted from chat: {evil}" in _text(html_doc)

    md = render_markdown(report)
    assert "<script>" not in md and "\\<script\\>" in md  # shown as text by a Markdown viewer, not run


def test_html_references_nothing_outside_itself():
    class Refs(HTMLParser):
        """Every reference the browser could follow: URL attributes, url( and @import in
        style attributes and <style>."""

        def __init__(self) -> None:
            super().__init__()
            self.refs: list[str] = []
            self.tags: set[str] = set()
            self.in_style = False

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self.tags.add(tag)
            self.in_style = tag == "style"
            for name, value in attrs:
                if name in ("src", "href", "srcset", "xlink:href", "action", "poster", "data", "background"):
                    self.refs.append(value or "")
                if name == "style":
                    self.refs += re.findall(r"url\(([^)]*)\)", value or "")

        def handle_endtag(self, tag: str) -> None:
            self.in_style = self.in_style and tag != "style"

        def handle_data(self, data: str) -> None:
            if self.in_style:
                self.refs += re.findall(r"url\(([^)]*)\)", data) + re.findall(r"@import\s+(\S+)", data)

    for report in (full_report(), failed_early()):
        report = copy.deepcopy(report)
        # A note quoting addresses stays text: it must not become a link, an image or a style.
        report["phases"][0]["note"] = 'see https://wiki.example.com/drills <img src="http://x/y.png"> url(//x/z.png)'
        html_doc = render_html(report)
        parser = Refs()
        parser.feed(html_doc)
        external = [r for r in parser.refs if re.match(r"\s*['\"]?\s*(https?:|//)", r, re.I)]
        assert external == []
        assert [r for r in parser.refs if not r.startswith(("data:", "#"))] == []  # nothing to load at all
        assert not parser.tags & {"script", "link", "img", "iframe", "object", "embed", "base", "a"}
        assert re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html_doc, re.I) is None
        assert "wiki.example.com/drills" in _text(html_doc)
        # The page itself forbids loading anything, should a string ever slip through.
        assert "Content-Security-Policy" in html_doc and "default-src &#x27;none&#x27;" in html_doc


def test_many_attempts_are_bucketed_so_the_file_stays_small():
    report = full_report(attempts_per_second=100)  # 18,000 attempts
    html_doc = render_html(report)
    marks = re.findall(r'class="attempt (ok|failed)"', html_doc)
    assert 0 < len(marks) <= 1000 and "failed" in marks
    assert len(html_doc) < 200_000
    # Below the threshold every attempt is its own mark.
    assert len(re.findall(r'class="attempt (?:ok|failed)"', render_html(full_report()))) == 1800


def test_timeline_has_the_markers_that_were_recorded():
    report = full_report()
    html_doc = render_html(report)
    for name in ("fault", "detected", "decision", "recovered"):
        assert f'class="marker {name}"' in html_doc
    report["markers"]["decision"] = None
    assert 'class="marker decision"' not in render_html(report)
    assert "decision  |" not in render_markdown(report)


def test_report_sha256_is_the_hex_digest_of_the_utf8_text():
    assert report_sha256("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    md = render_markdown(full_report())
    assert report_sha256(md) == report_sha256(render_markdown(full_report()))  # rendering is deterministic
    assert len(report_sha256("é")) == 64
