"""A TLS proxy between one SuperNode and the SuperLink that answers chosen Fleet calls with HTTP 500.

Under load the SuperLink's SQLite state answers some calls with HTTP 500 ("database is
locked"); that cannot be provoked on demand, so tests put this proxy in the SuperNode's
path instead. It presents the federation's own server certificate (which names 127.0.0.1),
forwards every request byte for byte (node-authentication headers included) and fails the
first ``faults[path]`` calls to each Fleet path. Everything else is the real SuperLink.
"""

from __future__ import annotations

import ssl
import threading
from collections import Counter
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from deploy.certs import TlsFiles

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length", "content-encoding"}


class FaultProxy:
    """``with FaultProxy(fed.address, fed.tls, {"/v1/fleet/push-object": 2}) as proxy: ...``"""

    def __init__(self, upstream: str, tls: TlsFiles, faults: Mapping[str, int]) -> None:
        self.remaining = Counter(faults)
        self.injected: Counter[str] = Counter()
        self.forwarded: Counter[str] = Counter()
        self._lock = threading.Lock()
        trust = ssl.create_default_context(cafile=str(tls.ca_cert))
        self._client = httpx.Client(base_url=f"https://{upstream}", verify=trust, timeout=120.0)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.proxy = self  # type: ignore[attr-defined]
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(tls.server_cert), str(tls.server_key))
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def take_fault(self, path: str) -> bool:
        """True (answer 500) while this path still has faults to inject."""
        with self._lock:
            if self.remaining[path] > 0:
                self.remaining[path] -= 1
                self.injected[path] += 1
                return True
            self.forwarded[path] += 1
            return False

    def forward(self, path: str, body: bytes, headers: Mapping[str, str]) -> httpx.Response:
        kept = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
        return self._client.post(path, content=body, headers=kept)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SuperNode's httpx client expects

    def do_POST(self) -> None:
        proxy: FaultProxy = self.server.proxy  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if proxy.take_fault(self.path):
            self._reply(500, b'{"detail": "injected by FaultProxy"}', {"content-type": "application/json"})
            return
        try:
            upstream = proxy.forward(self.path, body, self.headers)
        except httpx.HTTPError as exc:  # the SuperLink is gone: say so the way a gateway would
            self._reply(502, str(exc).encode(), {"content-type": "text/plain"})
            return
        headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        self._reply(upstream.status_code, upstream.content, headers)

    def _reply(self, status: int, content: bytes, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's signature
        pass
