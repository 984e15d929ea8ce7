"""Command line entry point. Imports only click at module level so `dbops --help` stays fast;
each command imports what it needs."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, NoReturn

import click

# In a module of their own: the subcommand groups use them too, and must not import this one back.
from dbops.cli_common import fail_config as _fail_config
from dbops.cli_common import load_config as _load_config

log = logging.getLogger("dbops")


class LazyGroup(click.Group):
    """A group whose subcommand groups are imported when one is named (`dbops runbook ...`), so
    opening the console does not import the audit, runbook and sandbox commands it never runs."""

    def __init__(self, *args: Any, lazy: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy  # name -> "module:attribute"

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            import importlib

            module, _, attr = self.lazy[name].partition(":")
            command: click.Command = getattr(importlib.import_module(module), attr)
            return command
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, lazy={"audit": "dbops.audit_cli:audit", "drill": "dbops.drill.cli:drill", "runbook": "dbops.runbook.cli:runbook",
                                  "sandbox": "dbops.sandbox.cli:sandbox", "record": "dbops.recording_cli:record",
                                  "replay": "dbops.recording_cli:replay", "incident": "dbops.recording_cli:incident"},
             invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", metavar="PATH", envvar=None, help="Config file (default: $DBOPS_CONFIG, ./dbops.toml, user config dir).")
@click.option("--allow-writes", is_flag=True, help="Allow server-changing actions in every environment for this session.")
@click.version_option(package_name="dbops")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, allow_writes: bool) -> None:
    """dbops: a terminal operations console for database on-call engineers.

    Without a command, opens the console.
    """
    ctx.ensure_object(dict)
    _log_to_file()
    ctx.obj["config_path"] = config_path
    ctx.obj["allow_writes"] = allow_writes
    if ctx.invoked_subcommand is None:
        ctx.invoke(tui)


def _log_to_file() -> None:
    """Log records go to a file beside the audit log: never over the console's screen, and not
    into a command's output (client libraries log every refused connection of a down server)."""
    from dbops.config import state_dir

    log_dir = state_dir()
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        logging.basicConfig(filename=log_dir / "dbops.log", level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    except OSError as exc:
        click.echo(f"warning: cannot log to {log_dir / 'dbops.log'}: {exc}; library log records go to stderr", err=True)


@main.command()
@click.pass_context
def tui(ctx: click.Context) -> None:
    """Open the console (the default command)."""
    cfg = _load_config(ctx.obj["config_path"])
    # Imported once the config is known to load: its errors are shown before textual is imported.
    import os

    from dbops.config import find_config, state_dir
    from dbops.screens.app import DbopsApp

    bench = os.environ.get("DBOPS_EXIT_AFTER_FIRST_FRAME") == "1"
    # The file the config came from: a drill run from the console names it by its SHA-256.
    app = DbopsApp(cfg, allow_writes=ctx.obj["allow_writes"], state_dir=state_dir(), exit_after_first_frame=bench,
                   config_path=find_config(ctx.obj["config_path"]))
    app.run(headless=bench)
    if app.crash_message:
        click.echo(f"error: {app.crash_message}", err=True)
    if app.return_code:
        sys.exit(app.return_code)


@main.command()
@click.option("--cluster", "cluster_patterns", multiple=True, metavar="PATTERN",
              help="Only clusters whose name (or environment/name) matches this glob, e.g. 'orders-*'; repeatable. "
                   "In fleet mode ([prometheus] fleet = true) these are polled directly.")
@click.option("--environment", "environments", multiple=True, metavar="ENV", help="Only this environment's clusters; repeatable.")
@click.option("--engine", "engines", multiple=True, metavar="ENGINE", help="Only this engine's clusters (postgres or pg, redis ...); repeatable.")
@click.option("--format", "output_format", type=click.Choice(["text", "json", "prometheus"]), default=None,
              help="text (default); json; prometheus: the node_exporter textfile format (dbops_cluster_severity, "
                   "dbops_member_up ...), for alerting that already reads node_exporter.")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--refreshes", type=click.IntRange(1, 1000), default=1, show_default=True,
              help="Poll this many times, a refresh interval apart, and judge the last: Kafka consumer lag "
                   "(STALL/STOP) is judged over kafka.thresholds.lag_window refreshes, a PostgreSQL replica's "
                   "catch-up trend (--json) over 5 or more spanning 10 s (6 at a 2 s refresh interval).")
@click.option("--backups/--no-backups", "with_backups", default=True, show_default=True,
              help="Also judge every cluster's backups ([backups] s3, [pgbackrest], [rds] and [elasticache] snapshots): "
                   "newest age, size, WAL archive or point-in-time window, bucket.")
@click.option("--platform/--no-platform", "with_platform", default=True, show_default=True,
              help="Also judge what surrounds each cluster, as the Kubernetes and AWS panes do: a [kubernetes] "
                   "section's pods, StatefulSets, backup CronJobs and events; an [rds] or [elasticache] section's "
                   "instances, replicas, replication group and snapshots.")
@click.pass_context
def check(ctx: click.Context, cluster_patterns: tuple[str, ...], environments: tuple[str, ...], engines: tuple[str, ...],
          output_format: str | None, as_json: bool, refreshes: int, with_backups: bool, with_platform: bool) -> None:
    """Poll everything once (or the clusters picked); Nagios exit codes: 0 OK, 1 WARN, 2 CRIT, 3 UNKNOWN.

    In fleet mode ([prometheus] fleet = true) without --cluster, the clusters' health is read
    from Prometheus (the exporters' series) instead of polling each one."""
    import asyncio
    import time

    from dbops.engine_spec import specs
    from dbops.fleet import Selection
    from dbops.health import sort_worst_first
    from dbops.model import Severity, human_bytes, human_seconds
    from dbops.poller import poll_once

    if as_json and output_format not in (None, "json"):
        click.echo(f"UNKNOWN: --json and --format {output_format} ask for two formats; give one", err=True)
        sys.exit(3)
    fmt = output_format or ("json" if as_json else "text")

    def unknown(message: str) -> NoReturn:
        # A textfile collector must still see the check's verdict: UNKNOWN, on stdout too.
        if fmt == "prometheus":
            from dbops.fleet import prometheus_text

            click.echo(prometheus_text([], time.time(), unknown=True), nl=False)
        click.echo(f"UNKNOWN: {message}", err=True)
        sys.exit(3)

    cfg = _load_config(ctx.obj["config_path"], code=3)
    selection = Selection(cluster_patterns, environments, engines)
    configured = cfg.clusters()
    refs = selection.pick(configured)
    if not configured:
        unknown("no clusters configured")
    if not refs:
        why = selection.unknown(configured, specs()) or [f"configured: {', '.join(r.key for r in configured[:20])}"
                                                              + (" ..." if len(configured) > 20 else "")]
        unknown(f"no cluster matches {selection.describe()}; " + "; ".join(why))
    from dbops.platform.backups import fetch_all, judge
    from dbops.platform.checks import check_all

    history: dict[tuple[str, str], list[Any]] = {}
    # Fleet mode reads the fleet from Prometheus; a cluster named with --cluster is polled.
    from_prometheus = cfg.prometheus is not None and cfg.prometheus.fleet and not cluster_patterns

    class PrometheusFailed(Exception):
        pass

    async def health() -> list[Any]:
        if not from_prometheus:
            return await poll_once(refs, refreshes, history)
        from dbops.platform.monitoring_http import MonitoringError
        from dbops.platform.prometheus import fleet_health

        assert cfg.prometheus is not None
        try:
            found = await fleet_health(cfg.prometheus, refs)
        except MonitoringError as exc:
            raise PrometheusFailed(exc.message) from None
        return [found[r.key] for r in refs if r.key in found]

    async def everything() -> tuple[Any, Any, Any]:
        return await asyncio.gather(health(), fetch_all(refs) if with_backups else asyncio.sleep(0, []),
                                    check_all(refs) if with_platform else asyncio.sleep(0, []))

    try:
        polled, fetched, platform = asyncio.run(everything())
    except PrometheusFailed as exc:
        unknown(f"fleet mode reads the clusters from Prometheus, which failed: {exc}; name clusters with --cluster to poll them directly")
    clusters = sort_worst_first(polled)
    now = time.time()
    by_key = {r.key: r for r in refs}
    backups = [judge(f, by_key[f.key].cluster.backups, now) for f in fetched]
    platform = sorted(platform, key=lambda p: -p.severity.rank)  # worst first, then config order
    overall = Severity.worst([c.severity for c in clusters] + [b.severity for b in backups] + [p.severity for p in platform])
    if fmt == "prometheus":
        from dbops.fleet import prometheus_text

        def where(key: str) -> dict[str, str]:
            # As dbops_cluster_severity labels a cluster: its environment and its name apart.
            environment, _, name = key.partition("/")
            return {"environment": environment, "cluster": name}

        extra = [("backups", where(b.key), b.severity) for b in backups]
        extra += [(p.kind, {**where(p.cluster), "target": p.target}, p.severity) for p in platform]
        click.echo(prometheus_text(clusters, now, extra), nl=False)
    elif fmt == "json":
        out = {
            "severity": overall.name,
            "clusters": [
                {
                    "name": c.name,
                    "environment": c.environment,
                    "engine": c.engine,
                    "severity": c.severity.name,
                    "source": c.source,
                    "observed_at": c.observed_at,
                    "problems": [m.message for m in c.metrics if m.severity is not Severity.OK],
                    # Every judged value, OK ones too (a consumer group's lag, the coverage ...).
                    "metrics": [{"name": m.name, "severity": m.severity.name, "message": m.message} for m in c.metrics],
                    "members": [
                        {
                            "name": m.name,
                            "role": m.role,
                            "reachable": m.snapshot.reachable,
                            "reachability": m.snapshot.reachability.value,
                            "severity": m.severity.name,
                            "lag_bytes": m.lag_bytes,
                            "lag_seconds": m.lag_seconds,
                            "problems": m.problems,
                            "catchup": _catchup_json(c, m, history),
                            # Every judged value, OK ones too: what holds the xmin horizon back
                            # (named, with its age) is there while it is still harmless.
                            "metrics": [{"name": x.name, "severity": x.severity.name, "message": x.message} for x in m.metrics],
                        }
                        for m in c.members
                    ],
                }
                for c in clusters
            ],
            "backups": [_backup_json(b) for b in backups],
            "platform": [_platform_json(p) for p in platform],
        }
        click.echo(json.dumps(out, indent=2))
    else:
        source = ""
        if from_prometheus:
            newest = max((c.observed_at for c in clusters if c.observed_at is not None), default=None)
            source = f" from Prometheus ({'newest sample ' + human_seconds(now - newest) + ' old' if newest else 'no samples'})"
        click.echo(f"{overall.name}: {len(clusters)} cluster(s){source}")
        for c in clusters:
            click.echo(f"{c.severity.name:<8} {c.environment}/{c.name} ({c.engine})")
            for msg in (m.message for m in c.metrics if m.severity is not Severity.OK):
                click.echo(f"           {msg}")
            for m in c.members:
                lag = ""
                if m.lag_bytes is not None or m.lag_seconds is not None:
                    lag = f" lag {human_bytes(m.lag_bytes)} / {human_seconds(m.lag_seconds)}"
                click.echo(f"  {m.severity.name:<8} {m.name:<12} {m.role:<8} {m.snapshot.reachability.value:<7}{lag}")
                for p in m.problems:
                    click.echo(f"             - {p}")
        for b in backups:
            click.echo(f"{b.severity.name:<8} {b.key} backups")
            for metric in b.metrics:
                if metric.severity is not Severity.OK or metric.name.endswith(".age"):
                    click.echo(f"  {metric.severity.name:<8} {metric.message.split(': ', 1)[-1]}")
        for p in platform:
            click.echo(f"{p.severity.name:<8} {p.cluster} {p.kind} ({p.target})")
            if p.error:
                click.echo(f"  {Severity.CRIT.name:<8} {p.error}")
            for severity, line in p.findings[:PLATFORM_FINDINGS_SHOWN]:
                click.echo(f"  {severity.name:<8} {line}")
            if len(p.findings) > PLATFORM_FINDINGS_SHOWN:
                click.echo(f"           ... and {len(p.findings) - PLATFORM_FINDINGS_SHOWN} more (--json lists them all)")
    sys.exit(int(overall))


def _catchup_json(c: Any, m: Any, history: dict[tuple[str, str], list[Any]]) -> dict[str, Any] | None:
    """A PostgreSQL replica's catch-up trend over this check's refreshes; None for any other member."""
    if c.engine != "postgres" or m.role != "replica":
        return None
    from dbops.engines.postgres.catchup import from_history

    return from_history(history.get((f"{c.environment}/{c.name}", m.name), [])).as_json()


# The worst findings of a platform check in the text output; --json carries every one.
PLATFORM_FINDINGS_SHOWN = 5


def _platform_json(p: Any) -> dict[str, Any]:
    return {
        "cluster": p.cluster,
        "kind": p.kind,
        "target": p.target,
        "severity": p.severity.name,
        "error": p.error,
        "findings": [{"severity": s.name, "message": line} for s, line in p.findings],
        "notes": list(p.notes),
    }


def _backup_json(b: Any) -> dict[str, Any]:
    return {
        "cluster": b.key,
        "severity": b.severity.name,
        "problems": b.problems,
        "metrics": [{"name": m.name, "severity": m.severity.name, "message": m.message} for m in b.metrics],
        "kinds": [
            {
                "kind": k.kind, "source": k.source, "severity": k.severity.name,
                "newest": k.newest.name if k.newest else None,
                # None too when the source does not report the time (ElastiCache on moto).
                "newest_created": k.newest.created.isoformat() if k.newest and k.newest.created else None,
                "age_seconds": k.age_seconds, "size": k.newest.size if k.newest else None, "sizes": list(k.sizes),
                "count": k.count, "wal_segment": k.wal_segment, "wal_age_seconds": k.wal_age_seconds,
            }
            for k in b.kinds
        ],
        "bucket": b.protection,
    }


@main.group()
def config() -> None:
    """Inspect and validate configuration."""


@config.command("validate")
@click.argument("path", required=False)
@click.pass_context
def config_validate(ctx: click.Context, path: str | None) -> None:
    """Report every problem with file:line and key path; exit 2 on error, 0 when valid."""
    from dbops.config import ConfigError, find_config, load

    try:
        target = find_config(path or ctx.obj["config_path"])
        cfg = load(target)
    except ConfigError as exc:
        _fail_config(exc, 2)
        return
    n_clusters = len(cfg.clusters())
    n_members = sum(len(r.cluster.members) for r in cfg.clusters())
    click.echo(f"{target}: valid ({len(cfg.environments)} environment(s), {n_clusters} cluster(s), {n_members} member(s))")


@config.command("path")
@click.pass_context
def config_path(ctx: click.Context) -> None:
    """Print which config file dbops would use, or that there is none (and where it looks)."""
    from dbops.cli_common import config_places, optional_config_path

    path = optional_config_path(ctx.obj["config_path"])
    if path is None:
        # Not an error: the commands that need no cluster work without one (`dbops runbook list`).
        click.echo(f"no config file: dbops looks at {config_places()}, in that order "
                   "(config.example.toml documents every key; `dbops sandbox up` writes one for a local sandbox)")
        return
    click.echo(path)


def run() -> None:
    """Console script: no traceback ever reaches a user; it goes to a crash file instead."""
    try:
        main(standalone_mode=True)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        from dbops.crash import write_crash_report

        crash = write_crash_report(exc, "dbops " + " ".join(sys.argv[1:2]))
        click.echo(f"error: unexpected {type(exc).__name__}; details in {crash}", err=True)
        sys.exit(70)


if __name__ == "__main__":
    run()
