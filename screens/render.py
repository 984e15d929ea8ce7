"""Small rendering helpers shared by the screens: severity colours, sparklines, ages."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.text import Text

from dbops.model import ClusterHealth, Metric, Reachability, Severity, Snapshot, human_seconds

SEVERITY_STYLE = {
    Severity.OK: "bold green",
    Severity.WARN: "bold yellow",
    Severity.CRIT: "bold white on red",
    Severity.UNKNOWN: "bold magenta",
}

REACH_STYLE = {
    Reachability.UP: "green",
    Reachability.PENDING: "dim",
}

_BARS = "▁▂▃▄▅▆▇█"


def severity_text(sev: Severity) -> Text:
    return Text(f" {sev.name} ", style=SEVERITY_STYLE[sev])


def reach_text(reach: Reachability) -> Text:
    return Text(reach.value, style=REACH_STYLE.get(reach, "bold red"))


def state_text(snap: Snapshot, now: float) -> Text:
    """Reachability and, when the member does not answer, the age of the values shown in one
    cell: "DOWN 42s" says both at 80 columns."""
    state = reach_text(snap.reachability)
    if not snap.reachable and snap.reachability is not Reachability.PENDING:
        age = snap.age_of_shown(now)
        state.append(f" {human_seconds(age)}" if age is not None else " never seen")
    return state


def health_text(health: ClusterHealth, all_member_metrics: bool = False) -> Text:
    """The judged metrics, cluster first, then each member's (only the problems, unless
    `all_member_metrics`)."""
    out = Text()
    for mt in health.metrics:
        out.append(f" {mt.severity.name:<4} ", style=SEVERITY_STYLE[mt.severity])
        out.append(f" {mt.message}\n")
    for m in health.members:
        for mt in m.metrics:
            if all_member_metrics or mt.severity is not Severity.OK:
                out.append(f" {mt.severity.name:<4} ", style=SEVERITY_STYLE[mt.severity])
                out.append(f" {m.name}: {mt.message}\n")
    return out


def sparkline(values: Sequence[float | int | None], width: int = 12) -> str:
    """A text sparkline of the last `width` values; gaps (None) show as spaces.

    Scaled from zero so a flat non-zero lag does not look like a full bar of noise.
    """
    tail = values[-width:]
    known = [v for v in tail if v is not None]
    if not known:
        return " " * width
    top = max(known)
    out = []
    for v in tail:
        if v is None:
            out.append(" ")
        elif top <= 0:
            out.append(_BARS[0])
        else:
            out.append(_BARS[min(len(_BARS) - 1, int(v / top * (len(_BARS) - 1)))])
    return "".join(out).rjust(width)


def one_line(query: str, width: int = 80) -> str:
    q = " ".join(query.split())
    return q if len(q) <= width else q[: width - 1] + "…"


def first_problem(metrics: Iterable[Metric]) -> Metric | None:
    return next((m for m in metrics if m.severity is not Severity.OK), None)


def worst_problem(metrics: Iterable[Metric]) -> Metric | None:
    """The most severe problem (the first of those as bad)."""
    problems = [m for m in metrics if m.severity is not Severity.OK]
    return max(problems, key=lambda m: m.severity.rank) if problems else None


def append_count(out: Text, label: str, count: int, style: str) -> None:
    """A count in a status line, in `style` when there is any."""
    out.append(f"  {label} {count}", style=style if count else "")
