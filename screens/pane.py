"""What every engine's pane shares, declared once: the skeleton (header, environment banner, the
member table, numbered tabs, a status line, the footer), the number keys that switch tabs, the
member whose details the tabs show, and a redraw whenever the pollers bring new health for the
cluster. An engine's pane declares what differs: its tables, its tabs and how it draws them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, TypeVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Header, Static, TabbedContent, TabPane

from dbops.actions import writes_allowed
from dbops.config import ClusterRef
from dbops.hub import Hub
from dbops.model import ClusterHealth, MemberHealth, Metric, Reachability

from .alerts import alerts_lines
from .render import SEVERITY_STYLE
from .tables import PaneTable
from .widgets import EnvBanner

T = TypeVar("T")
# Makes one widget of a pane: called once per pane opened, so every pane has widgets of its own.
Factory = Callable[[], Widget]


@dataclass(frozen=True)
class Tab:
    """One tab: `id` (what action_tab switches to), its title (shown after its number key) and
    what it holds. `key_label` names the number key's binding when it is not the title."""

    id: str
    title: str
    content: tuple[Factory, ...]
    key_label: str | None = None


def tab(id: str, title: str, *content: Factory, key_label: str | None = None) -> Tab:
    return Tab(id, title, content, key_label)


def static(id: str) -> Factory:
    return partial(Static, id=id)


def scrolled(id: str) -> Factory:
    """A text that may be longer than the tab, scrolled."""
    return lambda: VerticalScroll(Static(id=id))


HEALTH_TAB = tab("health", "Health", scrolled("health-text"))
NOTHING_TO_REPORT = Text("nothing to report", style="green")


def unreachable(mh: MemberHealth | None) -> bool:
    """The member answered no refresh (a pending first one is not a failure)."""
    return mh is not None and not mh.snapshot.reachable and mh.snapshot.reachability is not Reachability.PENDING


class ClusterPane(Screen[None]):
    # "<cluster> · <ENGINE>" is the pane's title.
    ENGINE: ClassVar[str] = ""
    # Above the tabs (the member table), then the tabs; number keys 1.. switch to them in order.
    TOP: ClassVar[tuple[Factory, ...]] = ()
    TABS: ClassVar[tuple[Tab, ...]] = ()
    INITIAL_TAB: ClassVar[str] = ""
    # The widget focused when the pane opens.
    FOCUS: ClassVar[str] = ""
    # Focus follows the tab switched to: a focused table left behind in a hidden tab would
    # switch it back. Only for panes whose every tab has a table or a scrolled text.
    FOCUS_FOLLOWS_TAB: ClassVar[bool] = False
    # The word for a member ("server"): the status line's "server n1", and the `m` key that
    # shows the next one. None: the pane shows no member's details, and has no `m`.
    MEMBER_WORD: ClassVar[str | None] = None
    # `a` shows every row of the pane's filtered table, or only the problems again: its label.
    SHOW_ALL: ClassVar[str | None] = None
    # Picking the member already shown starts its tables afresh too (cursor back on top).
    RESET_WHEN_REPICKED: ClassVar[bool] = False

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "back", "Back")]
    DEFAULT_CSS = """
    ClusterPane #tabs { height: 1fr; }
    ClusterPane #status { height: 1; background: $panel; }
    ClusterPane #pane-alerts { height: auto; max-height: 3; display: none; }
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Before Textual merges the bindings (in its own __init_subclass__), in the footer's order:
        # escape, m, the pane's own keys, r, a; then the tabs' number keys, hidden.
        if "TABS" in cls.__dict__:
            member = [Binding("m", "next_member", cls.MEMBER_WORD.capitalize())] if cls.MEMBER_WORD else []
            show_all = [Binding("a", "show_all", cls.SHOW_ALL)] if cls.SHOW_ALL else []
            # Keys 1..9, then 0 for a tenth tab (as the tab's label says).
            assert len(cls.TABS) <= 10, f"{cls.__name__}: more tabs than number keys"
            tabs = [Binding(str(n % 10), f"tab('{t.id}')", t.key_label or t.title, show=False) for n, t in enumerate(cls.TABS, 1)]
            cls.BINDINGS = [*member, *cls.__dict__.get("BINDINGS", []), Binding("r", "runbooks", "Runbooks"), *show_all, *tabs]
        super().__init_subclass__(**kwargs)

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key
        self.member: str | None = None  # whose details the tabs show
        self.member_pinned = False  # True once the operator picked one
        self.show_all = False  # False: the filtered table shows only its problems

    # -- the skeleton ----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        yield EnvBanner(id="banner")
        yield Static(id="pane-alerts")
        for make in self.TOP:
            yield make()
        with TabbedContent(id="tabs", initial=self.INITIAL_TAB or self.TABS[0].id):
            for n, t in enumerate(self.TABS, 1):
                with TabPane(f"{n % 10} {t.title}", id=t.id):
                    for make in t.content:
                        yield make()
        yield Static(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"{self.ref.name} · {self.engine_title()}"
        self.prepare()
        self.show_banner()
        self.show_alerts()
        self.redraw_now()
        self.query_one(self.FOCUS).focus()
        self.hub.watch(self.key)

    def on_screen_resume(self) -> None:
        self.hub.watch(self.key)

    def on_unmount(self) -> None:
        # Back on the overview (or on the pane below, whose resume says it is watched again).
        if self.hub.watched == self.key:
            self.hub.watch(None)

    def engine_title(self) -> str:
        return self.ENGINE

    def prepare(self) -> None:
        """What a pane sets up once mounted, before its first redraw. (Here, not in an on_mount of
        the pane's own: Textual runs the on_mount of every class of the screen, this one's too.)"""

    # -- reading -----------------------------------------------------------------------------

    @property
    def hub(self) -> Hub:
        return self.app.hub  # type: ignore[attr-defined]

    @property
    def ref(self) -> ClusterRef:
        return self.hub.ref(self.key)

    def unit_values(self, kind: type[T]) -> T | None:
        """The values shown for an engine polled as one unit (Redis, Kafka, Qdrant): one snapshot
        holds the whole refresh."""
        for snapshot in self.hub.snapshots(self.key).values():
            if isinstance(snapshot.shown, kind):
                return snapshot.shown
        return None

    # -- drawing -------------------------------------------------------------------------------

    def show_banner(self, paused: bool | None = None) -> None:
        ref = self.ref
        self.query_one(EnvBanner).show([(ref.environment, ref.production, writes_allowed(ref, self.app.allow_writes))],  # type: ignore[attr-defined]
                                       self.hub.paused if paused is None else paused, self.app.operator)  # type: ignore[attr-defined]

    def health_changed(self, changed: dict[str, ClusterHealth]) -> None:
        if self.key in changed:
            self.show_alerts()
            self.redraw(changed[self.key])

    def show_alerts(self) -> None:
        """The cluster's firing alerts from Alertmanager, above everything else; nothing when none
        fire (or no [alertmanager] is configured), one line per alert up to three."""
        state = self.hub.alerts(self.key)
        line = self.query_one("#pane-alerts", Static)
        text = alerts_lines(state, limit=3, now=self.app.clock())  # type: ignore[attr-defined]
        line.display = bool(text)
        line.update(text)

    def pause_changed(self, paused: bool) -> None:
        self.show_banner(paused)

    def redraw_now(self) -> None:
        self.redraw(self.hub.cluster_health(self.key))

    def redraw(self, health: ClusterHealth) -> None:
        raise NotImplementedError

    def sync_members(self, table: PaneTable, health: ClusterHealth, row: Callable[[MemberHealth, float], tuple[Any, ...]]) -> None:
        """The member table: a row per member, in the health's order."""
        now = self.app.clock()  # type: ignore[attr-defined]
        table.sync_ranked({m.name: row(m, now) for m in health.members}, {m.name: i for i, m in enumerate(health.members)})

    def show_health(self, text: Text) -> None:
        self.query_one("#health-text", Static).update(text or NOTHING_TO_REPORT)

    def show_status(self, text: Text, problem: Metric | None = None) -> None:
        """The status line: `text`, then one problem in its severity's colours."""
        if problem is not None:
            text.append(f"  {problem.message}", style=SEVERITY_STYLE[problem.severity])
        self.query_one("#status", Static).update(text)

    def member_status(self, mh: MemberHealth | None, gap: str = " ") -> Text:
        """The status line's start: the member shown and, when it does not answer, why."""
        out = Text()
        out.append(f"{self.MEMBER_WORD} {self.member} ", style="bold")
        if mh is not None and unreachable(mh):
            out.append(f"{gap}{mh.snapshot.reachability.value}: {mh.snapshot.error}", style="bold red")
        return out

    # -- the member shown ------------------------------------------------------------------------

    def default_member(self, health: ClusterHealth) -> str | None:
        """Whom the tabs show until the operator picks a member."""
        return health.members[0].name if health.members else None

    def shown_member(self, health: ClusterHealth) -> MemberHealth | None:
        if not self.member_pinned or self.member not in {m.name for m in health.members}:
            chosen = self.default_member(health)
            if chosen is not None and chosen != self.member:
                self.forget_member_rows()
                self.member = chosen
        return next((m for m in health.members if m.name == self.member), None)

    def forget_member_rows(self) -> None:
        """Another member: the tables of the one shown before share no row keys with its."""

    def member_names(self) -> list[str]:
        return [m.name for m in self.ref.cluster.members]

    def pick_member(self, name: str) -> None:
        if name != self.member or self.RESET_WHEN_REPICKED:
            self.forget_member_rows()
        self.member = name
        self.member_pinned = True
        self.redraw_now()

    # -- actions -------------------------------------------------------------------------------

    def action_next_member(self) -> None:
        names = self.member_names()
        if not names:
            return
        i = names.index(self.member) if self.member in names else -1
        self.pick_member(names[(i + 1) % len(names)])

    def action_show_all(self) -> None:
        self.show_all = not self.show_all
        self.draw_filtered()

    def draw_filtered(self) -> None:
        """Redraw the table `a` filters."""

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_tab(self, tab: str) -> None:
        tabs = self.query_one("#tabs", TabbedContent)
        tabs.active = tab
        if self.FOCUS_FOLLOWS_TAB:
            self.set_focus(tabs.get_pane(tab).query("DataTable, VerticalScroll").first())

    def action_runbooks(self) -> None:
        self.app.open_runbooks(self.key)  # type: ignore[attr-defined]
