"""The words of a runbook session's events, for a front end that shows them as lines (the
command line; a drill's log). One table, so every line-oriented front end says the same thing.

Events and their data are documented in dbops.runbook.session. An event with no words here
(progress, outcome, ...) is one a front end shows its own way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Lines = Callable[[Any, dict[str, Any]], list[str]]


def _opened(step: Any, d: dict[str, Any]) -> list[str]:
    what = f"{d['runbook'].id} on {d['ref'].key}, run {d['run_id']}"
    return [f"resuming {what}" if d["resumed"] else what]


def _check(step: Any, d: dict[str, Any]) -> list[str]:
    v = d["verdict"]
    mark = "ok" if v.ok else ("overridden" if d.get("overridden_by") else "FAIL")
    return [f"  check [{mark}] {d['check'].title}: {v.detail}"]


def _reverified(step: Any, d: dict[str, Any]) -> list[str]:
    v = d["verdict"]
    return [f"  interrupted step '{step.title}' re-verified: {'done' if v.ok else 'not done, running it again'} ({v.detail})"]


def _approval_waiting(step: Any, d: dict[str, Any]) -> list[str]:
    return [
        f"\n⏸ this run needs a second operator's approval of its plan before '{step.title}' (two-person rule)",
        f"  run id:    {d['run_id']}",
        f"  plan hash: {d['plan_hash']}",
        f"  requested by: {d['requester'].describe()}",
        f"  who may approve: {d['who']}",
        f"  waiting up to {d['ttl']}s ...",
    ]


LINES: dict[str, Lines] = {
    "opened": _opened,
    "log": lambda step, d: [f"    {d['line']}"],
    "check": _check,
    "started": lambda step, d: [f"\n▶ {step.title}", *(f"    $ {c}" for c in d.get("commands", []))],
    "done": lambda step, d: [f"  ✓ {step.title} ({d['seconds']:.1f}s)"],
    "verified": lambda step, d: [f"  {'✓' if d['verdict'].ok else '✗'} verify: {d['verdict'].detail}"],
    "failed": lambda step, d: [f"  ✗ {step.title}: {d['error']}"],
    "skipped": lambda step, d: [f"  · {step.title}: {d.get('reason') or 'already done'}"],
    "reverified": _reverified,
    "overridden": lambda step, d: [f"  ! {step.title} FAILED and was OVERRIDDEN ({d['reason']}): {d['error']}"],
    "resumed": lambda step, d: [f"resuming after: {', '.join(d['done']) or 'no completed step'}"],
    "approval-waiting": _approval_waiting,
    "approved": lambda step, d: [f"  ✓ {d['message']} (plan {d['plan_hash'][:12]})"],
    "approval-refused": lambda step, d: [f"  ✗ {step.title}: {d['reason']}"],
}


def event_lines(event: str, data: dict[str, Any]) -> list[str]:
    """The lines that say `event`; [] for one a front end shows its own way."""
    lines = LINES.get(event)
    return lines(data.get("step"), data) if lines is not None else []
