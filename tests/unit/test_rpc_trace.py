"""The RPC trace behind ``python -m deploy.bench --trace`` (common.rpc_trace): what it records and how it sums."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from flwr.proto.heartbeat_pb2 import SendNodeHeartbeatRequest, SendNodeHeartbeatResponse
from flwr.supercore.protobuf.client import ProtobufClient

from common import rpc_trace
from common.rpc_trace import format_table, read_trace, rpc_table, stop_tracing, trace_rpcs


def _call(component: str, rpc: str, t: float, s: float) -> dict[str, object]:
    return {"t": t, "s": s, "rpc": rpc, "bytes": 10, "component": component}


def test_table_sums_per_component_and_rpc_from_the_given_start_largest_total_first() -> None:
    calls = [
        _call("supernode", "PullObject", 1.0, 0.5),  # before `since`: left out
        _call("supernode", "PullObject", 10.0, 0.25),
        _call("supernode", "PullObject", 11.0, 0.75),
        _call("serverapp", "PullObject", 12.0, 0.125),
        _call("supernode", "PushObject", 13.0, 2.0),
    ]
    rows = rpc_table(calls, since=5.0)
    assert rows == [
        {"component": "supernode", "rpc": "PushObject", "calls": 1, "mean_ms": 2000.0, "total_s": 2.0},
        {"component": "supernode", "rpc": "PullObject", "calls": 2, "mean_ms": 500.0, "total_s": 1.0},
        {"component": "serverapp", "rpc": "PullObject", "calls": 1, "mean_ms": 125.0, "total_s": 0.125},
    ]
    text = format_table(rows)
    assert text.splitlines()[2].split() == ["supernode", "PullObject", "2", "500.0", "1.00"]


def test_read_trace_merges_processes_in_time_order_and_skips_a_torn_line(tmp_path: Path) -> None:
    (tmp_path / "rpc-worker-2.jsonl").write_text(json.dumps(_call("worker", "AcquireTask", 2.0, 0.1)) + "\n")
    torn = json.dumps(_call("supernode", "PullObject", 1.0, 0.1)) + "\n" + '{"t": 3.0, "s"'
    (tmp_path / "rpc-supernode-1.jsonl").write_text(torn)
    assert [(c["component"], c["t"]) for c in read_trace(tmp_path)] == [("supernode", 1.0), ("worker", 2.0)]


@pytest.fixture
def traced(tmp_path: Path):  # noqa: ANN201
    assert trace_rpcs("supernode", tmp_path)
    yield tmp_path
    stop_tracing()


def test_every_flower_call_of_the_process_is_timed_once(traced: Path) -> None:
    # Prepare: Flower's own protobuf client, answering through an in-memory transport after 20 ms
    def answer(request: httpx.Request) -> httpx.Response:
        import time

        time.sleep(0.02)
        return httpx.Response(200, content=SendNodeHeartbeatResponse(success=True).SerializeToString())

    client = ProtobufClient("http://superlink.test")
    client._client = httpx.Client(transport=httpx.MockTransport(answer))
    request = SendNodeHeartbeatRequest(heartbeat_interval=10.0)
    # Execute
    rpc = "/flwr.proto.Fleet/SendNodeHeartbeat"
    reply = client._unary_unary(path=rpc, rpc_method=rpc, request=request, response_type=SendNodeHeartbeatResponse)
    # Assert: the call still works, and one line says which RPC, how long, how many bytes, which process
    assert reply.success
    [call] = read_trace(traced)
    assert call["component"] == "supernode" and call["rpc"] == "SendNodeHeartbeat"
    assert call["bytes"] == request.ByteSize() > 0
    assert 0.02 <= call["s"] < 5.0
    assert trace_rpcs("worker", traced)  # a second install in the same process changes nothing
    assert len(list(traced.glob("rpc-*.jsonl"))) == 1


def test_nothing_is_patched_without_a_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(rpc_trace.TRACE_ENV, raising=False)
    original = ProtobufClient._unary_unary
    assert not trace_rpcs("supernode")
    assert ProtobufClient._unary_unary is original
