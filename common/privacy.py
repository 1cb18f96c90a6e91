"""User-level differential privacy under secure aggregation: clipping, distributed noise, accountant.

The unit is one user of one platform. Per round, platform i sends

    y_i = rint(box(s_i) * scale) + N_i,      s_i = sum over its users u of v_u,
    v_u = [clip(delta_u, clip_update), count_clip]  with  ||v_u||_2 <= clip (``privacy.clip``),

where ``delta_u`` is the change to the shared tensors made by local training on user u's rows
alone, from the round's global model (``clients.dp_train``), ``box`` clips every value to the
range left after the noise's headroom (a projection onto a box: it never increases the distance
between two inputs), ``rint(. * scale)`` is the secure-aggregation grid (``common.secagg``) and
N_i is discrete Gaussian noise (Canonne, Kamath, Steinke 2020) of variance sigma^2 / n_min in grid
units. The server only ever learns sum_i y_i (masked; ``secagg = true``).

Sensitivity. Adding or removing user u changes s_i by v_u (norm <= clip); the box keeps that bound;
rounding moves each of the two neighbouring inputs by at most sqrt(d) / (2 scale), so the grid
vectors differ by at most ``clip + sqrt(d) / scale`` (:attr:`Mechanism.sensitivity`). Nothing else that a
platform sends depends on one user: the per-user pass sees no private parameters and no item
statistics (those mix users), and every user's randomness is seeded by its own id.

Noise. Each platform adds sigma^2 / n_min, where n_min is the fewest inputs any secure sum can hold
(the Shamir threshold of the smallest accepted cohort): every sum the server can unmask carries at
least sigma^2, however many platforms drop out. A sum of independent discrete Gaussians is not
exactly one; Kairouz, Liu and Steinke (ICML 2021) bound the gap by a term tau of order
exp(-2 pi^2 sigma_i^2) (sigma_i: one platform's std in grid steps), which at sigma_i >= 100 grid
steps (checked, :data:`MIN_GRID_SIGMA`) is below 1e-80000: the accountant treats the sum as a discrete Gaussian of
variance >= sigma^2, and a discrete Gaussian meets the continuous Gaussian's RDP curve exactly
(Canonne et al. 2020), so the Gaussian mechanism's accounting applies.

Headroom. The noisy value must fit the grid's range [-c, c] (``secure.clip-range``), else the
secure-aggregation encoder would clip it after the noise. The box leaves t * sigma_i on each side,
with t chosen so that the chance that any noise value of any platform in any round exceeds it is
at most ``TAIL_SHARE * delta``; the accountant calibrates for the remaining ``(1 - TAIL_SHARE) *
delta``, so the run is (epsilon, delta)-DP in total.

Sampling. With ``privacy.user-rate`` q < 1 each platform takes each of its users into a round
with probability q, independently, drawn from the same secret randomness as its noise (never from
the run's seed, which the server knows: amplification needs the server not to know who was
sampled). A round is then the Poisson-subsampled Gaussian mechanism (McMahan et al., ICLR 2018).

Accounting: Google's ``dp-accounting`` (RDP), never a hand-written formula. R rounds are the
composition of R Gaussian mechanisms with noise multiplier sigma / sensitivity, each Poisson-sampled
at rate q when q < 1 (``PoissonSampledDpEvent``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# dp-accounting imports absl.logging, whose handler keeps the sys.stderr of the moment it is first
# imported and flushes it at exit. Imported while stderr is redirected (a compare unit's log file, a
# test's capture), that stream is closed later and the process dies at exit with "lost sys.stderr".
with contextlib.redirect_stderr(sys.__stderr__ or sys.stderr):
    import dp_accounting

from common.config import AppConfig, SecureSpec, grid_scale, shamir_threshold


class _UnconvergedOrders(logging.Filter):
    """dp-accounting warns once per RDP order (and per bisection step) where its series for a sampled
    Gaussian does not converge (orders below 2 at small noise); it then leaves that order out, which
    only makes epsilon larger (safe). Dozens of those lines per calibration are noise on a console."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("_compute_log_a_frac failed to converge")


logging.getLogger("absl").addFilter(_UnconvergedOrders())

COUNT = "dp.users"  # the extra coordinate of a DP contribution: count_clip per user (the noisy user count)
COUNT_SHARE = 0.25  # count_clip = COUNT_SHARE * clip; the update keeps sqrt(1 - COUNT_SHARE^2) * clip
TAIL_SHARE = 1e-3  # share of delta spent on the noise ever exceeding the grid's headroom
MIN_GRID_SIGMA = 100.0  # per-platform noise std in grid steps below which the sum-of-discrete-Gaussians gap matters
MAX_COHORT = 1024  # platforms one sum may hold (common.secagg.SecAggConfig.max_cohort): the tail bound's union
RDP_ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024])


class PrivacyError(ValueError):
    """The privacy settings cannot give the asked guarantee (no noise fits, budget spent...)."""


# ------------------------------------------------------------------ accountant (dp-accounting)


def round_event(noise_multiplier: float, user_rate: float = 1.0) -> dp_accounting.DpEvent:
    """One round: the Gaussian mechanism, Poisson-subsampled when users are sampled at ``user_rate`` < 1."""
    if not 0.0 < user_rate <= 1.0:
        raise PrivacyError(f"a round's user sampling rate must be in (0, 1], got {user_rate}")
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    return gaussian if user_rate == 1.0 else dp_accounting.PoissonSampledDpEvent(user_rate, gaussian)


def saved_rates(rounds: int, rates: Sequence[float] | None) -> list[float]:
    """The user sampling rates of ``rounds`` spent rounds as a ledger saved them. A ledger saved before
    sampling existed has none (``None``): its rounds took every user."""
    out = [1.0] * rounds if rates is None else [float(q) for q in rates]
    if len(out) != rounds:
        raise PrivacyError(f"a ledger of {rounds} rounds holds {len(out)} sampling rates")
    return out


def epsilon_spent(
    noise_multipliers: Sequence[float], delta: float, orders: Sequence[float] = RDP_ORDERS,
    user_rates: Sequence[float] | None = None,
) -> float:  # fmt: skip
    """epsilon at ``delta`` of the composition of rounds with these noise multipliers (RDP); round k
    sampled its users at ``user_rates[k]`` (default: every user in every round)."""
    if not noise_multipliers:
        return 0.0
    rates = [1.0] * len(noise_multipliers) if user_rates is None else list(user_rates)
    if len(rates) != len(noise_multipliers):
        raise PrivacyError(f"{len(noise_multipliers)} rounds' noise multipliers but {len(rates)} sampling rates")
    accountant = dp_accounting.rdp.RdpAccountant(orders=list(orders))
    for z, q in zip(noise_multipliers, rates, strict=True):
        accountant.compose(round_event(z, q))
    return float(accountant.get_epsilon(delta))


def calibrate(target_epsilon: float, delta: float, rounds: int, user_rate: float = 1.0) -> float:
    """The smallest noise multiplier z such that ``rounds`` rounds of multiplier z, users sampled at
    ``user_rate``, are (target_epsilon, delta)-DP (dp-accounting's ``calibrate_dp_mechanism``, RDP)."""
    if not target_epsilon > 0 or not 0 < delta < 1 or rounds < 1:
        raise PrivacyError(f"cannot calibrate: epsilon {target_epsilon}, delta {delta}, rounds {rounds}")
    z = dp_accounting.calibrate_dp_mechanism(
        lambda: dp_accounting.rdp.RdpAccountant(orders=list(RDP_ORDERS)),
        lambda m: dp_accounting.SelfComposedDpEvent(round_event(m, user_rate), rounds),
        target_epsilon, delta, dp_accounting.LowerEndpointAndGuess(1e-3, 1.0), tol=1e-6,
    )  # fmt: skip
    z = float(z) + 1e-6  # the bisection's tolerance, on the safe side
    assert epsilon_spent([z] * rounds, delta, user_rates=[user_rate] * rounds) <= target_epsilon
    return z


# ------------------------------------------------------------------ the mechanism's parameters


@dataclass(frozen=True)
class Mechanism:
    """Everything a platform and the server must agree on for one run's DP rounds."""

    clip: float  # L2 bound on one user's contribution vector [update, count]
    delta: float  # the run's total delta
    rounds: int  # rounds the budget is calibrated for
    noise_multiplier: float  # sigma / sensitivity, from the accountant
    dimension: int  # coordinates of one contribution (shared tensors + the count)
    scale: float  # grid steps per unit (common.secagg: Q / c)
    clip_range: float  # c: the grid holds [-c, c]
    n_min: int  # fewest noise shares in any sum
    user_rate: float = 1.0  # q: the chance each user is in a round (Poisson sampling; 1 = every user)

    @property
    def count_clip(self) -> float:
        return COUNT_SHARE * self.clip

    @property
    def update_clip(self) -> float:
        return math.sqrt(1.0 - COUNT_SHARE**2) * self.clip

    @property
    def sensitivity(self) -> float:
        """L2 distance between neighbouring grid inputs, in value units (rounding included)."""
        return self.clip + math.sqrt(self.dimension) / self.scale

    @property
    def sigma(self) -> float:
        """Std of the total noise of a sum, value units."""
        return self.noise_multiplier * self.sensitivity

    @property
    def share_grid_sigma(self) -> float:
        """Std of one platform's noise share, grid steps."""
        return self.sigma * self.scale / math.sqrt(self.n_min)

    @property
    def headroom(self) -> float:
        """Room left on each side of a noiseless value (value units): t * sigma_i, t from the tail bound."""
        tail = TAIL_SHARE * self.delta / (self.rounds * MAX_COHORT * self.dimension)  # per coordinate
        t = math.sqrt(2.0 * math.log(2.0 / tail))  # P(|N| > t sigma) <= 2 exp(-t^2 / 2), N sub-Gaussian
        return t * self.share_grid_sigma / self.scale

    @property
    def box(self) -> float:
        """Noiseless values are clipped to [-box, box] so that value + noise stays in [-c, c]."""
        return self.clip_range - self.headroom


def mechanism(
    target_epsilon: float, delta: float, clip: float, rounds: int, dimension: int, scale: float, clip_range: float,
    n_min: int, user_rate: float = 1.0,
) -> Mechanism:  # fmt: skip
    """Calibrate the run's mechanism; PrivacyError naming the setting to change when none fits."""
    if not clip > 0:
        raise PrivacyError(f"`privacy.clip` must be positive, got {clip}")
    if n_min < 1:
        raise PrivacyError(f"the fewest inputs of a sum must be >= 1, got {n_min}")
    z = calibrate(target_epsilon, (1.0 - TAIL_SHARE) * delta, rounds, user_rate)
    mech = Mechanism(clip, delta, rounds, z, dimension, scale, clip_range, n_min, user_rate)
    if mech.share_grid_sigma < MIN_GRID_SIGMA:
        raise PrivacyError(
            f"each platform's noise is {mech.share_grid_sigma:.3g} grid steps, below {MIN_GRID_SIGMA:g}: raise "
            "`secure.quant-bits` or lower `secure.clip-range`"
        )
    if mech.box <= 0:
        need = mech.headroom + clip
        raise PrivacyError(
            f"`secure.clip-range` = {clip_range:g} leaves no room for the noise (headroom {mech.headroom:.3g} on "
            f"each side): raise it to at least {need:.3g}, more to hold many users' summed contributions"
        )
    return mech


def run_mechanism(cfg: AppConfig, dimension: int, n_min: int | None = None) -> Mechanism:
    """The run's mechanism for contributions of ``dimension`` values (shared tensors + the count).

    The grid is the secure-aggregation one (``secure.clip-range``, ``secure.quant-bits``); ``n_min``
    defaults to the Shamir threshold of a cohort of ``secure.min-cohort``, the fewest inputs a sum
    the server can unmask holds (a platform may pass the lower threshold of its own policy).
    """
    if not cfg.privacy.enabled:
        raise PrivacyError("differential privacy is off (`privacy.target-epsilon` = 0)")
    if not cfg.privacy.delta > 0:
        raise PrivacyError("`privacy.delta` is 0 (1/N users): the run must resolve it before a round (simulations "
                           "count the users; a deployment sets `privacy.delta`)")  # fmt: skip
    shares = min_shares(cfg.secure) if n_min is None else n_min
    return mechanism(cfg.privacy.target_epsilon, cfg.privacy.delta, cfg.privacy.clip, cfg.num_server_rounds,
                     dimension, grid_scale(cfg.secure.quant_bits, cfg.secure.clip_range), cfg.secure.clip_range,
                     shares, cfg.privacy.user_rate)  # fmt: skip


def min_shares(secure: SecureSpec, min_cohort: int | None = None) -> int:
    """The Shamir threshold of the smallest cohort (``secure.min-cohort`` unless given): the fewest inputs,
    hence noise shares, of any sum the server can unmask; t = max(ceil(f n), floor(2n/3) + 1), at most n."""
    return shamir_threshold(secure.min_cohort if min_cohort is None else min_cohort, secure.threshold_fraction)


# ------------------------------------------------------------------ the platform's side (numpy)


def clip_l2(vector: np.ndarray, bound: float) -> tuple[np.ndarray, bool]:
    """``vector`` scaled down to L2 norm ``bound`` if longer; (result, whether it was clipped)."""
    norm = float(np.linalg.norm(vector))
    if norm <= bound:
        return vector, False
    return vector * (bound / norm), True


def discrete_gaussian(rng: np.random.Generator, sigma: float, size: int) -> np.ndarray:
    """``size`` independent samples of the discrete Gaussian N_Z(0, sigma^2), int64.

    Canonne, Kamath, Steinke (2020), Algorithm 3: draw Y from the discrete Laplace of scale
    t = floor(sigma) + 1 (a difference of two geometric variables), accept with probability
    exp(-(|Y| - sigma^2 / t)^2 / (2 sigma^2)); vectorised as in google-research's
    ``distributed_dp/discrete_gaussian_utils.py``. Acceptance is above 1/2 for sigma >= 1.
    """
    if not sigma > 0:
        raise PrivacyError(f"the discrete Gaussian needs sigma > 0, got {sigma}")
    t = math.floor(sigma) + 1
    p = -math.expm1(-1.0 / t)  # success probability of the geometric variables
    out = np.empty(size, dtype=np.int64)
    filled = 0
    while filled < size:
        n = max(2 * (size - filled), 64)
        y = rng.geometric(p, n).astype(np.int64) - rng.geometric(p, n).astype(np.int64)
        keep = rng.random(n) < np.exp(-((np.abs(y) - sigma**2 / t) ** 2) / (2.0 * sigma**2))
        take = y[keep][: size - filled]
        out[filled : filled + take.size] = take
        filled += take.size
    return out


@dataclass(frozen=True)
class NoisyContribution:
    """What a platform hands to the (secure) sum, and what it counts about it (kept at home)."""

    values: np.ndarray  # (D,) float64 on the grid: (rint(box(s) * scale) + noise) / scale
    box_clipped: int  # values of s clipped to the box before the noise


def noisy_contribution(summed: np.ndarray, mech: Mechanism, rng: np.random.Generator) -> NoisyContribution:
    """box, quantise to the secure-aggregation grid, add this platform's discrete Gaussian share."""
    box = mech.box
    clipped = int(np.count_nonzero(np.abs(summed) > box))
    grid = np.rint(np.clip(summed, -box, box) * mech.scale).astype(np.int64)
    grid += discrete_gaussian(rng, mech.share_grid_sigma, grid.size)
    q_max = math.floor(mech.clip_range * mech.scale)
    np.clip(grid, -q_max, q_max, out=grid)  # reached only in the tail event that TAIL_SHARE * delta covers
    return NoisyContribution(grid.astype(np.float64) / mech.scale, clipped)


# ------------------------------------------------------------------ the server's side


def contribution_layout(state: Mapping[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
    """Zeros in the layout of a DP contribution: the shared tensors (float64) and the count."""
    out = OrderedDict((k, np.zeros(np.shape(v), dtype=np.float64)) for k, v in state.items())
    out[COUNT] = np.zeros(1, dtype=np.float64)
    return out


def fuse_noisy_sum(
    current: Mapping[str, np.ndarray], summed: Mapping[str, np.ndarray], clip: float
) -> tuple[OrderedDict[str, np.ndarray], float]:
    """(global + noisy sum of user updates / noisy user count, that count): DP-FedAvg at user level.

    The count is the sum's count coordinate over ``COUNT_SHARE * clip`` (at least 1); everything here
    is post-processing of the noisy sum.
    """
    users = max(float(np.asarray(summed[COUNT]).reshape(-1)[0]) / (COUNT_SHARE * clip), 1.0)
    fused = OrderedDict(
        (k, (np.asarray(v, np.float64) + np.asarray(summed[k], np.float64) / users).astype(np.float32))
        for k, v in current.items()
    )
    return fused, users
