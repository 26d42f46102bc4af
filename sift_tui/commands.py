"""Command palette provider: jump straight to editing one of the daemon's config keys."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from textual.command import DiscoveryHit, Hit, Hits, Provider

if TYPE_CHECKING:
    from sift_tui.app import SiftConsole

__all__ = ["ConfigKeyCommands"]


class ConfigKeyCommands(Provider):
    def _keys(self) -> list[tuple[str, str]]:
        app: SiftConsole = self.app  # type: ignore[assignment]
        view = app.config_view()
        if view is None:
            return []
        return [(name, str(key.get("description", ""))) for name, key in view.keys.items()]

    async def discover(self) -> Hits:
        app: SiftConsole = self.app  # type: ignore[assignment]
        for name, help_text in self._keys():
            edit = partial(app.edit_config_key, name)
            yield DiscoveryHit(f"Edit config: {name}", edit, help_text)

    async def search(self, query: str) -> Hits:
        app: SiftConsole = self.app  # type: ignore[assignment]
        matcher = self.matcher(query)
        for name, help_text in self._keys():
            title = f"Edit config: {name}"
            score = matcher.match(title)
            if score > 0:
                edit = partial(app.edit_config_key, name)
                yield Hit(score, matcher.highlight(title), edit, help=help_text)
