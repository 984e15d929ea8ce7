"""The drill report's HTML in a real browser (Debian's headless Chromium): the page loads, the
timeline chart is in its DOM and drawn on screen, and opening it makes no network request at all.

How "no request" is proven: Chromium writes every request its network stack sees to a net log
(--log-net-log). A file: page's own load does not go through that stack; anything the page asks of
the network (an image, a stylesheet, a font, a prefetch) does, tagged with the page as initiator.
The browser's own background traffic (component updater, sign-in, network time), which some
Chromium builds send despite --disable-background-networking, has no initiating document
("not an origin") and is told apart by that, never by its host. The detector is shown to catch a
page's request by a page with <img src="http://127.0.0.1:9/x.png"> (and two more such pages).

If Chromium is missing these tests FAIL: a browser check must never be skipped silently.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from dbops.drill.report import render_html
from tests.unit.test_drill_report import failed_early, full_report

# As root Chromium will not start without --no-sandbox. The rest keep its own background traffic
# down (on a closed network each is a failed lookup) and its first run quiet.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--no-default-browser-check",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
         "--hide-scrollbars", "--mute-audio"]
WINDOW = (1200, 1400)  # tall enough that the timeline is on the first screen
OK_GREEN, FAILED_RED = (0x2E, 0x9E, 0x44), (0xD1, 0x34, 0x2F)  # the report's CSS for attempt marks
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")
# The initiator Chromium logs for a request no document made: the browser's own.
BROWSER_OWN = "not an origin"


def need_chromium() -> str:
    # Called by each test rather than a fixture: a fixture's failure reports as an ERROR, and a
    # missing browser is this test failing.
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed, and this test needs a real browser to load the drill report. Install "
                    "Debian's package: apt-get install -y --no-install-recommends chromium (`make test` does: it is "
                    "in the Makefile's APT_PACKAGES)", pytrace=False)
    return path


@dataclass
class Requests:
    """What a net log shows: the URLs (and hosts) a page asked for, and the browser's own."""

    page: list[str] = field(default_factory=list)
    browser: list[str] = field(default_factory=list)
    events: int = 0

    @property
    def external(self) -> list[str]:
        return [u for u in self.page if not u.startswith(LOCAL_SCHEMES)]


def read_net_log(path: Path) -> Requests:
    text = path.read_text()
    try:
        log = json.loads(text)
    except json.JSONDecodeError:
        # Chromium stopped before closing the file: the events so far are still a valid list.
        log = json.loads(text.rstrip().rstrip(",") + "]}")
    types = {number: name for name, number in log["constants"]["logEventTypes"].items()}
    requests: dict[int, dict[str, Any]] = {}
    found = Requests(events=len(log["events"]))
    for event in log["events"]:
        params = event.get("params") or {}
        name = types.get(event["type"], "")
        if name in ("REQUEST_ALIVE", "URL_REQUEST_START_JOB") and "url" in params:
            request = requests.setdefault(event["source"]["id"], {"url": params["url"], "initiator": None, "key": ""})
            if "initiator" in params:
                request["initiator"] = params["initiator"]
                request["key"] = str(params.get("network_isolation_key", ""))
        elif "host" in params and "file://" in str(params.get("network_anonymization_key", "")):
            # A lookup or connection keyed to the file: page without a URL request (dns-prefetch, preconnect).
            found.page.append(str(params["host"]))
    for request in requests.values():
        # Only a request positively the browser's own is excused: one without a logged initiator counts as the page's.
        own = request["initiator"] == BROWSER_OWN and "file://" not in request["key"]
        (found.browser if own else found.page).append(request["url"])
    return found


@dataclass
class Run:
    stdout: str
    requests: Requests


def open_in_chromium(chromium: str, page: Path, work: Path, *args: str) -> Run:
    """Load `page` once in a fresh profile with a net log; `args` say what to do with it."""
    work.mkdir(parents=True, exist_ok=True)
    net_log = work / "net-log.json"
    proc = subprocess.run(
        [chromium, *FLAGS, f"--user-data-dir={work / 'profile'}", f"--log-net-log={net_log}",
         f"--window-size={WINDOW[0]},{WINDOW[1]}", *args, page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}"
    assert net_log.is_file(), f"chromium wrote no net log: {proc.stderr[-2000:]}"
    requests = read_net_log(net_log)
    # An empty log would pass the check without proving anything: the network stack did log.
    assert requests.events > 0
    return Run(proc.stdout, requests)


class Chart(HTMLParser):
    """The timeline SVG's attempt marks and markers in a DOM dump."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0  # inside <svg id="timeline"> when > 0
        self.attempts: Counter[str] = Counter()
        self.markers: list[str] = []
        self.marker_labels: list[str] = []
        self._in_marker_text = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "svg" and a.get("id") == "timeline":
            self.depth = 1
            return
        if not self.depth:
            return
        self.depth += 1
        classes = (a.get("class") or "").split()
        if tag == "rect" and "attempt" in classes:
            self.attempts["ok" if "ok" in classes else "failed" if "failed" in classes else "?"] += 1
        if tag == "g" and "marker" in classes:
            self.markers += [c for c in classes if c != "marker"]
        self._in_marker_text = tag == "text" and bool(self.markers)

    def handle_endtag(self, tag: str) -> None:
        if self.depth:
            self.depth -= 1
        self._in_marker_text = False

    def handle_data(self, data: str) -> None:
        if self._in_marker_text:
            self.marker_labels.append(data)


def png_colours(path: Path) -> tuple[int, int, Counter[tuple[int, int, int]]]:
    """Width, height and a count of each RGB colour of an 8-bit, non-interlaced PNG (what
    Chromium's --screenshot writes): enough to tell the chart was painted, stdlib only."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, bytearray()
    width = height = depth = colour = interlace = 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
    assert depth == 8 and interlace == 0 and colour in (2, 6), (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(bytes(idat)), width * bpp
    pixels, prev, i = bytearray(), bytearray(stride), 0
    for _ in range(height):
        kind, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
        i += 1 + stride
        if kind == 1:
            for x in range(bpp, stride):
                line[x] = (line[x] + line[x - bpp]) & 0xFF
        elif kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev))
        elif kind == 3:
            for x in range(stride):
                line[x] = (line[x] + ((line[x - bpp] if x >= bpp else 0) + prev[x]) // 2) & 0xFF
        elif kind == 4:
            for x in range(stride):
                a = line[x - bpp] if x >= bpp else 0
                b, c = prev[x], prev[x - bpp] if x >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        pixels += line
        prev = line
    return width, height, Counter(zip(pixels[0::bpp], pixels[1::bpp], pixels[2::bpp]))


def test_the_report_loads_with_its_chart_and_requests_nothing(tmp_path: Path) -> None:
    chromium = need_chromium()
    report = full_report()
    page = tmp_path / "report.html"
    page.write_text(render_html(report), encoding="utf-8")

    dom = open_in_chromium(chromium, page, tmp_path / "dom", "--dump-dom")
    assert "DR drill: PostgreSQL: lose the primary" in dom.stdout  # the page itself loaded
    chart = Chart()
    chart.feed(dom.stdout)
    attempts = report["probe"]["attempts"]
    assert chart.attempts == Counter(ok=sum(a["ok"] for a in attempts), failed=sum(not a["ok"] for a in attempts))
    assert chart.markers == ["fault", "detected", "decision", "recovered"]
    assert "fault +60.0 s" in chart.marker_labels
    assert dom.requests.external == [], f"the report made requests: {dom.requests.external}"

    shot = tmp_path / "report.png"
    painted = open_in_chromium(chromium, page, tmp_path / "shot", f"--screenshot={shot}")
    assert painted.requests.external == [], f"the report made requests: {painted.requests.external}"
    assert shot.is_file() and shot.stat().st_size > 20_000
    width, height, colours = png_colours(shot)
    assert (width, height) == WINDOW
    # The strip is painted: 42.3 s of failures in 180 s is ~230 px by ~30 px of red, the other
    # 137.7 s green (the legend's two swatches are 100 px each).
    assert colours[FAILED_RED] > 3_000, colours.most_common(8)
    assert colours[OK_GREEN] > 2 * colours[FAILED_RED], colours.most_common(8)


def test_a_report_of_a_drill_that_failed_early_loads_and_says_so(tmp_path: Path) -> None:
    chromium = need_chromium()
    page = tmp_path / "report.html"
    page.write_text(render_html(failed_early()), encoding="utf-8")
    run = open_in_chromium(chromium, page, tmp_path / "dom", "--dump-dom")
    assert "Outcome: FAILED: the drill failed before it could finish." in run.stdout
    assert re.search(r'<svg id="timeline"', run.stdout) and "The probe made no attempt." in run.stdout
    assert run.requests.external == []


@pytest.mark.parametrize("leak", [
    '<img src="http://127.0.0.1:9/x.png">',
    '<link rel="stylesheet" href="http://127.0.0.1:9/x.css">',
    '<div style="background: url(http://127.0.0.1:9/bg.png); width: 10px; height: 10px"></div>',
])
def test_the_detector_catches_a_page_that_makes_a_request(tmp_path: Path, leak: str) -> None:
    chromium = need_chromium()
    # Port 9 (discard) refuses at once, and Chromium blocks it as unsafe: either way the request
    # was made by the page, which is what the net log must show.
    page = tmp_path / "leaky.html"
    page.write_text(f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>leaky</title></head>'
                    f"<body><p>leaky page</p>{leak}</body></html>", encoding="utf-8")
    run = open_in_chromium(chromium, page, tmp_path / "dom", "--dump-dom")
    assert "leaky page" in run.stdout
    url = re.search(r"http://127\.0\.0\.1:9/[a-z]+\.(?:png|css)", leak)
    assert url is not None
    # The request itself (and the page's lookup of its host, logged as "http://127.0.0.1:9").
    assert url.group(0) in run.requests.external
    assert all(u.startswith("http://127.0.0.1:9") for u in run.requests.external), run.requests.external
