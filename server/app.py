"""The coordinator: a Flower ServerApp (Message API) that fuses platform adapters.

``main`` builds the config from Flower's run_config and runs :func:`run_federation`
over a transport: :class:`GridTransport` for plain rounds, :class:`SecureGridTransport`
when fusion runs under secure aggregation.
"""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.superlink.grid import InMemoryGrid

from common.config import AppConfig, ConfigError, parse_node_names
from common.run_files import describe_lost
from server.federation import LostRoundsError, run_federation
from server.grid_transport import GridTransport
from server.grid_tuning import tune_grid
from server.privacy_budget import resolve_delta
from server.secure import SecureGridTransport

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    log_to_console()
    cfg = AppConfig.from_flat(dict(context.run_config))
    if isinstance(grid, InMemoryGrid):  # a simulation: the server can count the users for privacy.delta = 1/N
        cfg = resolve_delta(cfg)
    tune_grid(grid)  # Deployment Engine only: retry HTTP 500s, quicker reply pulls
    summary = run_federation(transport_for(grid, cfg), cfg)
    if summary["lost_rounds"]:  # Flower's run status and `deploy submit`'s exit code must not say "completed"
        raise LostRoundsError(f"run {summary['status']}: {describe_lost(summary['lost_rounds'])}; "
                              f"the rest is written to {cfg.out_dir}")  # fmt: skip


def transport_for(grid: Grid, cfg: AppConfig) -> GridTransport:
    """Plain rounds, or rounds whose fusion runs under secure aggregation (``secagg = true``)."""
    names = parse_node_names(cfg.fed.node_names)
    if cfg.privacy.enabled and not cfg.secagg:
        raise ConfigError("differential privacy (`privacy.target-epsilon` > 0) needs `secagg = true`: each platform "
                          "adds only its share of the noise, which only the secure sum makes whole")  # fmt: skip
    return SecureGridTransport(grid, names) if cfg.secagg else GridTransport(grid, names)


def log_to_console() -> None:
    """crossfed's INFO lines (one per round, see ``server.outputs.round_line``) on stderr, plain text.

    A deployed ServerApp runs in a process whose logging nobody set up: Python would print only
    warnings, so ``flwr log --stream`` showed nothing of rounds that went well. Flower mirrors
    stderr to the SuperLink's run log. A process that did set up logging (``crossfed simulate``)
    is left as it is.
    """
    crossfed = logging.getLogger("crossfed")
    if crossfed.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    crossfed.addHandler(handler)
    crossfed.setLevel(logging.INFO)
