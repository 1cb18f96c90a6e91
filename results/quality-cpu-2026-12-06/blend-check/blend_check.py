"""Diagnostic only, NOT evidence (the share is read off the TEST split, an oracle): is there room for a
new-user blend, the model's like logit mixed with the item's like-rate logit, (1 - w) * model + w * like-rate?

Run from the repository root on a compare run's records (test scores of the same examples per arm):
    python results/quality-cpu-2026-12-06/blend-check/blend_check.py /tmp/q/nud-cross fed-nud50
Prints, per platform, the test AUC of each w in {0, .25, .5, .75} per seed, then the mean over seeds of
the model alone, the best w on test (oracle), like-rate and MF's fallback.
"""

import json
import statistics
import sys

import numpy as np

from common.metrics import auc

root, arm = sys.argv[1], sys.argv[2]
SHARES = (0.0, 0.25, 0.5, 0.75)


def logit(p):
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def scores(seed, name):
    return json.load(open(f"{root}/records/new-users/seed{seed}/{name}.json"))["record"]["scores"]


table = {}
for seed in (0, 1, 2):
    model, rate, mf = scores(seed, arm), scores(seed, "like-rate"), scores(seed, "mf")
    for platform, got in model.items():
        y = np.asarray(got["labels"])
        assert (y == np.asarray(rate[platform]["labels"])).all() and (y == np.asarray(mf[platform]["labels"])).all()
        blends = [auc(y, (1 - w) * logit(got["probs"]) + w * logit(rate[platform]["probs"])) for w in SHARES]
        row = table.setdefault(platform, {"model": [], "oracle": [], "like-rate": [], "mf": []})
        row["model"].append(blends[0])
        row["oracle"].append(max(blends))
        row["like-rate"].append(auc(y, rate[platform]["probs"]))
        row["mf"].append(auc(y, mf[platform]["probs"]))
        print(seed, platform, " ".join(f"w{w:g} {a:.4f}" for w, a in zip(SHARES, blends, strict=True)))
print("\nmean over seeds | model | best w on test (oracle) | like-rate | mf fallback | oracle - mf")
for platform, row in table.items():
    m = {k: statistics.fmean(v) for k, v in row.items()}
    print(
        f"{platform} | {m['model']:.4f} | {m['oracle']:.4f} | {m['like-rate']:.4f} | {m['mf']:.4f} | "
        f"{m['oracle'] - m['mf']:+.4f}"
    )
