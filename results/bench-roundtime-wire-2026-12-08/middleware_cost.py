"""Ad-hoc: CPU per request of Starlette ``BaseHTTPMiddleware`` pass-through layers (none, 3, 8) and of 3
pure-ASGI ones, driving the app in-process (no sockets) with a 300-byte POST, 2000 requests each.

    .venv/bin/python results/bench-roundtime-wire-2026-12-08/middleware_cost.py
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

SCOPE = {"type": "http", "method": "POST", "path": "/x", "headers": [], "query_string": b"", "root_path": "",
         "scheme": "http", "server": ("x", 1), "client": ("c", 1), "asgi": {"version": "3.0"},
         "http_version": "1.1"}  # fmt: skip


async def ok(request: Request) -> Response:
    return Response(b"x" * 100 + await request.body(), media_type="application/protobuf")


class Pass(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        return await call_next(request)


class PureASGI:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


async def cpu_ms_per_request(app: Starlette, n: int) -> float:
    async def one() -> None:
        sent: list[dict[str, Any]] = []
        inbox = [{"type": "http.request", "body": b"y" * 300, "more_body": False}]

        async def receive() -> dict[str, Any]:
            return inbox.pop() if inbox else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(dict(SCOPE), receive, send)
        assert sent[0]["status"] == 200 and len(b"".join(m.get("body", b"") for m in sent[1:])) == 400

    start = time.process_time()
    for _ in range(n):
        await one()
    return (time.process_time() - start) / n * 1e3


def main() -> None:
    for label, layers, cls in (("none", 0, Pass), ("3 BaseHTTPMiddleware", 3, Pass),
                               ("8 BaseHTTPMiddleware", 8, Pass), ("3 pure ASGI", 3, PureASGI)):  # fmt: skip
        app = Starlette(routes=[Route("/x", ok, methods=["POST"])], middleware=[Middleware(cls)] * layers)
        asyncio.run(cpu_ms_per_request(app, 200))  # warm-up
        print(f"{label:22s} {asyncio.run(cpu_ms_per_request(app, 2000)):.3f} ms CPU per request")


if __name__ == "__main__":
    main()
