"""`V`: runs waiting for a second operator's approval (the two-person rule), and approving one.

The list is the coordination database's ([locks.postgres]) waiting requests that this operator
may approve (not their own), read in a worker every few seconds while the screen is shown. The
highlighted run's plan (exactly the text its runner hashed) shows below; `a` shows it again in a
confirmation and approves it as this console's operator, with the same audit records as
`dbops runbook approve`. The database refuses a self-approval and a plan that changed since it
was read, so a stale row cannot approve the wrong thing.
"""

from __future__ import annotations

import asyncio
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Static
from textual.worker import Worker, WorkerState

from dbops.model import human_seconds
from dbops.runbook.approvals import ApprovalStore, Request, waiting_for

from .periodic import PeriodicReads
from .tables import PaneTable, cursor_key


class ApprovalTable(PaneTable):
    DEFAULT_ID = "approvals-table"
    DEFAULT_CSS = """
    ApprovalTable { height: auto; max-height: 10; }
    """
    # The plan's hash is in full under the table (the columns fill 80 at this width already).
    COLUMNS = (("run", "Run"), ("runbook", "Runbook"), ("cluster", "Cluster"), ("by", "Requested by"), ("age", "Age"))


_APPROVE_GROUP = "approvals-approve"


def read_waiting(store: ApprovalStore) -> list[Request]:
    """Blocking (a worker thread): the requests this operator may approve."""
    from dbops.runbook.approvals import current_operator

    return waiting_for(asyncio.run(store.pending()), current_operator())


class ApproveModal(ModalScreen[bool]):
    """The plan once more, and who approves it; `y` approves, `n`/escape does not."""

    BINDINGS = [Binding("y", "answer(True)", "Approve"), Binding("n", "answer(False)", "Cancel"),
                Binding("escape", "answer(False)", "Cancel", show=False)]

    DEFAULT_CSS = """
    ApproveModal { align: center middle; }
    ApproveModal > #approve-box { width: 90%; height: 90%; border: thick $warning; background: $surface; padding: 0 1; }
    ApproveModal #approve-plan { height: 1fr; }
    """

    def __init__(self, req: Request, me: str) -> None:
        super().__init__()
        self.req = req
        self.me = me

    def compose(self) -> ComposeResult:
        req = self.req
        head = Text()
        head.append(f"Approve run {req.run_id}: {req.runbook} on {req.environment}/{req.cluster}\n", style="bold")
        head.append(f"requested by {req.requester.describe()}\nplan {req.plan_hash}\n", style="")
        head.append(f"you approve as {self.me}; y approves, n or escape does not", style="bold yellow")
        with VerticalScroll(id="approve-box"):
            yield Static(head, markup=False)
            yield Static(Text(req.plan_text), id="approve-plan", markup=False)
        yield Footer()

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class ApprovalsScreen(PeriodicReads, Screen[None]):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("q", "back", "Back", show=False),
        Binding("r", "refresh", "Re-read now"),
        Binding("a", "approve", "Approve"),
    ]

    DEFAULT_CSS = """
    ApprovalsScreen #approvals-title { height: auto; padding: 0 1; }
    ApprovalsScreen #approvals-plan { height: 1fr; border-top: solid $primary; padding: 0 1; }
    """

    READ_GROUP = "approvals-read"
    READ_WHAT = "the approval requests"
    MIN_INTERVAL = 5.0
    SUMMARY_ID = "approvals-title"

    def __init__(self) -> None:
        super().__init__()
        self.requests: dict[str, Request] = {}

    def compose(self) -> ComposeResult:
        yield Static("", id="approvals-title", markup=False)
        yield ApprovalTable()
        with VerticalScroll(id="approvals-plan"):
            yield Static("", id="approvals-plan-text", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(ApprovalTable).focus()
        if self.app.config.locks.postgres is None:
            self.show_summary(Text("approvals live in the coordination database every console shares, and this "
                                   "config has no [locks.postgres]", style="bold yellow"))
            return
        self.show_summary(Text("reading the waiting approvals …", style="dim"))
        self.read_now()

    # -- reads ---------------------------------------------------------------------------------

    def read_refs(self) -> list[Any]:
        coord = self.app.config.locks.postgres
        return [coord] if coord is not None else []

    def read_interval(self) -> float:
        return self.MIN_INTERVAL

    def start_read(self, refs: list[Any]) -> None:
        store = ApprovalStore(refs[0])
        self.run_worker(lambda: read_waiting(store), name="approvals-read", group=self.READ_GROUP,
                        description="read the waiting approvals", thread=True, exit_on_error=False)

    def read_done(self, result: Any) -> None:
        self.requests = {r.run_id: r for r in result}
        rows = {
            r.run_id: (r.run_id, r.runbook, f"{r.environment}/{r.cluster}", f"{r.requester.name} (uid {r.requester.uid})",
                       human_seconds(r.age_seconds))
            for r in result
        }
        self.query_one(ApprovalTable).sync(rows)
        if result:
            self.show_summary(Text(f"{len(result)} run(s) wait for a second operator: a shows the plan and approves it",
                                   style="bold yellow"))
        else:
            self.show_summary(Text("no run waits for your approval", style="green"))
        self._show_plan()

    def on_data_table_row_highlighted(self, _: DataTable.RowHighlighted) -> None:
        self._show_plan()

    def _selected(self) -> Request | None:
        key = cursor_key(self.query_one(ApprovalTable))
        return self.requests.get(key) if key is not None else None

    def _show_plan(self) -> None:
        req = self._selected()
        text = Text()
        if req is not None:
            text.append(f"run {req.run_id} · plan {req.plan_hash}\n", style="bold")
            text.append(req.plan_text)
        self.query_one("#approvals-plan-text", Static).update(text)

    # -- approving -----------------------------------------------------------------------------

    def action_approve(self) -> None:
        from dbops.runbook.approvals import current_operator

        req = self._selected()
        if req is None:
            self.notify("no run waits for an approval", severity="warning")
            return
        me = current_operator()

        def answered(yes: bool | None) -> None:
            if yes:
                self._approve(req)
            else:
                self._declined(req)

        self.app.push_screen(ApproveModal(req, me.describe()), callback=answered)

    def _declined(self, req: Request) -> None:
        from dbops.runbook.approvals import audit_declined, current_operator

        audit_declined(self.app.audit, req, current_operator())
        self.notify(f"run {req.run_id} not approved", severity="information")

    def _approve(self, req: Request) -> None:
        from dbops.runbook.approvals import approve_audited, current_operator

        store = ApprovalStore(self.app.config.locks.postgres)
        audit = self.app.audit
        self.run_worker(lambda: asyncio.run(approve_audited(store, audit, req, current_operator())),
                        name="approvals-approve", group=_APPROVE_GROUP, thread=True, exit_on_error=False)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group == _APPROVE_GROUP:
            if event.state == WorkerState.SUCCESS:
                done: Request = event.worker.result
                until = f"{done.expires_at:%H:%M:%S} UTC" if done.expires_at else "?"
                self.notify(f"approved run {done.run_id} (plan {done.plan_hash[:12]}); valid until {until}", timeout=10)
                self.action_refresh()
            elif event.state == WorkerState.ERROR:
                from dbops.secrets import scrub_text

                # ApprovalRefused / ApprovalError: already one line and audited.
                self.notify(f"not approved: {scrub_text(str(event.worker.error))}", severity="error", timeout=15)
                self.action_refresh()
            return
        super().on_worker_state_changed(event)

    def action_back(self) -> None:
        self.app.pop_screen()
