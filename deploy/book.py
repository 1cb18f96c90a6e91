"""crossfed's notes about a federation, beside Flower's: ``$FLWR_HOME/crossfed.json``.

Why: Flower 1.42's ``flwr supernode ls`` shows node ids only, and a run id says nothing of
where the run writes. The machine that registers nodes and submits runs records, per named
federation, node id -> platform name (at registration) and run id -> run folder (at
submission), so status and failure lines can name platforms and find a run's rounds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.files import atomic_write_text

BOOK = "crossfed.json"


def book_path(flwr_home: Path) -> Path:
    return Path(flwr_home).expanduser() / BOOK


def read_book(flwr_home: Path) -> dict[str, Any]:
    """The whole book (federation name -> {"nodes": {...}, "runs": {...}}); {} when there is none."""
    path = book_path(flwr_home)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}  # notes only: a damaged book costs names, never a run
    return data if isinstance(data, dict) else {}


def remember_node(flwr_home: Path, federation: str, node_id: int, platform: str) -> None:
    """Name a registered node, so status and failure lines can say which platform it is."""
    data = read_book(flwr_home)
    data.setdefault(federation, {}).setdefault("nodes", {})[str(node_id)] = platform
    _write(flwr_home, data)


def remember_run(flwr_home: Path, federation: str, run_id: int, out_dir: str | None) -> None:
    data = read_book(flwr_home)
    runs = data.setdefault(federation, {}).setdefault("runs", {})
    runs[str(run_id)] = {"out-dir": out_dir, "submitted": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())}
    _write(flwr_home, data)


def node_names(flwr_home: Path, federation: str) -> dict[str, str]:
    """Node id (as a string) -> platform name, for the nodes registered through crossfed."""
    return dict(read_book(flwr_home).get(federation, {}).get("nodes", {}))


def _write(flwr_home: Path, data: Mapping[str, Any]) -> None:
    atomic_write_text(book_path(flwr_home), json.dumps(data, indent=1, sort_keys=True) + "\n")
