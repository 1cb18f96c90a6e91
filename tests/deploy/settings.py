"""What every deployed-federation test shares: the platforms, a tiny run config, node configs."""

import tempfile
from pathlib import Path

PLATFORMS = ["app", "social_shop", "web_shop"]  # the embedded synthetic dataset (data.dir = "")
TINY = {
    "model.base": "tiny-random", "model.max-length": 48, "data.history-len": 3, "lora.r": 4,
    "train.max-examples": 64, "train.batch-size": 16, "eval.max-rank-users": 3, "num-server-rounds": 2,
    "fed.patience": 0, "fed.min-nodes": 3, "fed.node-wait-s": 90.0, "fed.round-timeout-s": 240.0,
    "secure.stage-timeout-s": 60.0,
}  # fmt: skip
# node_config: where the platforms keep their private parameters (each run in its own subfolder)
STATE = {"state-dir": str(Path(tempfile.gettempdir()) / "crossfed-deploy-tests-private")}
SHARE = {"share-metrics": True, **STATE}  # send evaluation metrics (secure aggregation stays required)
CLEAR = {"require-secagg": False, "share-metrics": True, **STATE}  # also accept rounds in the clear
