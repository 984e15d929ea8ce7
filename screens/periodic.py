"""Screens that read their own data (the Kubernetes and AWS panes) rather than the poller's.

Their data is slow to change and only worth reading while someone looks at it, so the screen
reads it in a worker, off the UI thread, every interval while it is shown.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.widgets import Static
from textual.worker import Worker, WorkerState


class PeriodicReads:
    """A mixin for a Screen: one read at a time (a timer that fires while a read still runs does
    not start a second), `r` reads now or right after the running read, and a read that raises is
    shown on the screen, never raised. The screen provides what is read and how it is shown."""

    READ_GROUP: ClassVar[str]  # the workers' group
    READ_WHAT: ClassVar[str]  # for "cannot read <what>: <why>"
    MIN_INTERVAL: ClassVar[float]  # never more often than this, whatever the clusters' refresh
    SUMMARY_ID: ClassVar[str]  # the Static on top: what was read, or why nothing could be

    read_targets: list[Any] = []  # what is read, from begin_reads() on
    summary = ""  # the summary's text, for tests and screen readers
    _read_again = False  # `r` pressed while a read was running
    _read_timer: Any = None

    # -- provided by the screen ----------------------------------------------------------------

    def read_refs(self) -> list[Any]:
        return self.read_targets

    def start_read(self, refs: list[Any]) -> None:
        """Start the worker (group READ_GROUP) that reads `refs`."""
        raise NotImplementedError

    def read_done(self, result: Any) -> None:
        raise NotImplementedError

    def read_failed(self, message: Text) -> None:
        self.show_summary(message)

    # -- the cycle -----------------------------------------------------------------------------

    def show_summary(self, text: Text) -> None:
        self.summary = text.plain
        self.query_one(f"#{self.SUMMARY_ID}", Static).update(text)  # type: ignore[attr-defined]

    def begin_reads(self, targets: list[Any], none_configured: str) -> None:
        """Read `targets` now and every interval after; with none, say how to configure one."""
        self.read_targets = targets
        if not targets:
            self.show_summary(Text(none_configured, style="dim"))
            return
        self.read_now()

    def read_interval(self) -> float:
        return max([self.MIN_INTERVAL] + [r.refresh_interval for r in self.read_refs()])

    def reading(self) -> bool:
        return any(w.group == self.READ_GROUP and w.state in (WorkerState.PENDING, WorkerState.RUNNING)
                   for w in self.workers)  # type: ignore[attr-defined]

    def read_now(self) -> None:
        self._read_timer = None
        if not self.reading():
            self.start_read(list(self.read_refs()))

    def action_refresh(self) -> None:
        if not self.read_refs():
            return
        if self.reading():
            self._read_again = True
            return
        if self._read_timer is not None:
            self._read_timer.stop()
        self.read_now()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != self.READ_GROUP:
            return
        if event.state == WorkerState.SUCCESS:
            self.read_done(event.worker.result)
        elif event.state == WorkerState.ERROR:
            from dbops.secrets import scrub_text

            error = event.worker.error
            self.read_failed(Text(f"cannot read {self.READ_WHAT}: {scrub_text(str(error)) or type(error).__name__}",
                                  style="bold red"))
        else:
            return
        if self._read_again:
            self._read_again = False
            self.read_now()
        else:
            self._read_timer = self.set_timer(self.read_interval(), self.read_now)  # type: ignore[attr-defined]
