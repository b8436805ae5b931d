"""Seeds needed: how many paired seeds per activation would settle a comparison with the wanted power.

scipy.stats only (the noncentral t distribution, ``stats.nct``). The rules (docs/statistics.md gives
the sources: Colas et al. 2018 on seeds and power, Lakens 2017 on equivalence tests):

- ``seeds_needed``: the smallest n for which the two-sided paired t-test at alpha has at least the wanted
  power when the true mean difference and the SD of the differences are the observed ones. Under that
  alternative the statistic follows a noncentral t with n - 1 degrees of freedom and noncentrality
  d / sd * sqrt(n), so the power is P(T > t_crit) + P(T < -t_crit). From 6 pairs on the service uses
  the Wilcoxon signed-rank test, whose smallest two-sided p-value is 2 / 2**n, so n is raised to where
  that can fall below alpha. None when the SD or the difference is 0 (nothing to estimate, or nothing
  to detect). The comparisons pass alpha divided by their family's size (app/results/comparisons.py):
  Holm's first, strictest step, so the number settles the comparison in its view.
- ``seeds_needed_equivalence``: the smallest n (at least the TOST's minimum of 3) for which the TOST at
  alpha shows equivalence within the margin with the wanted power when the true difference and SD are
  the observed ones. Its power is P(T1 > t_crit) + P(T2 < -t_crit) - 1, T1 and T2 the two one-sided
  statistics (noncentral t with noncentralities (d + margin) / se and (d - margin) / se), the usual
  approximation that ignores their correlation and errs on the safe side. None when the SD is 0, there
  is no margin, or the observed difference is not inside the margin (no n would show it then).
- The search starts at the normal approximation ((z_a + z_b) * sd / delta)^2 and steps to the exact
  smallest n; beyond ``NORMAL_APPROXIMATION_SEEDS`` seeds the normal approximation is returned, since the
  t and normal distributions no longer differ there; beyond ``MAXIMUM_SEEDS`` the answer is None, as for a
  difference of 0: no practical number of seeds would settle the comparison.
- The search asks scipy for the power at a block of seed counts in one vectorised call (the same numbers as one
  count at a time), and each answer is remembered per distinct input (the functions are pure), since every view
  and option of an experiment's results asks the same comparisons again.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
from scipy import stats

from app.results.verdicts import MINIMUM_EQUIVALENCE_PAIRS, WILCOXON_MINIMUM_PAIRS

DEFAULT_POWER = 0.8
NORMAL_APPROXIMATION_SEEDS = 100_000
MAXIMUM_SEEDS = 10**9
# The search evaluates the power at this many seed counts on each side of the one it needs in one scipy call
# (the distributions are vectorised: one call for a block costs about what one call for one count does).
SEARCH_BLOCK = 8
# Distinct (difference, SD, alpha, power[, margin]) whose answers are kept: a results table asks a handful,
# and every other view or option of the same experiment asks the same ones again.
REMEMBERED_SEARCHES = 4096


def _upper_tails(critical: np.ndarray, freedom: np.ndarray, noncentrality: np.ndarray) -> np.ndarray:
    """P(T > critical) for noncentral t's; scipy answers NaN far out (noncentrality near 1e10), where it is 0 or 1."""
    tails = np.asarray(stats.nct.sf(critical, freedom, noncentrality), dtype=float)
    return np.where(np.isnan(tails), np.where(noncentrality > critical, 1.0, 0.0), tails)


def _paired_t_powers(seeds: np.ndarray, *, difference: float, sd: float, alpha: float) -> np.ndarray:
    freedom = seeds - 1
    critical = np.asarray(stats.t.ppf(1.0 - alpha / 2.0, freedom), dtype=float)
    noncentrality = abs(difference) / sd * np.sqrt(seeds)
    # P(T < -t_crit) as the upper tail of -T: scipy's lower tail is NaN far from a large noncentrality.
    tails = _upper_tails(
        np.concatenate([critical, critical]),
        np.concatenate([freedom, freedom]),
        np.concatenate([noncentrality, -noncentrality]),
    )
    return tails[: seeds.size] + tails[seeds.size :]  # type: ignore[no-any-return]


def paired_t_power(seeds: int, *, difference: float, sd: float, alpha: float) -> float:
    """Power of the two-sided paired t-test over ``seeds`` pairs for a true difference and SD of differences."""
    return float(_paired_t_powers(np.array([seeds]), difference=difference, sd=sd, alpha=alpha)[0])


def _equivalence_powers(seeds: np.ndarray, *, difference: float, sd: float, margin: float, alpha: float) -> np.ndarray:
    freedom = seeds - 1
    critical = np.asarray(stats.t.ppf(1.0 - alpha, freedom), dtype=float)
    error = sd / np.sqrt(seeds)
    tails = _upper_tails(
        np.concatenate([critical, critical]),
        np.concatenate([freedom, freedom]),
        np.concatenate([(difference + margin) / error, (margin - difference) / error]),
    )
    return np.maximum(0.0, tails[: seeds.size] + tails[seeds.size :] - 1.0)  # type: ignore[no-any-return]


def equivalence_power(seeds: int, *, difference: float, sd: float, margin: float, alpha: float) -> float:
    """Power of the paired TOST within plus or minus ``margin`` (the lower bound that ignores correlation)."""
    return float(_equivalence_powers(np.array([seeds]), difference=difference, sd=sd, margin=margin, alpha=alpha)[0])


def _smallest(powers_at: Callable[[np.ndarray], np.ndarray], *, start: float, minimum: int, power: float) -> int | None:
    """The search of the module docstring, one seed count at a time; the powers are computed SEARCH_BLOCK counts
    around each one not yet known, in one call (each count's power is the same as computed alone)."""
    if start > MAXIMUM_SEEDS:
        return None
    if start > NORMAL_APPROXIMATION_SEEDS:
        return math.ceil(start)
    known: dict[int, float] = {}

    def power_at(seeds: int) -> float:
        if seeds not in known:
            block = np.arange(max(minimum, seeds - SEARCH_BLOCK), seeds + SEARCH_BLOCK + 1)
            known.update(zip(block.tolist(), powers_at(block).tolist(), strict=True))
        return known[seeds]

    seeds = max(minimum, math.floor(start))
    while seeds > minimum and power_at(seeds - 1) >= power:
        seeds -= 1
    # "not >=" so that a NaN power keeps searching; the bound keeps a distribution failure from looping.
    while not power_at(seeds) >= power:
        seeds += 1
        if seeds > NORMAL_APPROXIMATION_SEEDS:
            return None
    return seeds


@functools.lru_cache(maxsize=REMEMBERED_SEARCHES)
def seeds_needed(*, difference: float, sd: float, alpha: float, power: float = DEFAULT_POWER) -> int | None:
    """Paired seeds for the two-sided paired t-test at alpha to detect ``difference`` with ``power``."""
    if not (math.isfinite(difference) and math.isfinite(sd)) or difference == 0.0 or sd <= 0.0:
        return None
    normal = ((stats.norm.ppf(1.0 - alpha / 2.0) + stats.norm.ppf(power)) * sd / abs(difference)) ** 2
    needed = _smallest(
        lambda seeds: _paired_t_powers(seeds, difference=difference, sd=sd, alpha=alpha),
        start=normal,
        minimum=2,
        power=power,
    )
    if needed is not None and needed >= WILCOXON_MINIMUM_PAIRS:
        # From 6 pairs on the service tests with Wilcoxon, whose smallest two-sided p is 2 / 2**n.
        needed = max(needed, math.floor(math.log2(2.0 / alpha)) + 1)
    return needed


@functools.lru_cache(maxsize=REMEMBERED_SEARCHES)
def seeds_needed_equivalence(
    *, difference: float, sd: float, margin: float | None, alpha: float, power: float = DEFAULT_POWER
) -> int | None:
    """Paired seeds for the TOST at alpha to show equivalence within ``margin`` with ``power``."""
    if margin is None or not (math.isfinite(difference) and math.isfinite(sd)) or sd <= 0.0:
        return None
    room = margin - abs(difference)
    if room <= 0.0:
        return None
    # With no true difference both one-sided tests must succeed: each gets half the miss rate.
    miss = (1.0 - power) / 2.0 if difference == 0.0 else 1.0 - power
    normal = ((stats.norm.ppf(1.0 - alpha) + stats.norm.ppf(1.0 - miss)) * sd / room) ** 2
    return _smallest(
        lambda seeds: _equivalence_powers(seeds, difference=difference, sd=sd, margin=margin, alpha=alpha),
        start=normal,
        minimum=MINIMUM_EQUIVALENCE_PAIRS,
        power=power,
    )
