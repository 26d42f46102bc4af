"""The control socket's line format, with no I/O: one JSON object per line, UTF-8."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_LINE", "ControlError", "decode_line", "encode_line", "error_reply", "ok_reply"]

MAX_LINE = 1 << 20  # a request line longer than this is refused


class ControlError(Exception):
    """A failure to report to the client as ``{"error": {"code", "message"}}``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def encode_line(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def decode_line(line: bytes) -> dict[str, Any]:
    """Parse one line into a JSON object, or raise ControlError("bad_request")."""
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlError("bad_request", f"not a JSON line: {exc}") from None
    if not isinstance(obj, dict):
        raise ControlError("bad_request", "expected a JSON object")
    return obj


def ok_reply(req_id: Any, result: Any) -> dict[str, Any]:
    return {"id": req_id, "result": result}


def error_reply(req_id: Any, code: str, message: str) -> dict[str, Any]:
    return {"id": req_id, "error": {"code": code, "message": message}}
