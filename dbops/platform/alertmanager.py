"""Alertmanager's API v2: the fleet's alerts matched to clusters and members, and silences.

One GET /api/v2/alerts per refresh for the whole fleet (active, silenced, inhibited and
unprocessed alerts alike: a silenced alert still says what is wrong). Silences are made with
exact-equality matchers on the alert's labels, and expired by id. Every failure is a
MonitoringError with a message fit to show (dbops.platform.monitoring_http).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dbops.config import AlertmanagerOptions, ClusterRef
from dbops.platform.monitoring_http import MonitoringError, Service
from dbops.platform.monitoring_labels import LabelIndex

__all__ = [
    "Alert",
    "MonitoringError",
    "Silence",
    "SilenceMatcher",
    "create_silence",
    "expire_silence",
    "fetch_alerts",
    "list_silences",
    "parse_alerts",
    "parse_silences",
    "silence_matchers_for",
]

STATES = ("active", "suppressed", "unprocessed")


@dataclass(frozen=True, slots=True)
class Alert:
    fingerprint: str
    name: str  # the alertname label
    severity: str  # the severity label ("" when the rule gives none)
    state: str  # active, suppressed (silenced or inhibited) or unprocessed
    labels: tuple[tuple[str, str], ...]  # sorted by name
    summary: str  # annotations.summary, else annotations.description, else ""
    starts_at: float  # seconds since the epoch
    silenced_by: tuple[str, ...] = ()
    inhibited_by: tuple[str, ...] = ()
    cluster: str | None = None  # "env/name" of the configured cluster it is about
    member: str | None = None

    def label(self, name: str, default: str = "") -> str:
        return next((v for k, v in self.labels if k == name), default)

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass(frozen=True, slots=True)
class SilenceMatcher:
    name: str
    value: str
    is_regex: bool = False
    is_equal: bool = True

    def __str__(self) -> str:
        op = ("=~" if self.is_regex else "=") if self.is_equal else ("!~" if self.is_regex else "!=")
        return f'{self.name}{op}"{self.value}"'


@dataclass(frozen=True, slots=True)
class Silence:
    id: str
    state: str  # active, pending or expired
    matchers: tuple[SilenceMatcher, ...]
    starts_at: float
    ends_at: float
    created_by: str
    comment: str


# -- parsing -------------------------------------------------------------------------------------

_FRACTION = re.compile(r"\.(\d+)")


def parse_time(value: Any) -> float:
    """RFC 3339 as Alertmanager writes it (nanoseconds, Z or an offset) -> epoch seconds."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"not a time: {value!r}")
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    # Python before 3.12 reads at most 6 fractional digits; Go writes up to 9.
    text = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), text, count=1)
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _str_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f"{what} is not an object of strings")
    return dict(value)


def _str_list(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what} is not a list of strings")
    return tuple(value)


def parse_alerts(data: Any, index: LabelIndex | None = None) -> list[Alert]:
    """GET /api/v2/alerts' answer -> Alerts (matched to clusters with `index`); ValueError
    naming the first item of the wrong shape."""
    if not isinstance(data, list):
        raise ValueError(f"expected a list of alerts, got {type(data).__name__}")
    out = []
    for i, item in enumerate(data):
        try:
            if not isinstance(item, Mapping):
                raise ValueError(f"is {type(item).__name__}, not an object")
            labels = _str_map(item.get("labels"), "labels")
            if not labels:
                raise ValueError("has no labels")
            annotations = _str_map(item.get("annotations"), "annotations")
            fingerprint = item.get("fingerprint")
            if not isinstance(fingerprint, str) or not fingerprint:
                raise ValueError("has no fingerprint")
            status = item.get("status")
            if not isinstance(status, Mapping) or status.get("state") not in STATES:
                raise ValueError(f"has no status.state among {', '.join(STATES)}")
            match = index.match(labels) if index is not None else None
            out.append(Alert(
                fingerprint=fingerprint,
                name=labels.get("alertname", ""),
                severity=labels.get("severity", ""),
                state=str(status["state"]),
                labels=tuple(sorted(labels.items())),
                summary=annotations.get("summary") or annotations.get("description") or "",
                starts_at=parse_time(item.get("startsAt")),
                silenced_by=_str_list(status.get("silencedBy"), "status.silencedBy"),
                inhibited_by=_str_list(status.get("inhibitedBy"), "status.inhibitedBy"),
                cluster=match[0] if match else None,
                member=match[1] if match else None,
            ))
        except ValueError as exc:
            raise ValueError(f"alert {i + 1}: {exc}") from None
    return out


def parse_silences(data: Any) -> list[Silence]:
    """GET /api/v2/silences' answer -> Silences; ValueError naming the first bad item."""
    if not isinstance(data, list):
        raise ValueError(f"expected a list of silences, got {type(data).__name__}")
    out = []
    for i, item in enumerate(data):
        try:
            if not isinstance(item, Mapping):
                raise ValueError(f"is {type(item).__name__}, not an object")
            sid, status, matchers = item.get("id"), item.get("status"), item.get("matchers")
            if not isinstance(sid, str) or not sid:
                raise ValueError("has no id")
            if not isinstance(status, Mapping) or not isinstance(status.get("state"), str):
                raise ValueError("has no status.state")
            if not isinstance(matchers, list):
                raise ValueError("has no list of matchers")
            parsed = []
            for m in matchers:
                if not isinstance(m, Mapping) or not isinstance(m.get("name"), str) or not isinstance(m.get("value"), str):
                    raise ValueError("has a matcher without name and value")
                parsed.append(SilenceMatcher(m["name"], m["value"], bool(m.get("isRegex", False)),
                                             bool(m.get("isEqual", True))))
            out.append(Silence(sid, status["state"], tuple(parsed), parse_time(item.get("startsAt")),
                               parse_time(item.get("endsAt")), str(item.get("createdBy", "")),
                               str(item.get("comment", ""))))
        except ValueError as exc:
            raise ValueError(f"silence {i + 1}: {exc}") from None
    return out


# -- the API ------------------------------------------------------------------------------------


def _service(options: AlertmanagerOptions) -> Service:
    return Service("alertmanager", options)


async def fetch_alerts(options: AlertmanagerOptions, refs: list[ClusterRef]) -> list[Alert]:
    """Every alert Alertmanager holds (firing: active, silenced, inhibited, unprocessed), each
    matched to a configured cluster and member by its labels (None when it names none)."""
    service = _service(options)
    path = "/api/v2/alerts"
    data = await service.request("GET", path)
    try:
        alerts = parse_alerts(data, LabelIndex(refs, options.labels))
    except ValueError as exc:
        raise service.bad_answer(f"GET {path}", str(exc)) from None
    # Worst first, then the oldest: what the on-call engineer reads first.
    rank = {"critical": 0, "error": 1, "warning": 2}
    return sorted(alerts, key=lambda a: (a.state != "active", rank.get(a.severity.lower(), 3), a.starts_at))


async def list_silences(options: AlertmanagerOptions) -> list[Silence]:
    service = _service(options)
    path = "/api/v2/silences"
    data = await service.request("GET", path)
    try:
        return parse_silences(data)
    except ValueError as exc:
        raise service.bad_answer(f"GET {path}", str(exc)) from None


def silence_matchers_for(alert: Alert) -> list[tuple[str, str]]:
    """The matchers that silence exactly this alert: every one of its labels, by equality (a
    label set is what identifies an alert in Alertmanager)."""
    return list(alert.labels)


async def create_silence(options: AlertmanagerOptions, matchers: list[tuple[str, str]], duration_seconds: float,
                         comment: str, author: str) -> str:
    """POST /api/v2/silences with exact-equality matchers, from now for `duration_seconds`;
    returns the new silence's id."""
    service = _service(options)
    if not matchers:
        raise MonitoringError("a silence needs at least one matcher (label = value)")
    bad = [n for n, _ in matchers if not n]
    if bad:
        raise MonitoringError("a silence matcher needs a label name")
    if not duration_seconds > 0:
        raise MonitoringError(f"a silence's duration must be positive (got {duration_seconds:g} s)")
    if not comment.strip():
        raise MonitoringError("a silence needs a comment (Alertmanager refuses one without): say why")
    if not author.strip():
        raise MonitoringError("a silence needs an author (the operator)")
    now = time.time()
    body = {
        "matchers": [{"name": n, "value": v, "isRegex": False, "isEqual": True} for n, v in matchers],
        "startsAt": _rfc3339(now),
        "endsAt": _rfc3339(now + duration_seconds),
        "createdBy": author,
        "comment": comment,
    }
    path = "/api/v2/silences"
    data = await service.request("POST", path, body=body)
    sid = data.get("silenceID") if isinstance(data, Mapping) else None
    if not isinstance(sid, str) or not sid:
        raise service.bad_answer(f"POST {path}", "no silenceID in it")
    return sid


async def expire_silence(options: AlertmanagerOptions, silence_id: str) -> None:
    """DELETE /api/v2/silence/{id}: the silence ends now (Alertmanager keeps it as expired)."""
    if not re.fullmatch(r"[A-Za-z0-9-]+", silence_id or ""):
        raise MonitoringError(f"{silence_id!r} is not a silence id")
    await _service(options).request("DELETE", f"/api/v2/silence/{silence_id}", want_json=False)
