"""What crossfed changes in Flower 1.42's HTTP layer, shared by the SuperNode and the ServerApp.

Both sides talk to the SuperLink over HTTP with Flower's retry invoker and its
``pull_objects``. Two of Flower's choices cost us rounds or replies:

* **HTTP 500.** Under load (30 SuperNodes on 2 cores) the SuperLink's SQLite state answers
  now and then with "database is locked", which its REST layer turns into a 500. Flower
  retries only 502/503/504 and transport errors, so one such answer loses a reply (SuperNode
  side) or stops the ServerApp (grid side). :func:`retry_server_errors` repeats the call.
* **Object pulls.** A message's metadata arrives before its objects (the sender uploads them
  right after), so the first pull usually misses and Flower waits 1 s, 2 s, ... (cap 10 s)
  before asking again. :func:`quick_pull_objects` starts shorter and caps at 1 s, with
  Flower's total patience (``PULL_MAX_TIME``).

Users: ``deploy.supernode_entry`` (SuperNode) and ``server.grid_tuning`` (ServerApp). Both
patch Flower module attributes, so they first ask :func:`flwr_is_pinned`.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

PINNED_FLWR = "1.42.0"  # pyproject.toml pins flwr[simulation]==1.42.0
SERVER_ERROR_BACKOFF_S = 0.5
PULL_BACKOFF_CAP_S = 1.0

log = logging.getLogger("crossfed.flower_http")


def flwr_is_pinned(what: str) -> bool:
    """True on the pinned flwr; otherwise warn that ``what`` stays at Flower's defaults."""
    import flwr

    if flwr.__version__ == PINNED_FLWR:
        return True
    log.warning("flwr %s is not %s: %s left at Flower's defaults", flwr.__version__, PINNED_FLWR, what)
    return False


def is_server_error(exc: BaseException) -> bool:
    """An HTTP 500 from the SuperLink."""
    return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == httpx.codes.INTERNAL_SERVER_ERROR


def retry_server_errors(invoker: Any, retries: int, backoff_s: float = SERVER_ERROR_BACKOFF_S,
                        sleep: Callable[[float], None] = time.sleep) -> Any:  # fmt: skip
    """Make ``invoker.invoke`` repeat a call that ended in an HTTP 500, at most ``retries`` times.

    Flower's invoker gives up on a 500 at once; this wraps the instance's ``invoke`` so the
    whole retry (including Flower's own handling of 502/503/504 and transport errors) runs
    again after ``backoff_s``, doubling. Any other error, and the last 500, is raised as before.
    """
    inner = invoker.invoke

    def invoke(target: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        for attempt in range(retries):
            try:
                return inner(target, *args, **kwargs)
            except Exception as exc:
                if not is_server_error(exc):
                    raise
                wait = backoff_s * 2**attempt
                log.warning("SuperLink answered HTTP 500 (%s); retry %d/%d in %.1f s",
                            getattr(target, "__name__", "call"), attempt + 1, retries, wait)  # fmt: skip
                sleep(wait)
        return inner(target, *args, **kwargs)  # the last try: whatever it raises, the caller sees

    invoker.invoke = invoke
    return invoker


def quick_pull_objects(initial_backoff_s: float) -> Callable[..., dict[str, bytes]]:
    """Flower's ``pull_objects`` retrying a missing object after ``initial_backoff_s``, doubling to 1 s."""
    from flwr.supercore.inflatable import inflatable_utils

    return functools.partial(
        inflatable_utils.pull_objects,
        initial_backoff=initial_backoff_s,
        backoff_cap=PULL_BACKOFF_CAP_S,
        max_tries_per_object=None,  # bounded by PULL_MAX_TIME, as Flower's defaults effectively are
    )
