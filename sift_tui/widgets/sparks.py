"""A labelled sparkline: what it shows, the current value and the peak of the window."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, Sparkline

from sift_tui.format import human_duration, human_rate

__all__ = ["RateSpark"]


class RateSpark(Vertical):
    DEFAULT_CSS = """
    RateSpark { height: auto; }
    RateSpark > Sparkline { height: 3; }
    """

    def __init__(self, title: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.title = title

    def compose(self) -> ComposeResult:
        yield Label(self._caption([]), classes="spark-caption")
        yield Sparkline([], summary_function=max)

    def _caption(self, samples: Sequence[float]) -> str:
        now = samples[-1] if samples else 0.0
        peak = max(samples, default=0.0)
        window = human_duration(len(samples)) if samples else "-"
        return f"{self.title}: [b]{human_rate(now)}[/b]  (peak {human_rate(peak)}, last {window})"

    def show(self, samples: Sequence[float]) -> None:
        self.query_one(Label).update(self._caption(samples))
        self.query_one(Sparkline).data = list(samples)
