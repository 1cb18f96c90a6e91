"""What a platform's own train split says about each of its items: how often it is picked, how liked.

Item popularity and smoothed like-rate are the two no-training baselines a text model must
beat (``simulations.compare.baselines``), and a recommender without them has to relearn both, item by
item, through private biases. So the model's head also sees them as two features per candidate
(``model.item-stats``): ``log1p(count)`` and the smoothed like-rate minus the platform's prior.
They are computed on the platform from its own train split and never leave it; the shared head
learns how to use them, which transfers between platforms (popular and well-liked items are
picked and liked everywhere) even though the items do not.

Train rows see their item's statistics *without themselves* (leave-one-out): otherwise a row's
own label leaks into its feature and the model learns to read it back. Validation, test and
ranking rows see the full train statistics, as a served model would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PRIOR_STRENGTH = 5.0  # pseudo-count of the like-rate's prior: a rarely rated item stays near the platform's rate
NUM_ITEM_STATS = 2  # features per candidate: log1p(count), smoothed like-rate - prior


def smoothed_rate(likes: np.ndarray | float, count: np.ndarray | float, prior: float,
                  strength: float = PRIOR_STRENGTH) -> np.ndarray | float:  # fmt: skip
    """(likes + strength * prior) / (count + strength): the prior for an unseen item, the raw rate when well seen."""
    return (likes + strength * prior) / (count + strength)


@dataclass(frozen=True)
class ItemStats:
    """Per catalogue row: real interactions and likes in the train split; the train like-rate."""

    counts: np.ndarray  # (I,) float64
    likes: np.ndarray  # (I,) float64
    prior: float

    @classmethod
    def from_train(cls, num_items: int, items: np.ndarray, labels: np.ndarray, rated: np.ndarray) -> ItemStats:
        """Count the rated train rows (sampled unrated rows are not interactions)."""
        real = rated > 0
        counts = np.bincount(items[real], minlength=num_items).astype(np.float64)
        likes = np.bincount(items[real], weights=labels[real].astype(np.float64), minlength=num_items)
        prior = float(labels[real].mean()) if real.any() else 0.5
        return cls(counts, likes, prior)

    def features(
        self, items: np.ndarray, labels: np.ndarray | None = None, rated: np.ndarray | None = None
    ) -> np.ndarray:
        """(N, 2) float32 features of these candidate rows.

        With ``labels`` and ``rated`` (the train rows themselves), each rated row's own
        interaction is taken out of its item's counts first (leave-one-out).
        """
        counts, likes = self.counts[items], self.likes[items]
        if labels is not None and rated is not None:
            own = (rated > 0).astype(np.float64)
            counts, likes = counts - own, likes - own * labels
        rate = smoothed_rate(likes, counts, self.prior) - self.prior
        return np.stack([np.log1p(np.maximum(counts, 0.0)), rate], axis=1).astype(np.float32)
