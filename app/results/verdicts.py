"""Verdicts of paired comparisons: the difference test, the equivalence test (TOST), Holm's correction, effect sizes.

scipy.stats and numpy only. Every comparison is "first minus second" over the seeds both activations
share, d being the per-seed differences of the summary values. The rules (docs/statistics.md gives
their sources):

- Difference test: fewer than 2 pairs gives no test (``insufficient``). All differences zero: p = 1.
  At least 6 non-zero differences: Wilcoxon signed-rank (two-sided, zero differences dropped), because
  below 6 its smallest two-sided p-value, 2 / 2**n, is above 0.05; otherwise the paired t-test
  (two-sided). Differences are rounded to 12 decimals first, so that floating-point noise of equal
  metrics is not mistaken for a difference.
- Equivalence test (Lakens 2017): two one-sided paired t-tests of H0 "mean difference <= -margin" and
  H0 "mean difference >= +margin", each at alpha; the TOST p-value is the larger of the two, which is
  below alpha exactly when the (1 - 2 alpha) t-interval of the mean difference lies inside
  plus or minus the margin. It needs at least ``MINIMUM_EQUIVALENCE_PAIRS`` pairs and a margin; when
  every difference is equal (zero spread) the p-value is 0 inside the margin and 1 outside it.
- Holm's step-down correction (Holm 1979) within the view's family: the comparisons with the baseline
  in the results view, all unordered pairs in the pairwise view. The difference p-values and the TOST
  p-values are each corrected over the family's comparisons that have one.
- Verdict: ``better``/``worse`` when the Holm-adjusted difference p is below alpha (the sign of the mean
  difference in the metric's good direction decides which); else ``equivalent`` when the Holm-adjusted
  TOST p is below alpha; else ``inconclusive`` (neither shown nor excluded). ``insufficient`` when no
  test can run. The pairwise view says ``win``/``loss`` for ``better``/``worse``.
- Probability of outperforming (Bouthillier et al. 2021): the share of shared seeds on which first
  beats second in the metric's good direction, equal values counting one half.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import special, stats

WILCOXON_MINIMUM_PAIRS = 6
MINIMUM_EQUIVALENCE_PAIRS = 3
DIFFERENCE_DECIMALS = 12
VERDICTS: tuple[str, ...] = ("better", "worse", "equivalent", "inconclusive", "insufficient")
PAIR_OUTCOMES: dict[str, str] = {
    "better": "win",
    "worse": "loss",
    "equivalent": "equivalent",
    "inconclusive": "inconclusive",
    "insufficient": "insufficient",
}
MIRRORED_OUTCOMES: dict[str, str] = {"win": "loss", "loss": "win"}


@dataclass(frozen=True)
class PairedTest:
    """The outcome of one paired difference test."""

    test: str | None
    statistic: float | None
    p_value: float | None


@dataclass(frozen=True)
class EquivalenceTest:
    """The outcome of one TOST: the margin, its p-value and the (1 - 2 alpha) t-interval of the mean difference."""

    margin: float | None
    p_value: float | None
    ci_low: float | None
    ci_high: float | None


def clean_differences(differences: Sequence[float] | np.ndarray) -> np.ndarray:
    """Finite differences rounded to ``DIFFERENCE_DECIMALS`` decimals."""
    data = np.round(np.asarray(differences, dtype=float), DIFFERENCE_DECIMALS)
    return data[np.isfinite(data)]


def holm_adjust(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values in the input order; None entries stay None and are not in the family."""
    indexed = [(value, position) for position, value in enumerate(p_values) if value is not None]
    family = len(indexed)
    adjusted: list[float | None] = [None] * len(p_values)
    running_maximum = 0.0
    for step, (value, position) in enumerate(sorted(indexed)):
        # Monotone step-down: an adjusted p never falls below the one before it.
        running_maximum = max(running_maximum, min(1.0, (family - step) * float(value)))
        adjusted[position] = running_maximum
    return adjusted


@dataclass(frozen=True)
class _OneSampleT:
    """Student's one-sample t of the mean against a value: what scipy's ttest_1samp computes, without its
    per-call argument handling (a results table runs dozens of these)."""

    mean: float
    standard_error: float
    freedom: int

    @classmethod
    def of(cls, data: np.ndarray) -> _OneSampleT:
        """The t of ``data`` (at least two values, not all equal)."""
        return cls(float(data.mean()), float(data.std(ddof=1)) / math.sqrt(data.size), int(data.size) - 1)

    def statistic(self, against: float) -> float:
        """t for the null mean ``against``."""
        return (self.mean - against) / self.standard_error

    def p_greater(self, against: float) -> float:
        """One-sided p of mean > against."""
        return float(special.stdtr(self.freedom, -self.statistic(against)))

    def p_less(self, against: float) -> float:
        """One-sided p of mean < against."""
        return float(special.stdtr(self.freedom, self.statistic(against)))

    def p_two_sided(self, against: float) -> float:
        """Two-sided p of mean != against."""
        return float(min(1.0, 2.0 * special.stdtr(self.freedom, -abs(self.statistic(against)))))

    def interval(self, confidence: float) -> tuple[float, float]:
        """The two-sided t-interval of the mean at ``confidence``."""
        quantile = float(special.stdtrit(self.freedom, 0.5 + confidence / 2.0))
        return self.mean - quantile * self.standard_error, self.mean + quantile * self.standard_error


def paired_test(differences: Sequence[float] | np.ndarray) -> PairedTest:
    """Two-sided paired test of zero mean difference, chosen by the rule in the module docstring."""
    data = clean_differences(differences)
    if data.size < 2:
        return PairedTest(None, None, None)
    non_zero = int(np.count_nonzero(data))
    test = "wilcoxon" if non_zero >= WILCOXON_MINIMUM_PAIRS else "paired_t"
    if non_zero == 0:
        return PairedTest(test, 0.0, 1.0)
    with warnings.catch_warnings():
        # Constant differences make scipy warn about precision; its limit (t = inf, p = 0) is what we report.
        warnings.simplefilter("ignore", RuntimeWarning)
        if test == "wilcoxon":
            result = stats.wilcoxon(data, zero_method="wilcox", alternative="two-sided")
            statistic, p_value = float(result.statistic), float(result.pvalue)
        elif float(data.std(ddof=1)) == 0.0:
            # Constant non-zero differences: t is infinite and p is 0, as scipy reports it.
            statistic, p_value = math.copysign(math.inf, float(data.mean())), 0.0
        else:
            t = _OneSampleT.of(data)
            statistic, p_value = t.statistic(0.0), t.p_two_sided(0.0)
    if not math.isfinite(p_value):
        p_value = 1.0
    return PairedTest(test, statistic if math.isfinite(statistic) else None, p_value)


def equivalence_test(
    differences: Sequence[float] | np.ndarray, *, margin: float | None, alpha: float
) -> EquivalenceTest:
    """TOST of |mean difference| < margin with paired t-tests at alpha, and the (1 - 2 alpha) t-interval."""
    data = clean_differences(differences)
    if data.size < 2:
        return EquivalenceTest(margin, None, None, None)
    mean = float(data.mean())
    spread = float(data.std(ddof=1))
    if spread == 0.0:
        ci_low, ci_high = mean, mean
    else:
        ci_low, ci_high = _OneSampleT.of(data).interval(1.0 - 2.0 * alpha)
    if margin is None or data.size < MINIMUM_EQUIVALENCE_PAIRS:
        return EquivalenceTest(margin, None, ci_low, ci_high)
    if spread == 0.0:
        p_value = 0.0 if abs(mean) < margin else 1.0
    else:
        t = _OneSampleT.of(data)
        p_value = max(t.p_greater(-margin), t.p_less(margin))
    return EquivalenceTest(margin, p_value, ci_low, ci_high)


def probability_outperforms(differences: Sequence[float] | np.ndarray, *, lower_is_better: bool) -> float | None:
    """Share of seeds on which first beats second (ties count one half); None without differences."""
    data = clean_differences(differences)
    if data.size == 0:
        return None
    wins = np.count_nonzero(data < 0.0) if lower_is_better else np.count_nonzero(data > 0.0)
    ties = np.count_nonzero(data == 0.0)
    return float((wins + 0.5 * ties) / data.size)


def verdict(
    *,
    mean_difference: float | None,
    p_holm: float | None,
    p_equivalence_holm: float | None,
    alpha: float,
    lower_is_better: bool,
) -> str:
    """``better``, ``worse``, ``equivalent``, ``inconclusive`` or ``insufficient`` for first versus second."""
    if p_holm is None or mean_difference is None:
        return "insufficient"
    if p_holm < alpha and mean_difference != 0.0:
        improves = mean_difference < 0.0 if lower_is_better else mean_difference > 0.0
        return "better" if improves else "worse"
    if p_equivalence_holm is not None and p_equivalence_holm < alpha:
        return "equivalent"
    return "inconclusive"


def baseline_family(comparisons: int, baseline: str) -> str:
    """How the results view corrects: the sentence of its ``correction`` column."""
    noun = "comparison" if comparisons == 1 else "comparisons"
    return f"Holm over the {comparisons} {noun} with the baseline {baseline}"


def reference_family(comparisons: int, reference: str) -> str:
    """How a comparison of experiments corrects: Holm over every (activation, experiment) against the reference."""
    noun = "comparison" if comparisons == 1 else "comparisons"
    return f"Holm over the {comparisons} {noun} with the reference experiment {reference}"


def pairwise_family(pairs: int) -> str:
    """How the pairwise view corrects: the sentence of its ``correction`` column."""
    return f"Holm over all {pairs} pair{'s' if pairs != 1 else ''}"


def pair_matrix(pairs: pd.DataFrame, labels: Sequence[str] | None = None) -> pd.DataFrame:
    """The outcome matrix: rows are activations, columns opponents, cells the row's outcome."""
    order = list(labels) if labels is not None else list(dict.fromkeys(pairs["activation"]))
    matrix = pd.DataFrame("", index=pd.Index(order, name="activation"), columns=order, dtype=object)
    for row in pairs.itertuples(index=False):
        if row.activation in matrix.index and row.opponent in matrix.columns:
            matrix.loc[row.activation, row.opponent] = row.outcome
    return matrix


def outcome_counts(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per activation: how many pairwise comparisons it wins, loses, is shown equivalent in, or cannot decide."""
    outcomes = ("win", "equivalent", "inconclusive", "loss", "insufficient")
    counts = pairs.groupby("activation", sort=False)["outcome"].value_counts().unstack(fill_value=0)
    for outcome in outcomes:
        if outcome not in counts.columns:
            counts[outcome] = 0
    return counts[list(outcomes)].reset_index()
