"""Run one whole federation on this machine in Flower's simulation engine (Ray).

The same ServerApp logic (``server.app.run_federation``) and the same ClientApp
(``clients.app.app``) as ``flwr run .`` and the Deployment Engine; only the config
comes from the ``crossfed simulate`` flags instead of ``--run-config``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.config import AppConfig
from common.data import load_dataset
from common.modeling import TINY_BASE, resolve_base_path
from common.splits import split_dataset
from server.outputs import SUMMARY_FILE

log = logging.getLogger("crossfed.simulate")


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

        dataset = load_dataset(Path(cfg.data.dir))
        split_dataset(dataset, split_config(cfg.data, cfg.seed))
        return sorted(dataset)
    from clients.platform import platform_names

    return platform_names("", cfg.seed)


def server_app_for(cfg: AppConfig) -> ServerApp:
    """A ServerApp bound to ``cfg`` (run_simulation has no run_config of its own)."""
    from server.app import transport_for
    from server.federation import run_federation

    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        run_federation(transport_for(grid, cfg), cfg)

    return app


class _HideDeprecation(logging.Filter):
    """``run_simulation`` is Flower's in-process entry point; its deprecation notice is noise here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "run_simulation` function is deprecated" not in record.getMessage()


def run_simulated_federation(cfg: AppConfig, platforms: list[str], num_cpus: int = 2) -> dict[str, Any]:
    """One SuperNode per platform; returns the parsed summary.json (raises if the run made none)."""
    from flwr.simulation import run_simulation

    from clients.app import app as client_app

    out = Path(cfg.out_dir)
    (out / SUMMARY_FILE).unlink(missing_ok=True)
    backend = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": max(1, num_cpus), "include_dashboard": False},
    }
    log.info("simulating %d platforms: %s", len(platforms), ", ".join(platforms))
    hide = _HideDeprecation()
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.addFilter(hide)
    try:
        run_simulation(
            server_app=server_app_for(cfg), client_app=client_app,
            num_supernodes=len(platforms), backend_config=backend,
        )  # fmt: skip
    finally:
        flwr_logger.removeFilter(hide)
    if not (out / SUMMARY_FILE).is_file():
        raise RuntimeError(f"the federation ended without writing {out / SUMMARY_FILE}; see the log above")
    return json.loads((out / SUMMARY_FILE).read_text())
