"""Can this process listen there? Asked before anything slow starts (a model load, a Flower process).

``crossfed serve``, ``crossfed deploy superlink`` and ``deploy supernode --runtime-port`` all end
in a server that binds an address; uvicorn or Flower would load everything first and then exit
with their own log line. Binding a throwaway socket the way they bind (``SO_REUSEADDR``, so a port
left in TIME_WAIT by a previous run is not refused) answers in microseconds instead.
"""

from __future__ import annotations

import socket

from common.config import ConfigError


def check_listen(host: str, port: int, flags: str = "--host / --port") -> None:
    """ConfigError naming ``host:port``, the reason and the ``flags`` to change, unless it can be bound now."""
    if not 0 < port < 65536:
        raise ConfigError(f"cannot listen on {host}:{port}: a port is 1 to 65535 ({flags})")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc} ({flags})") from None
