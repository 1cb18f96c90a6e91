"""What every deployed-federation test shares: the platforms, a tiny run config, node configs."""

import tempfile
from pathlib import Path

from common.config import TINY_PRESET

PLATFORMS = ["app", "social_shop", "web_shop"]  # the embedded synthetic dataset (data.dir = "")
TINY = {
    **TINY_PRESET, "num-server-rounds": 2, "fed.patience": 0, "fed.min-nodes": 3, "fed.node-wait-s": 90.0,
    "fed.round-timeout-s": 240.0, "secure.stage-timeout-s": 60.0,
}  # fmt: skip
# node_config: where the platforms keep their private parameters (each run in its own subfolder)
STATE = {"state-dir": str(Path(tempfile.gettempdir()) / "crossfed-deploy-tests-private")}
SHARE = {"share-metrics": True, **STATE}  # send evaluation metrics (secure aggregation stays required)
CLEAR = {"require-secagg": False, "share-metrics": True, **STATE}  # also accept rounds in the clear
