"""Make Flower 1.42's HTTP grid (the ServerApp's link to the SuperLink) fit short rounds and load.

Two changes, both inside the ServerApp process and both no-ops in simulation (whose grid
talks to no SuperLink):

* **HTTP 500 retries.** A busy SuperLink answers now and then with HTTP 500 (SQLite
  "database is locked"); Flower gives up on those at once. See :mod:`common.http_retry`.
* **Quicker reply pulls.** A reply's metadata reaches the SuperLink before its objects
  (the SuperNode pushes them next), so the grid's first object pull usually misses; Flower
  then waits 1 s, 2 s, ... (cap 10 s). Measured on 3 platforms with a tiny model: the
  ServerApp saw every train reply at t, had its objects available by t + 0.3 s and pulled
  them at t + 1.1 s, once per exchange. Here the wait starts at 50 ms and is capped at 1 s;
  the total patience (``PULL_MAX_TIME``) stays Flower's.
"""

from __future__ import annotations

import functools
import logging

from flwr.serverapp import Grid

from common.http_retry import retry_server_errors

PINNED_FLWR = "1.42.0"
SERVER_ERROR_RETRIES = 5
PULL_INITIAL_BACKOFF_S = 0.05
PULL_BACKOFF_CAP_S = 1.0

log = logging.getLogger("crossfed.grid")


def tune_grid(grid: Grid) -> bool:
    """Apply both changes when ``grid`` is flwr 1.42's HTTP grid; False (untouched) otherwise."""
    import flwr

    invoker = getattr(grid, "_retry_invoker", None)  # only the HTTP grid of the Deployment Engine has one
    if invoker is None:
        return False
    if flwr.__version__ != PINNED_FLWR:
        log.warning("flwr %s is not %s: the ServerApp grid is left at Flower's defaults", flwr.__version__, PINNED_FLWR)
        return False
    retry_server_errors(invoker, SERVER_ERROR_RETRIES)
    quicken_reply_pulls()
    return True


def quicken_reply_pulls() -> None:
    """Point the HTTP grid's ``pull_objects`` at Flower's own, with a shorter backoff."""
    import flwr.superlink.grid.http_grid as http_grid
    from flwr.supercore.inflatable import inflatable_utils

    http_grid.pull_objects = functools.partial(  # type: ignore[attr-defined]
        inflatable_utils.pull_objects,
        initial_backoff=PULL_INITIAL_BACKOFF_S,
        backoff_cap=PULL_BACKOFF_CAP_S,
        max_tries_per_object=None,  # bounded by PULL_MAX_TIME, as Flower's defaults effectively are
    )
