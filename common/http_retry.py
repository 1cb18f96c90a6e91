"""Repeat a Flower HTTP call that the SuperLink answered with HTTP 500.

Under load (30 SuperNodes on 2 cores) the SuperLink's SQLite state answers now and then
with "database is locked", which its REST layer turns into a 500. Flower 1.42 retries
only 502/503/504 and transport errors, so one such answer loses a reply (SuperNode side)
or stops the ServerApp (Grid side). Both sides wrap Flower's own retry invoker with
:func:`retry_server_errors`: ``deploy.supernode_entry`` for the SuperNode, and
``server.grid_tuning`` for the ServerApp's grid.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

SERVER_ERROR_BACKOFF_S = 0.5

log = logging.getLogger("crossfed.http_retry")


def is_server_error(exc: BaseException) -> bool:
    """An HTTP 500 from the SuperLink (httpx is imported lazily: only flwr needs it)."""
    import httpx

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
        for attempt in range(retries + 1):
            try:
                return inner(target, *args, **kwargs)
            except Exception as exc:
                if attempt == retries or not is_server_error(exc):
                    raise
                wait = backoff_s * 2**attempt
                log.warning("SuperLink answered HTTP 500 (%s); retry %d/%d in %.1f s",
                            getattr(target, "__name__", "call"), attempt + 1, retries, wait)  # fmt: skip
                sleep(wait)
        raise AssertionError("unreachable")

    invoker.invoke = invoke
    return invoker
