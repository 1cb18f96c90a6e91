"""Benchmark of serving: top-K over a large catalogue, in process and over HTTP.

    crossfed bench recommend                                # 10k items, tiny-random base
    crossfed bench recommend --base default --out DIR      # MiniLM; + bench_recommend.json

What is measured, in one process, on one synthetic platform of ``--items`` items (titles of 3-8
words) and ``--data-users`` users with 20 ratings each:

1. a real run folder: a 1-round federation of that platform (in-process transport, the same
   client code as Flower's), so the adapter and private parameters are real;
2. ``encode``: the one-off pass of the whole catalogue through the LoRA encoder + tower;
3. ``top-10 per user``: :meth:`Recommender.top_k` for ``--users`` users from the precomputed
   vectors (one user vector, the head over every item in batched passes, seen items removed);
4. ``top-10 without precomputed vectors``: the same call when the catalogue must be re-encoded
   for the user (what a model without item-side precomputation pays), for ``--naive-users`` users;
5. HTTP (``crossfed serve``'s FastAPI app under uvicorn, 127.0.0.1, sequential requests):
   ``GET /recommend`` (k = 10) and ``POST /score`` (100 items) latency, p50 / p99.

Data generation and training are outside every timer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as host
import statistics
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

VOCABULARY = (
    "red blue green black white yellow purple grey wool cotton leather silk denim linen velvet suede "
    "scarf hat gloves sweater bag wallet belt jacket dress shirt skirt coat boots socks lamp chair "
    "table mug kettle pan knife book novel guide atlas poster frame clock radio phone cable charger "
    "classic modern vintage slim large small light heavy soft warm cool bright dark striped plain"
)


def synthetic_catalogue(root: Path, items: int, users: int, per_user: int = 20, seed: int = 0) -> Path:
    """One platform ``shop`` with ``items`` items and ``users`` x ``per_user`` ratings, in the dataset format."""
    from common.data import Interaction, Item, PlatformData, write_dataset

    rng = np.random.default_rng(seed)
    words = VOCABULARY.split()
    catalogue = {}
    for i in range(items):
        picks = rng.choice(len(words), size=int(rng.integers(3, 9)))
        catalogue[f"it{i:06d}"] = Item(f"it{i:06d}", " ".join(words[w] for w in picks).capitalize())
    ids = sorted(catalogue)
    rows = []
    for u in range(users):
        for t, i in enumerate(rng.choice(items, size=per_user, replace=False)):
            rows.append(Interaction(f"u{u:05d}", ids[i], 1_600_000_000 + t * 3600, float(rng.integers(1, 6))))
    write_dataset(root, [PlatformData("shop", catalogue, rows, "rating")])
    return root


def train_run(data: Path, out: Path, base: str) -> Path:
    """A real 1-round run on the platform (small per-round sample: the weights' values do not matter here)."""
    from common.config import AppConfig
    from server.federation import run_federation
    from simulations.compare.inprocess import InProcessTransport, setups_for

    cfg = AppConfig().replace(**{
        "model.base": base, "data.dir": str(data), "out-dir": str(out), "num-server-rounds": 1,
        "train.max-examples": 256, "eval.max-rank-users": 5,
    })  # fmt: skip
    run_federation(InProcessTransport(setups_for(cfg, ["shop"], device="cpu")), cfg)
    return out


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q))


def _http_latencies(rec: Any, users: list[str], requests: int) -> dict[str, dict[str, float]]:
    import uvicorn

    from clients.serve import create_app

    server = uvicorn.Server(uvicorn.Config(create_app({"shop": rec}), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/platforms/shop"
    candidates = rec.part.table.ids[:100]
    out: dict[str, list[float]] = {"GET /recommend (k=10)": [], "POST /score (100 items)": []}
    try:
        for n in range(requests):
            user = users[n % len(users)]
            t0 = time.perf_counter()
            with urllib.request.urlopen(f"{url}/recommend?user_id={user}&k=10", timeout=60) as r:
                r.read()
            out["GET /recommend (k=10)"].append(time.perf_counter() - t0)
            body = json.dumps({"user_id": user, "item_ids": candidates}).encode()
            request = urllib.request.Request(f"{url}/score", data=body, headers={"Content-Type": "application/json"})
            t0 = time.perf_counter()
            with urllib.request.urlopen(request, timeout=60) as r:
                r.read()
            out["POST /score (100 items)"].append(time.perf_counter() - t0)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    return {k: {"p50_ms": _pct(v, 50), "p99_ms": _pct(v, 99), "n": len(v)} for k, v in out.items()}


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from clients.recommender import Recommender

    torch.set_num_threads(max(1, args.threads))
    with tempfile.TemporaryDirectory(prefix="crossfed-bench-rec-") as tmp:
        root = Path(tmp)
        data = synthetic_catalogue(root / "data", args.items, args.data_users)
        run = train_run(data, root / "run", args.base)
        rec = Recommender.from_run(run, "shop", device="cpu", cache=False)
        users = sorted(rec.histories)[: args.users]
        t0 = time.perf_counter()
        rec.item_vectors()
        encode_s = time.perf_counter() - t0
        rec.top_k(users[0], 10)  # warm-up (allocator, kernels)
        per_user = []
        for user in users:
            t0 = time.perf_counter()
            rec.top_k(user, 10)
            per_user.append(time.perf_counter() - t0)
        naive = []
        for user in users[: args.naive_users]:
            rec._vectors = None  # what a model without precomputed item vectors pays for every user
            t0 = time.perf_counter()
            rec.top_k(user, 10)
            naive.append(time.perf_counter() - t0)
        http = _http_latencies(rec, users, args.http_requests)
    mean_user = statistics.fmean(per_user)
    return {
        "config": {"items": args.items, "base": args.base, "users": len(users), "naive_users": len(naive),
                   "data_users": args.data_users, "threads": torch.get_num_threads(), "device": "cpu"},
        "hardware": {"cpu_count": os.cpu_count(), "machine": host.machine(), "torch": torch.__version__,
                     "load_average_1min": os.getloadavg()[0]},
        "encode_catalogue_s": encode_s,
        "top10_per_user_ms": {"mean": mean_user * 1000, "p50": _pct(per_user, 50), "p99": _pct(per_user, 99)},
        "top10_without_precomputed_ms": {"mean": statistics.fmean(naive) * 1000 if naive else None},
        "speedup_precomputed": (statistics.fmean(naive) / mean_user) if naive else None,
        "http": http,
    }  # fmt: skip


def table(result: dict[str, Any]) -> str:
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    cfg = result["config"]
    out = Table(title=f"crossfed serving: {cfg['items']:,} items, base {cfg['base']}, CPU x{cfg['threads']} threads")
    out.add_column("what")
    out.add_column("p50 ms", justify="right")
    out.add_column("p99 ms", justify="right")
    out.add_column("mean ms", justify="right")
    out.add_column("n", justify="right")
    out.add_row("encode whole catalogue (once)", "", "", f"{result['encode_catalogue_s'] * 1000:.0f}", "1")
    u = result["top10_per_user_ms"]
    out.add_row("top-10 per user, precomputed vectors", f"{u['p50']:.2f}", f"{u['p99']:.2f}", f"{u['mean']:.2f}",
                str(cfg["users"]))  # fmt: skip
    naive = result["top10_without_precomputed_ms"]["mean"]
    if naive is not None:
        out.add_row("top-10 per user, re-encoding the catalogue", "", "", f"{naive:.0f}", str(cfg["naive_users"]))
    for name, row in result["http"].items():
        out.add_row(f"HTTP {name}", f"{row['p50_ms']:.2f}", f"{row['p99_ms']:.2f}", "", str(row["n"]))
    buf = StringIO()
    Console(file=buf, width=110, force_terminal=False).print(out)
    speed = result["speedup_precomputed"]
    return buf.getvalue() + (f"precomputed item vectors: {speed:.0f}x faster per user\n" if speed else "")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crossfed bench recommend", description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--base", default="tiny-random", help="'tiny-random', 'default' (MiniLM) or a local path")
    parser.add_argument("--users", type=int, default=200, help="users timed with precomputed vectors")
    parser.add_argument("--naive-users", type=int, default=3, help="users timed re-encoding the catalogue")
    parser.add_argument("--data-users", type=int, default=500)
    parser.add_argument("--http-requests", type=int, default=200, help="requests per endpoint")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: a serving worker per core)")
    parser.add_argument("--out", help="folder for bench_recommend.json")
    args = parser.parse_args(argv)
    result = run_bench(args)
    print(table(result), end="")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        path = Path(args.out) / "bench_recommend.json"
        path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
