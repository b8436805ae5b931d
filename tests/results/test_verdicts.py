"""Verdicts a researcher can trust (issue 11): equivalence versus inconclusive, one family per view, power."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from app.results.comparisons import family_disagreements
from app.results.power import equivalence_power, paired_t_power, seeds_needed, seeds_needed_equivalence
from app.results.statistics import ResultOptions, compare_pairs, summarise_activations
from app.results.verdicts import equivalence_test, outcome_counts, probability_outperforms


def finals(values: dict[str, list[float]]) -> pd.DataFrame:
    """A one-epoch metrics table from {label: per-seed final test accuracy}."""
    rows = [
        {
            "run_id": f"{label}-{seed}",
            "activation": label,
            "activation_index": index,
            "seed": seed,
            "epoch": 1,
            "status": "succeeded",
            "test_accuracy": accuracy,
            "test_loss": 1.0 - accuracy,
        }
        for index, (label, per_seed) in enumerate(values.items())
        for seed, accuracy in enumerate(per_seed)
    ]
    return pd.DataFrame(rows)


def _row(frame: pd.DataFrame, label: str) -> pd.Series:
    return frame[frame["activation"] == label].iloc[0]


def _pair(pairs: pd.DataFrame, first: str, second: str) -> pd.Series:
    return pairs[(pairs["activation"] == first) & (pairs["opponent"] == second)].iloc[0]


# quick_digits.json (2 seeds): sigmoid 21 points below relu, paired differences -0.244 and -0.172.
QUICK_DIGITS = {"relu": [0.95, 0.93], "tanh": [0.935, 0.925], "sigmoid": [0.706, 0.758]}


def test_quick_digits_two_seeds_is_inconclusive_not_tied() -> None:
    summary = summarise_activations(finals(QUICK_DIGITS), options=ResultOptions())
    sigmoid = _row(summary, "sigmoid")
    assert (sigmoid["difference_ci_low"], sigmoid["difference_ci_high"]) == pytest.approx((-0.244, -0.172))
    assert sigmoid["test"] == "paired_t"
    assert sigmoid["p_value"] == pytest.approx(0.109, abs=5e-4)
    assert sigmoid["paired_n"] == 2
    # Two pairs cannot show equivalence (at least 3 are needed), and p = 0.109 shows no difference.
    assert pd.isna(sigmoid["p_equivalence"])
    assert sigmoid["verdict"] == "inconclusive"
    assert sigmoid["probability_outperforms"] == 0.0
    # Power at alpha / 2, Holm's strictest step over the 2 comparisons with the baseline.
    assert sigmoid["seeds_needed"] == 4
    assert seeds_needed(difference=-0.208, sd=sigmoid["difference_sd"], alpha=0.025) == 4
    assert sigmoid["correction"] == "Holm over the 2 comparisons with the baseline relu"
    pairs = compare_pairs(finals(QUICK_DIGITS), options=ResultOptions())
    assert set(pairs["outcome"]) <= {"win", "loss", "equivalent", "inconclusive", "insufficient"}
    assert _pair(pairs, "sigmoid", "relu")["outcome"] == "inconclusive"
    assert set(pairs["correction"]) == {"Holm over all 3 pairs"}


# classic_five on mnist1d, 3 seeds: sigmoid's raw p against relu is small enough for a family of 5,
# not for the 15 pairs.
CLASSIC_FIVE = {
    "relu": [0.80, 0.82, 0.81],
    "sigmoid": [0.70, 0.735, 0.70],
    "tanh": [0.79, 0.85, 0.77],
    "leaky_relu": [0.83, 0.79, 0.80],
    "elu": [0.81, 0.78, 0.84],
    "gelu_approx": [0.78, 0.84, 0.80],
}


def test_the_two_views_state_their_families_and_the_report_explains_a_disagreement() -> None:
    metrics = finals(CLASSIC_FIVE)
    summary = summarise_activations(metrics, options=ResultOptions())
    pairs = compare_pairs(metrics, options=ResultOptions())
    sigmoid = _row(summary, "sigmoid")
    pair = _pair(pairs, "sigmoid", "relu")
    assert sigmoid["p_value"] == pytest.approx(pair["p_value"])
    assert sigmoid["correction"] == "Holm over the 5 comparisons with the baseline relu"
    assert pair["correction"] == "Holm over all 15 pairs"
    assert sigmoid["p_holm"] < 0.05 <= pair["p_holm"]
    assert (sigmoid["verdict"], pair["outcome"]) == ("worse", "inconclusive")
    # Effect sizes are in both views.
    assert pair["mean_difference"] == pytest.approx(sigmoid["mean_difference"])
    assert pair["probability_outperforms"] == sigmoid["probability_outperforms"] == 0.0
    explained = family_disagreements(summary, pairs)
    assert len(explained) == 1
    assert explained[0].startswith("sigmoid against relu is worse in the results view (Holm over the 5 comparisons")
    assert "but inconclusive in the pairwise matrix (Holm over all 15 pairs" in explained[0]


def test_two_identical_activations_are_equivalent_over_enough_seeds() -> None:
    values = [0.91, 0.88, 0.93, 0.90, 0.89]
    metrics = finals({"relu": values, "relu_again": list(values)})
    summary = summarise_activations(metrics, options=ResultOptions())
    again = _row(summary, "relu_again")
    assert (again["mean_difference"], again["p_equivalence"]) == (0.0, 0.0)
    assert again["verdict"] == "equivalent"
    assert _pair(compare_pairs(metrics, options=ResultOptions()), "relu", "relu_again")["outcome"] == "equivalent"
    # Two seeds are not enough to show it.
    short = summarise_activations(finals({"relu": values[:2], "relu_again": values[:2]}), options=ResultOptions())
    assert _row(short, "relu_again")["verdict"] == "inconclusive"


def test_equivalence_with_seed_noise_needs_the_interval_inside_the_margin() -> None:
    generator = np.random.default_rng(11)
    base = generator.normal(0.9, 0.02, size=12)
    close = base + generator.normal(0.0, 0.004, size=12)
    summary = summarise_activations(finals({"relu": list(base), "gelu": list(close)}), options=ResultOptions())
    gelu = _row(summary, "gelu")
    differences = close - base
    interval = stats.ttest_1samp(differences, 0.0).confidence_interval(0.90)
    assert (gelu["equivalence_ci_low"], gelu["equivalence_ci_high"]) == pytest.approx((interval.low, interval.high))
    assert interval.low > -0.01 and interval.high < 0.01
    assert gelu["verdict"] == "equivalent"
    # A tighter margin than the interval allows is inconclusive.
    tight = summarise_activations(
        finals({"relu": list(base), "gelu": list(close)}), options=ResultOptions(equivalence_margin=0.001)
    )
    assert _row(tight, "gelu")["verdict"] == "inconclusive"


def test_tost_p_is_below_alpha_exactly_when_the_90_percent_interval_is_inside_the_margin() -> None:
    generator = np.random.default_rng(5)
    for _ in range(50):
        differences = generator.normal(generator.uniform(-0.01, 0.01), generator.uniform(0.001, 0.01), size=6)
        result = equivalence_test(differences, margin=0.01, alpha=0.05)
        assert result.p_value is not None and result.ci_low is not None and result.ci_high is not None
        inside = result.ci_low > -0.01 and result.ci_high < 0.01
        assert (result.p_value < 0.05) == inside


def test_loss_metrics_test_equivalence_only_with_a_margin_from_the_caller() -> None:
    values = [0.91, 0.88, 0.93, 0.90, 0.89]
    metrics = finals({"relu": values, "relu_again": list(values)})
    default = _row(summarise_activations(metrics, options=ResultOptions(metric="test_loss")), "relu_again")
    assert pd.isna(default["equivalence_margin"]) and pd.isna(default["p_equivalence"])
    assert default["verdict"] == "inconclusive"
    given = ResultOptions(metric="test_loss", equivalence_margin=0.02)
    assert _row(summarise_activations(metrics, options=given), "relu_again")["verdict"] == "equivalent"


def test_probability_of_outperforming_counts_ties_as_half_and_follows_the_metric_direction() -> None:
    assert probability_outperforms([0.1, -0.2, 0.0, 0.3], lower_is_better=False) == pytest.approx(2.5 / 4)
    assert probability_outperforms([0.1, -0.2, 0.0, 0.3], lower_is_better=True) == pytest.approx(1.5 / 4)
    assert probability_outperforms([], lower_is_better=False) is None


def test_outcome_counts_use_the_new_words() -> None:
    counts = outcome_counts(compare_pairs(finals(QUICK_DIGITS), options=ResultOptions())).set_index("activation")
    assert list(counts.columns) == ["win", "equivalent", "inconclusive", "loss", "insufficient"]
    assert counts.loc["sigmoid", "inconclusive"] == 2


@pytest.mark.parametrize("effect", [0.25, 0.4, 0.6, 1.0, 1.5, 2.0, 3.0])
def test_seeds_needed_matches_the_closed_form_within_one_seed(effect: float) -> None:
    alpha, power = 0.05, 0.8
    z_alpha, z_power = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    # Guenther (1981): the normal approximation plus z_alpha^2 / 2 for the t distribution.
    closed_form = math.ceil(((z_alpha + z_power) / effect) ** 2 + z_alpha**2 / 2)
    needed = seeds_needed(difference=-0.02 * effect, sd=0.02, alpha=alpha, power=power)
    assert needed is not None and abs(needed - closed_form) <= 1
    assert paired_t_power(needed, difference=0.02 * effect, sd=0.02, alpha=alpha) >= power
    assert paired_t_power(needed - 1, difference=0.02 * effect, sd=0.02, alpha=alpha) < power


def test_from_six_seeds_on_seeds_needed_lets_wilcoxon_reach_alpha() -> None:
    # The t-test would need 6 pairs, but from 6 pairs on Wilcoxon decides: 2 / 2**n < 0.005 needs 9.
    assert paired_t_power(6, difference=3.0, sd=1.0, alpha=0.005) >= 0.8
    assert seeds_needed(difference=3.0, sd=1.0, alpha=0.005) == 9
    # Below 6 pairs the t-test decides and no floor applies (its power comes from the upper tails only).
    assert seeds_needed(difference=6.0, sd=1.0, alpha=0.005) == 4
    assert paired_t_power(3, difference=6.0, sd=1.0, alpha=0.005) < 0.8


def test_seeds_needed_is_null_without_spread_or_difference_and_equivalence_needs_room() -> None:
    assert seeds_needed(difference=0.0, sd=0.01, alpha=0.05) is None
    assert seeds_needed(difference=0.01, sd=0.0, alpha=0.05) is None
    assert seeds_needed_equivalence(difference=0.02, sd=0.01, margin=0.01, alpha=0.05) is None
    assert seeds_needed_equivalence(difference=0.0, sd=0.01, margin=None, alpha=0.05) is None
    needed = seeds_needed_equivalence(difference=0.002, sd=0.01, margin=0.01, alpha=0.05)
    assert needed is not None and needed >= 3
    assert equivalence_power(needed, difference=0.002, sd=0.01, margin=0.01, alpha=0.05) >= 0.8
    assert equivalence_power(needed - 1, difference=0.002, sd=0.01, margin=0.01, alpha=0.05) < 0.8


def test_every_view_states_its_summary() -> None:
    metrics = finals(QUICK_DIGITS)
    options = ResultOptions(summary="mean_last_k", k=2)
    assert set(summarise_activations(metrics, options=options)["summary"]) == {"mean_last_2"}
    assert set(compare_pairs(metrics, options=options)["summary"]) == {"mean_last_2"}
    from app.results.statistics import run_summaries

    assert set(run_summaries(metrics, options=options)["summary"]) == {"mean_last_2"}


def test_seeds_needed_is_answered_at_once_for_a_spread_of_rounding_noise() -> None:
    # Differences equal up to their rounding (SD near 1e-12) put the noncentral t where scipy answers NaN; the
    # power is 1 there, so the answer is the smallest n, found at once instead of searching 100,000 seeds.
    assert paired_t_power(10, difference=0.03, sd=1e-12, alpha=0.0125) == 1.0
    assert seeds_needed(difference=0.03, sd=1e-12, alpha=0.0125) == 2
    assert seeds_needed_equivalence(difference=0.003, sd=1e-12, margin=0.01, alpha=0.0125) == 3
