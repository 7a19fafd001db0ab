"""Server-Sent Events as both event routes send them (`/jobs/{id}/events`, `/train/{id}/events`)."""

from __future__ import annotations

import json
from typing import Any, Iterator

from fastapi.responses import StreamingResponse

KEEPALIVE_SECONDS = 10.0  # an SSE comment this often keeps proxies from closing a quiet stream
KEEPALIVE = ": keep-alive\n\n"


def sse_message(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n"


def sse_response(messages: Iterator[str]) -> StreamingResponse:
    """A stream of `sse_message`s and `KEEPALIVE`s, never cached or buffered by a proxy."""
    return StreamingResponse(messages, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
