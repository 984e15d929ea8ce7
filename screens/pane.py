"""What every engine's pane shares: the cluster it shows, the environment banner, and a redraw
whenever the pollers bring new health for that cluster."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from textual.screen import Screen
from textual.widgets import DataTable

from dbops.actions import writes_allowed
from dbops.config import ClusterRef
from dbops.model import ClusterHealth

from .widgets import EnvBanner

T = TypeVar("T")


class ClusterPane(Screen[None]):
    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key

    @property
    def ref(self) -> ClusterRef:
        return self.app.hub.ref(self.key)

    def show_banner(self, paused: bool | None = None) -> None:
        ref = self.ref
        self.query_one(EnvBanner).show([(ref.environment, ref.production, writes_allowed(ref, self.app.allow_writes))],
                                       self.app.hub.paused if paused is None else paused, self.app.operator)

    def add_columns(self, tables: Iterable[tuple[str, Iterable[tuple[str, str]]]]) -> None:
        """(table selector, ((column key, label), ...)) for each table of the pane."""
        for selector, columns in tables:
            table = self.query_one(selector, DataTable)
            for key, label in columns:
                table.add_column(label, key=key)

    def unit_values(self, kind: type[T]) -> T | None:
        """The values shown for an engine polled as one unit (Redis, Kafka, Qdrant): one snapshot
        holds the whole refresh."""
        for snapshot in self.app.hub.snapshots(self.key).values():
            if isinstance(snapshot.shown, kind):
                return snapshot.shown
        return None

    def health_changed(self, changed: dict[str, ClusterHealth]) -> None:
        if self.key in changed:
            self.redraw(changed[self.key])

    def pause_changed(self, paused: bool) -> None:
        self.show_banner(paused)

    def redraw(self, health: ClusterHealth) -> None:
        raise NotImplementedError
