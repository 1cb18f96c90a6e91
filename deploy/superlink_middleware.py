"""The SuperLink's HTTP middleware, lightened for SuperNode and ServerApp calls (:func:`patch_middleware`).

Flower 1.42 passes every SuperLink request through eight Starlette ``BaseHTTPMiddleware`` layers,
each a task group and a response stream of its own (~0.17 ms of CPU per layer per request on the
2-core test machine: ``results/bench-roundtime-wire-2026-12-08/middleware_cost.py``), and the
SuperLink is the busiest process of a secure round, almost all of it SuperNode and ServerApp calls.

* Four layers act only on ``/v1/control/`` paths (the ``flwr`` CLI's calls) and one only when a Fleet
  event-log plugin is configured: they now run only for the requests they act on (:class:`OnlyFor`).
* Error translation and SuperNode authentication run as pure-ASGI twins that call Flower's own
  functions (:class:`ErrorTranslation`, :class:`FleetAuthentication`); Control calls, some of which
  stream, keep Flower's error-translation layer.

The stack's order is kept, and Control calls see the same layers as before. Used by
:mod:`deploy.superlink_entry`; touches only ``flwr==1.42.0``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message as ProtobufMessage
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request

from common.flower_http import flwr_is_pinned

CONTROL_PREFIX = "/v1/control/"
FLEET_PREFIX = "/v1/fleet/"


def _path_under(scope: dict[str, Any], prefix: str) -> bool:
    return str(scope.get("path", "")).startswith(prefix)


def _control_call(scope: dict[str, Any]) -> bool:
    return _path_under(scope, CONTROL_PREFIX)


def _fleet_call_logged(scope: dict[str, Any]) -> bool:
    app = scope.get("app")
    return getattr(getattr(app, "state", None), "fleet_event_log_plugin", None) is not None


class OnlyFor:
    """ASGI middleware: ``middleware`` (built around ``app``) for the HTTP requests ``applies(scope)``
    selects; every other request goes straight to ``app``, as the middleware would have passed it."""

    def __init__(self, app: Any, middleware: type, applies: Callable[[dict[str, Any]], bool], *args: Any,
                 **kwargs: Any) -> None:  # fmt: skip
        self.app, self.applies = app, applies
        self.wrapped = middleware(app, *args, **kwargs)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not self.applies(scope):
            await self.app(scope, receive, send)
        else:
            await self.wrapped(scope, receive, send)


class ErrorTranslation:
    """Pure-ASGI twin of Flower's ``http_error_translator`` layer (a ``BaseHTTPMiddleware``) for Fleet and
    ServerApp calls: an exception raised before the response started becomes the response Flower's own
    ``translate`` makes of it (it is called with a ``call_next`` that re-raises). Control calls, some of
    which stream, keep Flower's layer."""

    def __init__(self, app: Any, translate: Callable[..., Any]) -> None:
        self.app, self.translate = app, translate
        self.control = BaseHTTPMiddleware(app, dispatch=translate)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or _control_call(scope):
            await self.control(scope, receive, send)
            return
        started = False

        async def send_tracked(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as exc:
            if started:
                raise
            caught = exc

            async def reraise(request: Any) -> Any:
                raise caught

            response = await self.translate(Request(scope, receive), reraise)
            await response(scope, receive, send)


class FleetAuthentication:
    """Pure-ASGI twin of Flower 1.42's ``NodeAuthMiddleware``: the same ``authenticate`` (a SuperNode's
    signed timestamp and key), on the same Fleet calls, in the same thread pool, before the call runs."""

    def __init__(self, app: Any, authenticate: Callable[[Any], None]) -> None:
        self.app, self.authenticate = app, authenticate

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and _path_under(scope, FLEET_PREFIX):
            request = Request(scope, receive)  # its state is the scope's: the parsed request is there
            if isinstance(getattr(request.state, "protobuf_request", None), ProtobufMessage):
                await run_in_threadpool(self.authenticate, request)
        await self.app(scope, receive, send)


def gate_middleware(stack: list[Middleware], control_only: tuple[type, ...], fleet_log: type) -> list[Middleware]:
    """``stack`` (Starlette ``Middleware`` entries, outermost first) with each ``control_only`` class run
    for Control calls only and ``fleet_log`` only while a Fleet event-log plugin is set; order kept."""
    gated = []
    for entry in stack:
        if entry.cls in control_only:
            entry = Middleware(OnlyFor, entry.cls, _control_call, *entry.args, **entry.kwargs)
        elif entry.cls is fleet_log:
            entry = Middleware(OnlyFor, entry.cls, _fleet_call_logged, *entry.args, **entry.kwargs)
        gated.append(entry)
    return gated


def plain_twins(stack: list[Middleware], translate: Callable[..., Any], node_auth: type,
                authenticate: Callable[[Any], None]) -> list[Middleware]:  # fmt: skip
    """``stack`` with Flower's error-translation layer (the ``BaseHTTPMiddleware`` running ``translate``)
    and its ``node_auth`` layer replaced by their pure-ASGI twins, in place."""
    out = []
    for entry in stack:
        if entry.cls is BaseHTTPMiddleware and entry.kwargs.get("dispatch") is translate and not entry.args:
            entry = Middleware(ErrorTranslation, translate)
        elif entry.cls is node_auth:
            entry = Middleware(FleetAuthentication, authenticate)
        out.append(entry)
    return out


def patch_middleware() -> bool:
    """Lighten the SuperLink app's middleware for Fleet and ServerApp calls (gates, then twins); False on
    another flwr (or if a route the Control layers act on lies outside ``/v1/control/``, which the gate
    assumes)."""
    if not flwr_is_pinned("the SuperLink's middleware"):
        return False
    from flwr.supercore.error.http import http_error_translator
    from flwr.superlink import main as superlink_main
    from flwr.superlink.routers.control import middlewares as control
    from flwr.superlink.routers.fleet import node_auth
    from flwr.superlink.routers.fleet.middlewares import FleetEventLogMiddleware

    routes = control.CONTROL_AUTH_ROUTE_KEYS | control.CONTROL_SENSITIVE_ROUTE_KEYS
    if not all(path.startswith(CONTROL_PREFIX) for _, path in routes):
        return False
    control_only = (control.ControlSensitiveResponseMiddleware, control.ControlAuthenticationMiddleware,
                    control.ControlLicenseMiddleware, control.ControlEventLogMiddleware)  # fmt: skip
    build = superlink_main._get_middleware

    @functools.wraps(build)
    def lightened() -> list[Middleware]:
        stack = gate_middleware(build(), control_only, FleetEventLogMiddleware)
        return plain_twins(stack, http_error_translator, node_auth.NodeAuthMiddleware, node_auth.authenticate_node)

    superlink_main._get_middleware = lightened
    return True
