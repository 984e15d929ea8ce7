"""Widgets shared by several screens."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.screen import Screen
from textual.widgets import Input, Static


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


# A key that opens a prompt (`/` to filter, `:` for a command) is bound with priority=True and
# the prompt takes the focus with Screen.set_focus, at once: the keys typed after it that were
# already read (typed fast, or arriving in one read over a slow SSH link) then go into the prompt
# instead of to the table's own keys (a pane's `k` terminates a backend, the overview's `s` sorts).
# Widget.focus() would move the focus only after them.


def typed_into_prompt(screen: Screen[Any], prompt: Input, character: str) -> bool:
    """Whether the prompt-opening key was typed in the prompt itself (it has the focus): then it
    is inserted there as text, after the characters typed before it."""
    if screen.focused is not prompt:
        return False
    prompt.call_later(prompt.insert_text_at_cursor, character)
    return True
