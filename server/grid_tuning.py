"""Make Flower 1.42's HTTP grid (the ServerApp's link to the SuperLink) fit short rounds and load.

Two changes, both inside the ServerApp process and both no-ops in simulation (whose grid
talks to no SuperLink):

* **HTTP 500 retries** (see :mod:`common.flower_http`).
* **Quicker reply pulls.** Measured on 3 platforms with a tiny model: the ServerApp saw
  every train reply at t, had its objects available by t + 0.3 s and pulled them at
  t + 1.1 s (Flower's 1 s initial backoff), once per exchange. Here the first retry comes
  after 50 ms.

With ``CROSSFED_RPC_TRACE=DIR`` the ServerApp also times its every call (:mod:`common.rpc_trace`).
"""

from __future__ import annotations

from flwr.serverapp import Grid

from common.flower_http import flwr_is_pinned, quick_pull_objects, retry_server_errors
from common.rpc_trace import trace_rpcs

SERVER_ERROR_RETRIES = 5
PULL_INITIAL_BACKOFF_S = 0.05


def tune_grid(grid: Grid) -> bool:
    """Apply both changes when ``grid`` is flwr 1.42's HTTP grid; False (untouched) otherwise."""
    invoker = getattr(grid, "_retry_invoker", None)  # only the HTTP grid of the Deployment Engine has one
    if invoker is None or not flwr_is_pinned("the ServerApp grid"):
        return False
    retry_server_errors(invoker, SERVER_ERROR_RETRIES)
    quicken_reply_pulls()
    trace_rpcs("serverapp")
    return True


def quicken_reply_pulls() -> None:
    """Point the HTTP grid's ``pull_objects`` at Flower's own, with a shorter backoff."""
    import flwr.superlink.grid.http_grid as http_grid

    http_grid.pull_objects = quick_pull_objects(PULL_INITIAL_BACKOFF_S)  # type: ignore[attr-defined]
