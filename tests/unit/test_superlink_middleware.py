"""The SuperLink's lightened HTTP middleware (deploy.superlink_middleware): Control-only layers gated,
error translation and node authentication as pure-ASGI twins that answer as Flower's layers do."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from deploy.superlink_middleware import ErrorTranslation, FleetAuthentication, gate_middleware, patch_middleware


def _app_with(stack: list[Middleware]) -> Starlette:
    async def ok(request: Request) -> Response:
        return Response("ok", headers={"x-seen": ",".join(getattr(request.state, "seen", []))})

    routes = [Route(path, ok, methods=["POST"]) for path in ("/v1/control/list-runs", "/v1/fleet/pull-messages")]
    return Starlette(routes=routes, middleware=stack)


def _marking(name: str) -> type[BaseHTTPMiddleware]:
    class Marks(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
            request.state.seen = [*getattr(request.state, "seen", []), name]
            response = await call_next(request)
            response.headers[f"x-{name}"] = "1"
            return response

    Marks.__name__ = name
    return Marks


def test_control_only_middleware_runs_for_control_calls_and_is_skipped_for_the_others() -> None:
    control, always, fleet_log = _marking("control"), _marking("always"), _marking("fleetlog")
    stack = gate_middleware([Middleware(always), Middleware(control), Middleware(fleet_log)], (control,), fleet_log)
    client = TestClient(_app_with(stack))
    on_control = client.post("/v1/control/list-runs")
    assert on_control.headers["x-seen"] == "always,control"  # in the original order
    assert on_control.headers.get("x-control") == "1" and on_control.headers.get("x-always") == "1"
    on_fleet = client.post("/v1/fleet/pull-messages")
    assert on_fleet.text == "ok" and on_fleet.headers["x-seen"] == "always"
    assert "x-control" not in on_fleet.headers and "x-fleetlog" not in on_fleet.headers
    client.app.state.fleet_event_log_plugin = object()  # type: ignore[attr-defined]  # a plugin: Fleet calls logged
    assert client.post("/v1/fleet/pull-messages").headers["x-seen"] == "always,fleetlog"


def test_the_superlinks_stack_keeps_its_order_with_control_layers_gated(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.superlink import main as superlink_main

    monkeypatch.setattr(superlink_main, "_get_middleware", superlink_main._get_middleware)  # restored after the test
    before = [entry.cls.__name__ for entry in superlink_main._get_middleware()]
    assert patch_middleware()
    after = [entry.cls.__name__ + (f"({entry.args[0].__name__})" if entry.args else "")
             for entry in superlink_main._get_middleware()]  # fmt: skip
    assert before == ["ControlSensitiveResponseMiddleware", "BaseHTTPMiddleware", "ControlAuthenticationMiddleware",
                      "ControlLicenseMiddleware", "ProtobufTranslationMiddleware", "ControlEventLogMiddleware",
                      "NodeAuthMiddleware", "FleetEventLogMiddleware"]  # fmt: skip
    assert after == ["OnlyFor(ControlSensitiveResponseMiddleware)", "ErrorTranslation(http_error_translator)",
                     "OnlyFor(ControlAuthenticationMiddleware)", "OnlyFor(ControlLicenseMiddleware)",
                     "ProtobufTranslationMiddleware", "OnlyFor(ControlEventLogMiddleware)",
                     "FleetAuthentication(authenticate_node)", "OnlyFor(FleetEventLogMiddleware)"]  # fmt: skip


def _failing_app(stack: list[Middleware]) -> TestClient:
    """Fleet and Control routes that succeed or raise what a SuperLink handler or middleware can."""
    from fastapi import HTTPException
    from flwr.supercore.error import ApiErrorCode, FlowerError

    async def answer(request: Request) -> Response:
        failure = request.query_params.get("fail")
        if failure == "flower":
            raise FlowerError(ApiErrorCode.RUN_ID_NOT_FOUND, "no such run")
        if failure == "http":
            raise HTTPException(status_code=401, detail="Invalid SuperNode authentication")
        if failure == "bug":
            raise RuntimeError("a bug")
        return Response(b"ok", media_type="application/protobuf")

    routes = [Route(path, answer, methods=["POST"]) for path in ("/v1/fleet/pull-object", "/v1/control/list-runs")]
    return TestClient(Starlette(routes=routes, middleware=stack), raise_server_exceptions=False)


def test_the_pure_error_translation_answers_every_failure_as_flowers_layer_does() -> None:
    from flwr.supercore.error.http import http_error_translator

    flowers = _failing_app([Middleware(BaseHTTPMiddleware, dispatch=http_error_translator)])
    twin = _failing_app([Middleware(ErrorTranslation, http_error_translator)])
    for path in ("/v1/fleet/pull-object", "/v1/control/list-runs"):
        for failure in ("", "flower", "http", "bug"):
            a, b = flowers.post(f"{path}?fail={failure}"), twin.post(f"{path}?fail={failure}")
            assert (b.status_code, b.content, b.headers.get("content-type")) == (
                a.status_code, a.content, a.headers.get("content-type")), (path, failure)  # fmt: skip
    assert twin.post("/v1/fleet/pull-object?fail=flower").status_code == 404  # not a 500: translated


def test_fleet_calls_are_authenticated_before_they_run_and_others_are_not() -> None:
    from flwr.proto.fleet_pb2 import PullMessagesRequest  # pylint: disable=E0611
    from flwr.supercore.error.http import http_error_translator

    checked: list[str] = []

    def authenticate(request: Request) -> None:  # Flower's raises HTTPException 401 for a bad signature
        from fastapi import HTTPException

        checked.append(request.url.path)
        if request.headers.get("x-sig") != "good":
            raise HTTPException(status_code=401, detail="Invalid SuperNode authentication")

    class Parsed(BaseHTTPMiddleware):  # what Flower's ProtobufTranslationMiddleware leaves in the request state
        async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
            request.state.protobuf_request = PullMessagesRequest()
            return await call_next(request)

    client = _failing_app([Middleware(ErrorTranslation, http_error_translator), Middleware(Parsed),
                           Middleware(FleetAuthentication, authenticate)])  # fmt: skip
    assert client.post("/v1/fleet/pull-object", headers={"x-sig": "good"}).text == "ok"
    refused = client.post("/v1/fleet/pull-object", headers={"x-sig": "forged"})
    assert refused.status_code == 401 and "Invalid SuperNode authentication" in refused.text
    assert client.post("/v1/control/list-runs").text == "ok"  # not a Fleet call: not a node's to sign
    assert checked == ["/v1/fleet/pull-object", "/v1/fleet/pull-object"]
