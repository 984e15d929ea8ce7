"""`dbops drill list | plan | run | report | history`.

Exit codes of `run`: 0 every target met, 1 a target missed, 2 the drill failed (or could not
start), 3 declined or aborted. With several drills (`run all`), the worst of them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from dbops.runbook.cli import CliFrontEnd

if TYPE_CHECKING:
    from dbops.config import ClusterRef, Config
    from dbops.drill.runner import DrillResult, DrillRunner


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _config(ctx: click.Context) -> tuple[Config, str]:
    """The config and the SHA-256 of its file (the report names the config a drill ran with)."""
    from dbops.cli_common import load_config
    from dbops.config import find_config

    config = load_config(ctx.obj.get("config_path"))
    try:
        digest = hashlib.sha256(find_config(ctx.obj.get("config_path")).read_bytes()).hexdigest()
    except OSError as exc:
        digest = f"unreadable ({exc.strerror})"
    return config, digest


class DrillFrontEnd(CliFrontEnd):
    """The command line's drill: the runbook front end's confirmations, and the drill's phases,
    marks and probe transitions as lines (one line per change, not per write)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_ok: bool | None = None
        self._start: float | None = None

    def _at(self, t: float) -> str:
        if self._start is None:
            self._start = t
        return f"+{t - self._start:6.1f}s"

    def event(self, event: str, **data: Any) -> None:
        import time

        if event == "drill-phase":
            phase, state = data["phase"], data["state"]
            if state == "running":
                click.echo(f"\n== {self._at(time.time())} {phase.heading}")
            else:
                mark = {"done": "✓", "failed": "✗", "aborted": "■", "skipped": "·"}.get(state, state)
                click.echo(f"   {mark} {phase.value}: {data['detail']}" if data["detail"] else f"   {mark} {phase.value}")
        elif event == "drill-attempt":
            a = data["attempt"]
            if a.ok != self._last_ok:
                click.echo(f"   {self._at(a.t)} probe " + ("writes and reads again" if a.ok else f"FAILING: {a.error}"))
                self._last_ok = a.ok
        elif event == "drill-mark":
            click.echo(f"   {self._at(data['t'])} ◆ {data['name']}")
        elif event == "drill-log":
            click.echo(f"   {data['line']}")
        elif event == "drill-over":
            pass
        else:
            super().event(event, **data)


def _runner(ctx: click.Context, front: DrillFrontEnd) -> DrillRunner:
    from dbops.config import state_dir
    from dbops.drill.runner import DrillRunner

    config, digest = _config(ctx)
    return DrillRunner(config, front, state_dir(), allow_writes=ctx.obj.get("allow_writes", False), config_hash=digest)


@click.group()
def drill() -> None:
    """Guided DR drills: a fault, the recovery runbooks, RTO and RPO measured from the data."""


@drill.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """Every drill scenario (built-in and drill_dirs), and the configured clusters each applies to."""
    from dbops.drill.registry import catalog

    config, _ = _config(ctx)
    found, sources, problems = catalog(config.drill_dirs)
    for p in problems:
        click.echo(f"warning: {p}", err=True)
    refs = config.clusters()
    rows = []
    for s in sorted(found.values(), key=lambda s: s.id):
        rows.append({"id": s.id, "engine": s.engine, "title": s.title, "source": sources[s.id],
                     "clusters": [r.key for r in refs if s.applies(r) is None],
                     "recovery": [r.runbook or f"({r.why})" for r in s.recovery] or ["automatic (no runbook)"]})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(f"{row['id']:<24} {row['title']}")
        click.echo(f"{'':<24} recovery: {', '.join(row['recovery'])}; clusters: {', '.join(row['clusters']) or 'none configured'}")
    click.echo(f"{'all':<24} every drill above on every cluster it applies to (in an environment that allows drills)")


def _pairs(runner: DrillRunner, scenario_id: str, cluster: str | None) -> list[tuple[str, ClusterRef]]:
    """(scenario, cluster) pairs to run: one, or for `all` every applicable pair in the
    environments that allow drills."""
    from dbops.drill.model import DrillRefused
    from dbops.runbook.session import SessionError

    if scenario_id != "all":
        if cluster is None:
            _fail(f"drill {scenario_id} needs --cluster", 2)
        try:
            ref = runner.session.cluster(cluster)
            runner.scenario(scenario_id, ref)
        except (SessionError, DrillRefused) as exc:
            _fail(str(exc), 2)
        return [(scenario_id, ref)]
    refs = runner.config.clusters()
    if cluster is not None:
        try:
            refs = [runner.session.cluster(cluster)]
        except SessionError as exc:
            _fail(exc.message, 2)
    pairs: list[tuple[str, ClusterRef]] = []
    servers: dict[tuple[str, frozenset[tuple[str, str]]], str] = {}
    for r in refs:
        if not r.env.allows_drills:
            continue
        for s in runner.scenarios().values():
            if s.applies(r) is not None:
                continue
            # Two views of the same servers (the sandbox's Kafka through its TLS listeners):
            # same member names on the same hosts. One drill of them is enough.
            same = (s.id, frozenset((m.host, m.name) for m in r.cluster.members))
            if same in servers:
                click.echo(f"skipping {s.id} on {r.key}: the same servers as {servers[same]} (members "
                           f"{', '.join(sorted(m.name for m in r.cluster.members))} on the same hosts)")
                continue
            servers[same] = r.key
            pairs.append((s.id, r))
    if not pairs:
        _fail("no drill applies to a cluster of an environment that allows drills (drills = true; a sandbox allows them)", 2)
    return pairs


@drill.command()
@click.argument("scenario_id")
@click.option("--cluster", "cluster_name")
@click.pass_context
def plan(ctx: click.Context, scenario_id: str, cluster_name: str | None) -> None:
    """What the drill will do, phase by phase, with the fault's exact commands. Changes nothing."""
    runner = _runner(ctx, DrillFrontEnd(False, None, interactive=False))
    for n, (sid, ref) in enumerate(_pairs(runner, scenario_id, cluster_name)):
        if n:
            click.echo("")
        for line in runner.plan(runner.scenario(sid, ref), ref):
            click.echo(line)
        why = runner.refusal(ref)
        if why is not None:
            click.echo(f"\nthis drill would be refused now: {why}")
    click.echo("\nnothing was changed")


@drill.command()
@click.argument("scenario_id")
@click.option("--cluster", "cluster_name")
@click.option("--yes", is_flag=True, help="Answer yes to yes/no confirmations (the fault's, the runbooks').")
@click.option("--confirm", "confirm_name", metavar="CLUSTER", help="Confirm steps that ask for the cluster's name.")
@click.option("--note", "raw_notes", multiple=True, metavar="PHASE=TEXT", help="A note for a phase's line in the report.")
@click.pass_context
def run(ctx: click.Context, scenario_id: str, cluster_name: str | None, yes: bool, confirm_name: str | None,
        raw_notes: tuple[str, ...]) -> None:
    """Run a drill (or `all`): the fault, the recovery runbooks, RTO/RPO against the targets, a report."""
    import time

    from dbops.drill.model import PHASES

    front = DrillFrontEnd(yes, confirm_name, interactive=sys.stdin.isatty())
    runner = _runner(ctx, front)
    phases = {p.value for p in PHASES}
    for item in raw_notes:
        phase, sep, text = item.partition("=")
        if not sep or phase not in phases:
            _fail(f"--note {item!r}: expected PHASE=TEXT with PHASE one of {', '.join(sorted(phases))}", 2)
        runner.notes[phase] = text
    pairs = _pairs(runner, scenario_id, cluster_name)
    started = time.monotonic()
    results: list[tuple[str, str, DrillResult]] = []
    for sid, ref in pairs:
        click.echo(f"\n#### drill {sid} on {ref.key}")
        result = asyncio.run(runner.run(sid, ref.key))
        results.append((sid, ref.key, result))
        _print_result(result)
    if len(results) > 1:
        click.echo(f"\n#### {len(results)} drills in {time.monotonic() - started:.0f}s")
        for sid, key, r in results:
            click.echo(f"{_verdict(r):<8} {sid:<24} {key:<24} {r.message}")
    sys.exit(max(r.exit_code for _, _, r in results))


@drill.command()
@click.argument("run_id")
@click.option("--yes", is_flag=True, help="Answer yes to yes/no confirmations.")
@click.option("--confirm", "confirm_name", metavar="CLUSTER", help="Confirm steps that ask for the cluster's name.")
@click.pass_context
def resume(ctx: click.Context, run_id: str, yes: bool, confirm_name: str | None) -> None:
    """Continue a drill after dbops stopped mid-way (its journal says where)."""
    runner = _runner(ctx, DrillFrontEnd(yes, confirm_name, interactive=sys.stdin.isatty()))
    result = asyncio.run(runner.resume(run_id))
    _print_result(result)
    sys.exit(result.exit_code)


def _verdict(r: DrillResult) -> str:
    return {"met": "MET", "missed": "MISSED", "failed": "FAILED", "declined": "DECLINED", "aborted": "ABORTED"}[r.outcome]


def _print_result(r: DrillResult) -> None:
    click.echo(f"\n{_verdict(r)}: {r.message}")
    m = r.report.get("measured", {})
    if m.get("rto_note"):
        click.echo(f"  RTO: {m['rto_note']}")
    if m.get("rpo_note"):
        click.echo(f"  RPO: {m['rpo_note']}")
    if m.get("detection_seconds") is not None:
        click.echo(f"  detected by dbops {m['detection_seconds']:.1f}s after the fault")
    if m.get("decision_seconds") is not None:
        click.echo(f"  recovery started {m['decision_seconds']:.1f}s after the fault")
    for kind, path in r.files.items():
        if kind != "json":
            click.echo(f"  report: {path}")
    if r.run_id:
        click.echo(f"  drill id: {r.run_id}")


@drill.command()
@click.argument("run_id")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the HTML report here too.")
@click.pass_context
def report(ctx: click.Context, run_id: str, html_path: Path | None) -> None:
    """A drill's report (Markdown), and its HTML file where asked."""
    from dbops.config import state_dir
    from dbops.drill.journal import DrillJournal, DrillJournalError

    try:
        j = DrillJournal.open(state_dir(), run_id)
    except DrillJournalError as exc:
        _fail(str(exc), 1)
    md, html = j.dir / "report.md", j.dir / "report.html"
    if not md.exists():
        _fail(f"drill {run_id} has no report yet (it is {'running or was interrupted' if j.data.get('end') is None else j.data['end']})", 1)
    click.echo(md.read_text(), nl=False)
    if html_path is not None:
        html_path.write_bytes(html.read_bytes())
        click.echo(f"\nHTML report written to {html_path}", err=True)


@drill.command()
@click.option("--cluster", "cluster_name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def history(ctx: click.Context, cluster_name: str | None, as_json: bool) -> None:
    """Each scenario's RTO and RPO over past drills, oldest first: quarter-on-quarter change."""
    from datetime import UTC, datetime

    from dbops.config import state_dir
    from dbops.drill.journal import list_runs

    rows = []
    for d in list_runs(state_dir()):
        if "unreadable" in d:
            click.echo(f"warning: drill {d['run_id']}: {d['unreadable']}", err=True)
            continue
        key = f"{d['environment']}/{d['cluster']}"
        if cluster_name is not None and cluster_name not in (d["cluster"], key):
            continue
        m = d.get("measured", {})
        rows.append({"run_id": d["run_id"], "scenario": d["scenario"], "cluster": key,
                     "when": datetime.fromtimestamp(d["started"], UTC).strftime("%Y-%m-%d %H:%M"),
                     "outcome": d.get("end") or "unfinished", "rto_seconds": m.get("rto_seconds"),
                     "rpo_lost": m.get("rpo_lost"), "rpo_window_seconds": m.get("rpo_window_seconds"),
                     "targets": d.get("targets", {})})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no drill has run" + (f" on {cluster_name}" if cluster_name else "") + " yet")
        return
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        by.setdefault((row["scenario"], row["cluster"]), []).append(row)
    for (scenario, cluster), runs in sorted(by.items()):
        t = runs[-1]["targets"]
        click.echo(f"{scenario} on {cluster} (targets RTO {t.get('rto_seconds', 0):g}s, RPO {t.get('rpo_seconds', 0):g}s)")
        previous: float | None = None
        for row in runs:
            rto = row["rto_seconds"]
            change = f" ({rto - previous:+.1f}s)" if rto is not None and previous is not None else ""
            rto_s = f"{rto:.1f}s{change}" if rto is not None else "-"
            lost = row["rpo_lost"]
            rpo_s = "-" if lost is None else (f"{lost} lost ({row['rpo_window_seconds']:.1f}s)" if lost else "0 lost")
            click.echo(f"  {row['when']}  {row['outcome']:<10} RTO {rto_s:<16} RPO {rpo_s:<20} {row['run_id']}")
            previous = rto if rto is not None else previous
