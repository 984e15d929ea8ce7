"""Silencing an alert in Alertmanager from the console, and expiring a silence it made, with the
guard rails every action has: refuse where writes are not allowed, show exactly what will be sent,
the caller's confirmation, an audit intent fsynced before the request and a result after it.

A silence hides an alert from everyone on call, so it is treated like a change to a server: it
needs the environment of the alert's cluster to allow writes (operator mode or --allow-writes);
an alert that names no configured cluster needs every environment to allow them. Blocking
(fsync, HTTP): callers run these in a thread, never on the UI's loop.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dbops.actions import ActionOutcome, ReadOnly, finish, read_only_reason, writes_allowed
from dbops.config import AlertmanagerOptions, Config

if TYPE_CHECKING:
    from dbops.audit import AuditLog
    from dbops.platform.alertmanager import Alert, Silence

# In every silence the console makes: how it knows which silences are its own to expire.
MARK = "[dbops]"
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
UNIT_SECONDS = {"": 60.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_SECONDS = 7 * 86400.0


def parse_duration(text: str) -> float:
    """'30m', '2h', '1d', '90' (minutes) -> seconds; ValueError with a sentence otherwise."""
    m = DURATION.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration: give e.g. 30m, 2h or 1d")
    seconds = float(m.group(1)) * UNIT_SECONDS[m.group(2)]
    if seconds <= 0:
        raise ValueError("a silence must last some time")
    if seconds > MAX_SECONDS:
        raise ValueError("at most 7 days: a longer silence hides a problem instead of tiding over it")
    return seconds


def made_by_console(silence: Silence) -> bool:
    return silence.comment.rstrip().endswith(MARK)


@dataclass(frozen=True)
class SilenceAlert:
    """A silence of exactly one alert (every one of its labels, by equality)."""

    alert: Alert
    duration_seconds: float
    comment: str
    author: str

    @property
    def matchers(self) -> list[tuple[str, str]]:
        from dbops.platform.alertmanager import silence_matchers_for

        return silence_matchers_for(self.alert)

    @property
    def full_comment(self) -> str:
        return f"{self.comment.strip()} {MARK}"

    def plan(self, options: AlertmanagerOptions) -> list[str]:
        """What will be sent, as the confirmation shows it."""
        from dbops.platform.monitoring_http import shown_url

        hours = self.duration_seconds / 3600
        return [
            f"POST {shown_url(options.url)}/api/v2/silences",
            "  matchers: " + ", ".join(f'{k}="{v}"' for k, v in self.matchers),
            f"  from now for {hours:g} h ({self.duration_seconds:g} s)",
            f"  createdBy: {self.author}",
            f"  comment: {self.full_comment}",
        ]

    def params(self, options: AlertmanagerOptions) -> dict[str, Any]:
        from dbops.platform.monitoring_http import shown_url

        return {"alertmanager": shown_url(options.url), "alert": self.alert.name, "fingerprint": self.alert.fingerprint,
                "matchers": [f"{k}={v}" for k, v in self.matchers], "duration_seconds": self.duration_seconds,
                "comment": self.full_comment, "author": self.author}


def _where(config: Config, alert_cluster: str | None) -> tuple[str, str]:
    """(environment, cluster) for the audit record: the alert's cluster, or "-" for neither."""
    if alert_cluster is None:
        return "-", "-"
    env, _, name = alert_cluster.partition("/")
    return env, name


def check_allowed(config: Config, alert_cluster: str | None, allow_writes: bool) -> None:
    refs = config.clusters()
    if alert_cluster is not None:
        ref = next((r for r in refs if r.key == alert_cluster), None)
        if ref is not None and not writes_allowed(ref, allow_writes):
            raise ReadOnly(read_only_reason(ref) + " (a silence hides its alerts from everyone on call)")
        return
    if not allow_writes and any(r.env.mode != "operator" for r in refs):
        raise ReadOnly("this alert names no configured cluster, and not every environment allows writes: start dbops "
                       "with --allow-writes to silence it")


def decline(audit: AuditLog, config: Config, act: SilenceAlert) -> None:
    """The operator declined the silence's confirmation: an abort record, nothing sent."""
    if config.alertmanager is None:
        return
    env, cluster = _where(config, act.alert.cluster)
    audit.abort(action="alertmanager.silence", environment=env, cluster=cluster, member=act.alert.member,
                params=act.params(config.alertmanager), outcome="declined")


def decline_expire(audit: AuditLog, config: Config, found: Silence, cluster_key: str | None) -> None:
    """The operator declined expiring a silence: an abort record, nothing sent."""
    env, cluster = _where(config, cluster_key)
    audit.abort(action="alertmanager.expire_silence", environment=env, cluster=cluster,
                params={"silence_id": found.id, "created_by": found.created_by, "comment": found.comment}, outcome="declined")


def silence(audit: AuditLog, config: Config, act: SilenceAlert, allow_writes: bool) -> ActionOutcome:
    """Create the silence: check, intent (fsynced), POST, result. Returns what to tell the operator."""
    from dbops.platform.alertmanager import create_silence
    from dbops.platform.monitoring_http import MonitoringError

    options = config.alertmanager
    if options is None:
        return ActionOutcome(False, "no [alertmanager] is configured")
    check_allowed(config, act.alert.cluster, allow_writes)
    env, cluster = _where(config, act.alert.cluster)
    intent = audit.intent(action="alertmanager.silence", environment=env, cluster=cluster, member=act.alert.member,
                          params=act.params(options))
    try:
        sid = asyncio.run(create_silence(options, act.matchers, act.duration_seconds, act.full_comment, act.author))
    except MonitoringError as exc:
        return finish(audit, intent, False, f"the silence was not made: {exc.message}", outcome="failed", error=exc.message)
    except Exception as exc:  # not Alertmanager's answer: whether it was made is not known
        why = f"{type(exc).__name__}: {exc}"
        return finish(audit, intent, False, f"the silence may or may not have been made ({why}): look in Alertmanager",
                       outcome="unknown", error=why)
    return finish(audit, intent, True, f"silenced {act.alert.name} for {act.duration_seconds / 3600:g} h (silence {sid})",
                   outcome="ok", detail={"silence_id": sid})


def expire(audit: AuditLog, config: Config, found: Silence, cluster_key: str | None, allow_writes: bool) -> ActionOutcome:
    """Expire a silence the console made (refused for anyone else's: theirs to end)."""
    from dbops.platform.alertmanager import expire_silence
    from dbops.platform.monitoring_http import MonitoringError, shown_url

    options = config.alertmanager
    if options is None:
        return ActionOutcome(False, "no [alertmanager] is configured")
    if not made_by_console(found):
        return ActionOutcome(False, f"silence {found.id} was made by {found.created_by or 'someone'} outside dbops: "
                                    "expire it in Alertmanager (amtool silence expire) if it must end")
    check_allowed(config, cluster_key, allow_writes)
    env, cluster = _where(config, cluster_key)
    intent = audit.intent(action="alertmanager.expire_silence", environment=env, cluster=cluster,
                          params={"alertmanager": shown_url(options.url), "silence_id": found.id,
                                  "created_by": found.created_by, "comment": found.comment})
    try:
        asyncio.run(expire_silence(options, found.id))
    except MonitoringError as exc:
        return finish(audit, intent, False, f"the silence was not expired: {exc.message}", outcome="failed", error=exc.message)
    except Exception as exc:  # not Alertmanager's answer: whether it ended is not known
        why = f"{type(exc).__name__}: {exc}"
        return finish(audit, intent, False, f"silence {found.id} may or may not have been expired ({why}): look in Alertmanager",
                       outcome="unknown", error=why)
    return finish(audit, intent, True, f"silence {found.id} expired", outcome="ok")
