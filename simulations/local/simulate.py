"""Run one whole federation on this machine in Flower's simulation engine (Ray).

The same ServerApp logic (``server.federation.run_federation``) and the same ClientApp
(``clients.app.app``) as ``flwr run .`` and the Deployment Engine; only the config
comes from the ``crossfed simulate`` flags instead of ``--run-config``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.config import TINY_BASE, AppConfig
from common.data import load_dataset
from common.files import atomic_write_text
from common.modeling import resolve_base_path
from common.run_files import SUMMARY_FILE, read_summary, to_json
from common.splits import split_dataset
from server.outputs import fmt_number, render_table
from simulations.compare.report import plot_run_rounds

log = logging.getLogger("crossfed.simulate")
LOCAL_ARM = "local"  # the comparison's arm name, also the folder of the local runs
COMPARISON_FILE = "local_vs_federated.json"


def validate_inputs(cfg: AppConfig) -> list[str]:
    """Load and split every platform and resolve the model path up front.

    A malformed dataset or a missing model must fail here with one clear line, before
    Ray starts and before the run folder exists (nothing partial left behind).
    """
    if cfg.model.base != TINY_BASE:
        resolve_base_path(cfg.model.base)
    if cfg.fed.warm_start:  # another model, too few rounds, no run there: one line now, not a Ray traceback later
        from server.warm_start import prepare_warm_start

        prepare_warm_start(cfg)
    if cfg.data.dir:
        from clients.platform import split_config

        dataset = load_dataset(Path(cfg.data.dir), rating_scale=cfg.data.scale)
        split_dataset(dataset, split_config(cfg.data, cfg.seed))
        return sorted(dataset)
    from clients.platform import platform_names

    return platform_names("", cfg.seed)


def server_app_for(cfg: AppConfig, table: bool = True) -> ServerApp:
    """A ServerApp bound to ``cfg`` (run_simulation has no run_config of its own)."""
    from server.app import transport_for
    from server.federation import run_federation
    from server.privacy_budget import resolve_delta

    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        run_cfg = resolve_delta(cfg)  # privacy.delta = 1/N: a simulation can count its users
        run_federation(transport_for(grid, run_cfg), run_cfg, table=table)

    return app


class _HideDeprecation(logging.Filter):
    """``run_simulation`` is Flower's in-process entry point; its deprecation notice is noise here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "run_simulation` function is deprecated" not in record.getMessage()


def backend_config(num_cpus: int, num_gpus: int) -> dict[str, Any]:
    """Ray resources of the simulation: ``num_cpus`` actors (one CPU each) sharing ``num_gpus`` GPUs.

    Ray hides every GPU from an actor that asks for none (``CUDA_VISIBLE_DEVICES=""``), so the
    platforms must ask for a share of a GPU to train on it: each actor gets ``num_gpus / actors``
    (at most 1), so that all actors run at once, several per GPU, as independent processes fill a
    GPU best (one training process uses about a quarter of an H200).
    """
    actors = max(1, num_cpus)
    share = min(1.0, num_gpus / actors) if num_gpus > 0 else 0.0
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": share},
        "init_args": {"num_cpus": actors, "num_gpus": max(0, num_gpus), "include_dashboard": False},
    }


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_simulated_federation(
    cfg: AppConfig, platforms: list[str], num_cpus: int = 2, table: bool = True
) -> dict[str, Any]:
    """One SuperNode per platform; returns the parsed summary.json (raises if the run made none).

    ``platforms``: as :func:`validate_inputs` returns them; it has printed the data's warnings
    (dropped duplicates) once, so the platforms' actors do not repeat them.

    Also draws ``rounds.png`` beside rounds.jsonl; ``table``: the ServerApp prints its test table.
    """
    from flwr.simulation import run_simulation

    from clients.app import DATA_CHECKED_ENV
    from clients.app import app as client_app

    out = Path(cfg.out_dir)
    (out / SUMMARY_FILE).unlink(missing_ok=True)
    backend = backend_config(num_cpus, _visible_gpus())
    log.info("simulating %d platforms: %s", len(platforms), ", ".join(platforms))
    hide = _HideDeprecation()
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.addFilter(hide)
    os.environ[DATA_CHECKED_ENV] = "1"  # validate_inputs reported the data's warnings: the actors stay quiet
    try:
        run_simulation(
            server_app=server_app_for(cfg, table), client_app=client_app,
            num_supernodes=len(platforms), backend_config=backend,
        )  # fmt: skip
    finally:
        flwr_logger.removeFilter(hide)
        os.environ.pop(DATA_CHECKED_ENV, None)
    summary = read_summary(out)
    if summary is None:
        raise RuntimeError(f"the federation ended without writing {out / SUMMARY_FILE}; see the log above")
    plot = plot_run_rounds(out, cfg.fed.metric)
    if plot is not None:
        log.info("rounds plot: %s", plot)
    return summary


def compare_with_local(cfg: AppConfig, platforms: list[str], federated: dict[str, Any]) -> dict[str, Any]:
    """Train each platform alone (the comparison's ``local`` arm: same rounds, per-round budget, seed
    and splits), print one table of local vs federated test metrics, write ``local_vs_federated.json``.

    The local runs go to ``<run>/local/<platform>/``, their console output to ``<run>/local/local.log``.
    """
    from simulations.compare.arms import ARMS
    from simulations.compare.jobs import captured
    from simulations.compare.runner import ArmRunner

    out = Path(cfg.out_dir)
    log_path = out / LOCAL_ARM / "local.log"
    log.info("local-only baseline: each platform trains alone, same rounds and budget (log: %s)", log_path)
    runner = ArmRunner(cfg, platforms, run_root=out, out=out, implicit=set())
    t0 = time.time()
    with captured(log_path):
        local = runner.run(ARMS[LOCAL_ARM]).with_mean()
    fed = {**federated["test"], "mean": {k.removeprefix("test."): v for k, v in federated["mean"].items()
                                         if k.startswith("test.")}}  # fmt: skip
    rows = {name: {"n": fed.get(name, {}).get("n"), "local": local.get(name, {}), "federated": fed.get(name, {})}
            for name in [*platforms, "mean"]}  # fmt: skip
    doc = {"rows": rows, "local_wall_s": time.time() - t0, "federated_wall_s": federated.get("wall_seconds"),
           "config": cfg.to_flat()}  # fmt: skip
    atomic_write_text(out / COMPARISON_FILE, to_json(doc) + "\n")
    print(comparison_table(rows, f"test metrics: each platform alone (local) vs federated ({cfg.num_server_rounds} "
                                 "rounds)"), flush=True)  # fmt: skip
    return doc


def comparison_table(rows: dict[str, dict[str, Any]], title: str) -> str:
    """platform | n test | AUC local, federated, gain | NDCG@10 local, federated (``mean``: weighted)."""
    cells = []
    for name, row in rows.items():
        local, fed = row["local"], row["federated"]
        gain = fed.get("auc", math.nan) - local.get("auc", math.nan)
        cells.append([
            "weighted mean" if name == "mean" else name, fmt_number(row["n"], 0), fmt_number(local.get("auc")),
            fmt_number(fed.get("auc")), fmt_number(gain, signed=True), fmt_number(local.get("ndcg@10")),
            fmt_number(fed.get("ndcg@10")),
        ])  # fmt: skip
    columns = ["platform", "n test", "AUC local", "AUC federated", "AUC gain", "NDCG@10 local", "NDCG@10 fed."]
    return render_table(title, columns, cells, width=110)
