"""What both daemons share around the control socket: the event bus, the rate meters, the socket
server with the common methods (``status``, ``config.get``, ``config.set``), warnings and errors
turned into ``log`` events, and the once-a-second ``rates`` event."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sift.config import MasterConfig, PeerConfig
from sift.control.config_edit import ConfigChange, describe_config, set_config_value
from sift.control.server import ControlServer, Handler
from sift.control.wire import ControlError
from sift.events import BusLogHandler, EventBus
from sift.metrics import RateTable

__all__ = ["RATES_INTERVAL", "ControlService"]

RATES_INTERVAL = 1.0  # seconds between `rates` events while anything moves

log = logging.getLogger("sift.control")


def apply_log_level(level: str) -> None:
    logging.getLogger().setLevel(getattr(logging, level.upper()))


class ControlService:
    def __init__(
        self,
        role: str,
        config: MasterConfig | PeerConfig,
        *,
        status: Callable[..., dict[str, Any]],
        rates_event: Callable[[RateTable], dict[str, Any]],
        apply_change: Callable[[ConfigChange], None],
        handlers: dict[str, Handler] | None = None,
    ) -> None:
        self.role = role
        self.config_path: Path | None = config.config_path
        self.psk_file_override = config.psk_file_override
        self.socket_path = config.control_socket
        self.bus = EventBus()
        self.rates = RateTable()
        self._status = status
        self._rates_event = rates_event
        self._apply_change = apply_change
        self.server = ControlServer(
            self.socket_path,
            self.bus,
            {
                "status": self._handle_status,
                "config.get": self._handle_config_get,
                "config.set": self._handle_config_set,
                **(handlers or {}),
            },
            group=config.control_group,
        )
        self._log_handler: BusLogHandler | None = None

    async def start(self) -> None:
        await self.server.start()
        self._log_handler = BusLogHandler(self.bus, asyncio.get_running_loop())
        logging.getLogger("sift").addHandler(self._log_handler)

    async def close(self) -> None:
        if self._log_handler is not None:
            logging.getLogger("sift").removeHandler(self._log_handler)
        self.bus.close()
        await self.server.close()

    def status_fields(self) -> dict[str, Any]:
        """What every status snapshot carries about the control side."""
        return {
            "events_last_id": self.bus.last_id,
            "config_path": str(self.config_path) if self.config_path else None,
            "control_socket": str(self.socket_path),
        }

    async def run_rates(self) -> None:
        """Tick the meters every second and publish while anything moves (and once when it
        stops, so consoles drop to zero)."""
        was_idle = True
        while True:
            await asyncio.sleep(RATES_INTERVAL)
            self.rates.tick()
            idle = self.rates.idle
            if not (idle and was_idle):
                self.bus.publish("rates", **self._rates_event(self.rates))
            was_idle = idle

    # -- handlers -----------------------------------------------------------------------------

    async def _handle_status(self, params: dict[str, Any]) -> dict[str, Any]:
        # {"file_list": false} spares a console's periodic refresh the master's whole file list.
        return self._status(file_list=params.get("file_list", True) is not False)

    async def _handle_config_get(self, _params: dict[str, Any]) -> dict[str, Any]:
        return describe_config(self.role, self.config_path)

    async def _handle_config_set(self, params: dict[str, Any]) -> dict[str, Any]:
        key = params.get("key")
        if not isinstance(key, str):
            raise ControlError("bad_request", 'config.set needs a "key"')
        change = await asyncio.to_thread(
            functools.partial(
                set_config_value,
                self.role,
                self.config_path,
                key,
                params.get("value"),
                psk_file=self.psk_file_override,
            )
        )
        if change.live:
            if key == "log_level":
                apply_log_level(change.config.log_level)
            self._apply_change(change)
        applied = "live" if change.live else "restart"
        log.info("config: %s set to %r (%s)", key, change.value, applied)
        self.bus.publish("config.changed", key=key, value=change.value, applied=applied)
        return {"key": key, "value": change.value, "applied": applied}
