"""Paired bootstrap of test AUC, arm A minus arm B, per platform, over seeds 0-2, from a compare run's records
(the same function and resampling the reports use: common.metrics.paired_bootstrap_diff).

Run from the repository root:  python results/quality-cpu-2026-12-06/pair.py RUN SCENARIO ARM_A ARM_B
e.g.  python results/quality-cpu-2026-12-06/pair.py /tmp/q/ndcg-cross-scarce scarce fed-neg4 federated
"""

import json
import sys

import numpy as np

from common.metrics import paired_bootstrap_diff

root, scenario, arm_a, arm_b = sys.argv[1:5]


def scores(seed: int, arm: str) -> dict:
    with open(f"{root}/records/{scenario}/seed{seed}/{arm}.json") as f:
        return json.load(f)["record"]["scores"]


for platform in scores(0, arm_a):
    pairs = []
    for seed in (0, 1, 2):
        a, b = scores(seed, arm_a)[platform], scores(seed, arm_b)[platform]
        assert a["labels"] == b["labels"], "not the same test examples"
        pairs.append((np.asarray(a["labels"]), np.asarray(a["probs"]), np.asarray(b["probs"])))
    r = paired_bootstrap_diff(pairs)
    print(f"{platform}: {arm_a} - {arm_b} {r['diff']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}]")
