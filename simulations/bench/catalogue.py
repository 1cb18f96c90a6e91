"""Benchmark of catalogue size: the cpu recipe's memory and time on large catalogues of long texts.

    crossfed bench catalogue                                   # 1,682 vs 10,000 items, default MiniLM
    crossfed bench catalogue --items 2000,20000 --words 400 --out results/DIR
    python -m simulations.bench.catalogue --quick              # CI-sized: tiny-random base, small shops

The quality evidence runs on ML-100K (at most 1,682 items per platform, titles of a few words).
Platforms that join may sell 10,000+ products with long descriptions, and the cpu recipe caches
per-item states (:class:`clients.trainer.ItemTable`: the frozen lower layers' output per item,
every token of ``model.max-length``), so its memory grows with the catalogue. This benchmark
checks it on data shaped like such a platform: for each catalogue size, in a fresh child process
(so that peak RSS is that size's own), ``--platforms`` implicit-feedback shops (every row a
positive, as a click log) each selling that many items whose texts are ``--words`` words long,
federated for ``--rounds`` rounds with the ``cpu`` size preset of ``crossfed compare``
(:data:`simulations.compare.arms.SIZES`), every test user ranked over the whole catalogue.

It prints, per catalogue size, peak RSS against ``--memory-gib`` (default 24: the 2-core machine
the recipe is judged on), the lower-state cache a catalogue costs (items x tokens x hidden x 4
bytes, two models kept), and seconds per round split into training and evaluation (ranking).
The shops are synthetic (:func:`make_catalogue_shops`: topics, users who favour two of them) and
learnable, but the figures here are memory and time, not quality.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simulations.bench.scale import emit, int_list, mean_round_split, measure_federation, run_each

GIB = 1024**3
TOPICS = 40
TOPIC_WORDS = 60  # words that mark a topic; the rest of a text is drawn from the common pool
COMMON_WORDS = 3000
SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qu", "do", "fe", "gi", "hu", "ja")


def _words(count: int, rng: np.random.Generator) -> list[str]:
    """``count`` distinct pronounceable pseudo-words (3-4 syllables), so tokenisers split them like text."""
    out: set[str] = set()
    while len(out) < count:
        n = int(rng.integers(3, 5))
        out.add("".join(SYLLABLES[i] for i in rng.integers(0, len(SYLLABLES), n)))
    return sorted(out)


def make_catalogue_shops(platforms: int, items: int, words: int, users: int, per_user: int, seed: int = 0) -> dict:
    """``platforms`` implicit-feedback shops, each ``items`` items with texts of ``words`` words.

    Each item belongs to one of :data:`TOPICS` topics; its text mixes that topic's marker words
    (a fifth) with common words. Each user favours two topics and clicks ``per_user`` items, four in
    five from them; timestamps increase per user. Shops share the topics (what federation can carry
    over), not their item ids or users.
    """
    from common.data import Interaction, Item, PlatformData

    rng = np.random.default_rng(seed)
    vocab = _words(TOPICS * TOPIC_WORDS + COMMON_WORDS, rng)
    topic_words = np.array(vocab[: TOPICS * TOPIC_WORDS]).reshape(TOPICS, TOPIC_WORDS)
    common = np.array(vocab[TOPICS * TOPIC_WORDS :])
    shops = {}
    for p in range(platforms):
        name = f"store{p}"
        topic = rng.integers(0, TOPICS, items)
        catalogue = {}
        for i in range(items):
            marked = rng.random(words) < 0.2
            text = np.where(marked, rng.choice(topic_words[topic[i]], words), rng.choice(common, words))
            item_id = f"{name}-i{i:05d}"
            catalogue[item_id] = Item(item_id, f"{topic_words[topic[i], 0].title()} {i}", " ".join(text))
        ids = np.array(list(catalogue))
        by_topic = [np.flatnonzero(topic == t) for t in range(TOPICS)]
        rows = []
        for u in range(users):
            liked = rng.choice(TOPICS, 2, replace=False)
            pool = np.concatenate([by_topic[t] for t in liked])
            pool = pool if len(pool) else np.arange(items)  # a tiny catalogue may lack both topics
            favoured = rng.random(per_user) < 0.8
            picks = np.where(favoured, rng.choice(pool, per_user), rng.integers(0, items, per_user))
            picks = list(dict.fromkeys(picks.tolist()))  # one click per item and user
            times = 1_600_000_000 + np.cumsum(rng.integers(60, 86_400, len(picks)))
            rows += [Interaction(f"u{u:05d}", str(ids[i]), float(t), None) for i, t in zip(picks, times, strict=True)]
        shops[name] = PlatformData(name, catalogue, rows, "implicit")
    return shops


def cache_bytes(items: int, max_length: int, hidden: int) -> int:
    """The cpu recipe's lower-state cache of one catalogue: fp32 states of every token, two models kept."""
    return 2 * items * max_length * hidden * 4


def run_one(items: int, args: argparse.Namespace) -> dict[str, Any]:
    """One catalogue size in this process: write the shops, federate with the cpu preset, measure."""
    from common.config import AppConfig, parse_overrides
    from common.data import write_dataset
    from common.modeling import load_base
    from simulations.compare.arms import SIZES

    with tempfile.TemporaryDirectory(prefix="crossfed-catalogue-") as tmp:
        shops = make_catalogue_shops(args.platforms, items, args.words, args.users, args.per_user, args.seed)
        write_dataset(Path(tmp) / "data", shops.values())
        rows = sum(len(s.interactions) for s in shops.values())
        text_chars = float(np.mean([len(it.text) for s in shops.values() for it in s.items.values()]))
        del shops
        cfg = AppConfig().replace(**{
            **SIZES["cpu"], "model.base": args.base, "data.dir": str(Path(tmp) / "data"),
            "out-dir": str(Path(tmp) / "run"), "seed": args.seed, "num-server-rounds": args.rounds,
            "fed.patience": 0, **parse_overrides(args.set or []),
        })  # fmt: skip
        hidden = load_base(cfg.model.base, cfg.seed)[0].config.hidden_size
        out = measure_federation(cfg, sorted(f"store{p}" for p in range(args.platforms)))
    return {"items": items, "words": args.words, "text_chars": text_chars, "interactions": rows,
            "platforms": args.platforms, "base": args.base, **out,
            "cache_bytes_per_platform": cache_bytes(items, cfg.model.max_length, hidden),
            "within_memory": out["peak_rss_bytes"] <= args.memory_gib * GIB}  # fmt: skip


def run_child(items: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run one catalogue size in a fresh interpreter, so that each size's peak memory is its own."""
    cmd = [sys.executable, "-m", "simulations.bench.catalogue", "--child", str(items), "--base", args.base,
           "--words", str(args.words), "--platforms", str(args.platforms), "--users", str(args.users),
           "--per-user", str(args.per_user), "--rounds", str(args.rounds), "--seed", str(args.seed),
           "--memory-gib", str(args.memory_gib), *[x for kv in args.set or [] for x in ("--set", kv)]]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench catalogue with {items} items failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def format_table(results: Sequence[dict[str, Any]], memory_gib: float) -> str:
    mib = 1024**2
    header = ("items", "text chars", "rows", "peak RSS MiB", "cache MiB", "ok", "round s", "train s", "eval s")
    rows = [header]
    for r in results:
        split = mean_round_split(r)
        rows.append((str(r["items"]), f"{r['text_chars']:.0f}", str(r["interactions"]),
                     f"{r['peak_rss_bytes'] / mib:.0f}", f"{r['cache_bytes_per_platform'] / mib:.0f}",
                     "yes" if r["within_memory"] else "NO", f"{r['round_s'] or 0:.1f}", f"{split['train_s']:.1f}",
                     f"{split['evaluate_s']:.1f}"))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [" ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    if results:
        lines.append(f"{results[0]['platforms']} implicit-feedback platforms in one process, base "
                     f"{results[0]['base']}, cpu preset; ok = peak RSS <= {memory_gib:g} GiB; cache = lower-layer "
                     "states per platform (2 models)")  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crossfed bench catalogue", description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", default="1682,10000", help="comma-separated catalogue sizes (default 1682,10000)")
    parser.add_argument("--words", type=int, default=300, help="words per item text (default 300)")
    parser.add_argument("--platforms", type=int, default=3, help="platforms in the federation (default 3)")
    parser.add_argument("--users", type=int, default=600, help="users per platform (default 600)")
    parser.add_argument("--per-user", type=int, default=40, help="clicks per user (default 40)")
    parser.add_argument("--rounds", type=int, default=1, help="federated rounds (default 1)")
    parser.add_argument("--base", default="default", help="base model: default (MiniLM), tiny-random, a path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-gib", type=float, default=24.0, help="the memory to stay within (default 24)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="run-config key over the cpu preset")
    parser.add_argument("--quick", action="store_true", help="CI-sized defaults: tiny-random, 300/1200 items, 30 words")
    parser.add_argument("--json", action="store_true", help="print the JSON payload instead of the table")
    parser.add_argument("--out", type=Path, help="also write bench_catalogue.json and bench_catalogue.txt here")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    if parser.parse_known_args(argv)[0].quick:  # smaller defaults; options given still win
        parser.set_defaults(items="300,1200", words=30, users=40, per_user=15, base="tiny-random")
    args = parser.parse_args(argv)
    if min(args.words, args.platforms, args.users, args.per_user, args.rounds) < 1:
        parser.error("--words, --platforms, --users, --per-user and --rounds must be positive")
    if args.child is not None:
        print(json.dumps(run_one(args.child, args)))
        return 0
    sizes = int_list(parser, "--items", args.items, minimum=2)
    results = run_each(sizes, "items", lambda n: run_child(n, args))
    payload = {"command": " ".join(["crossfed bench catalogue", *(argv if argv is not None else sys.argv[1:])]),
               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu_count": os.cpu_count(),
               "memory_gib": args.memory_gib, "results": results}  # fmt: skip
    emit(payload, format_table(results, args.memory_gib), args.json, args.out, "bench_catalogue")
    return 0 if all(r["within_memory"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
