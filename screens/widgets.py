"""Widgets shared by several screens."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


class EnvBanner(Static):
    """The environment(s) on screen, production in red, plus mode and pause state.

    Always the first line under the header: an operator must never wonder which environment a
    key press will touch.
    """

    DEFAULT_CSS = """
    EnvBanner { height: 1; background: $panel; }
    """

    def show(self, envs: list[tuple[str, bool, bool]], paused: bool, operator: str) -> None:
        """envs: (name, is_production, writes_allowed)."""
        text = Text()
        for name, production, writable in envs:
            style = "bold white on red" if production else "bold black on green"
            text.append(f" {name.upper() if production else name} ", style=style)
            text.append(" writes enabled " if writable else " read-only ", style="bold yellow" if writable else "dim")
            text.append(" ")
        if paused:
            text.append(" PAUSED ", style="bold black on yellow")
            text.append(" ")
        text.append(f"user {operator}", style="italic")
        self.update(text)
