"""Cross-seed statistics checked against scipy and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from app.results.statistics import (
    ResultOptions,
    StatisticsError,
    bootstrap_mean_interval,
    compare_pairs,
    run_summaries,
    summarise_activations,
)
from app.results.verdicts import holm_adjust, outcome_counts, pair_matrix, paired_test
from tests.results.synthetic import SyntheticArm, synthetic_tables


def _table(values: dict[str, list[list[float]]], *, statuses: dict[tuple[str, int], str] | None = None) -> pd.DataFrame:
    """A metrics table from {label: [per-seed list of per-epoch test accuracies]}."""
    rows = []
    for index, (label, per_seed) in enumerate(values.items()):
        for seed, curve in enumerate(per_seed):
            status = (statuses or {}).get((label, seed), "succeeded")
            for epoch, accuracy in enumerate(curve, start=1):
                rows.append(
                    {
                        "run_id": f"{label}-{seed}",
                        "activation": label,
                        "activation_index": index,
                        "seed": seed,
                        "epoch": epoch,
                        "status": status,
                        "test_accuracy": accuracy,
                        "train_accuracy": accuracy + 0.1,
                        "test_loss": 1.0 - accuracy,
                        "train_loss": 0.9 - accuracy,
                        "epoch_seconds": 0.5,
                    }
                )
    return pd.DataFrame(rows)


def _row(frame: pd.DataFrame, label: str) -> pd.Series:
    return frame[frame["activation"] == label].iloc[0]


def test_holm_matches_the_textbook_example() -> None:
    # Four tests; sorted p 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, max(0.06, 1*0.04).
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_skips_missing_p_values() -> None:
    adjusted = holm_adjust([0.5, None, 0.4, 0.001])
    assert adjusted[1] is None
    # Family of three: 3*0.001, then max(.., 2*0.4) = 0.8, then min(1, 1*0.5) raised to 0.8 by monotonicity.
    assert adjusted == pytest.approx([0.8, None, 0.8, 0.003])
    assert holm_adjust([0.9, 0.8]) == pytest.approx([1.0, 1.0])


def test_small_samples_use_the_paired_t_test_with_scipys_p_value() -> None:
    first = np.array([0.91, 0.88, 0.93, 0.90])
    second = np.array([0.89, 0.87, 0.90, 0.86])
    result = paired_test(first - second)
    assert result.test == "paired_t"
    assert result.p_value == pytest.approx(stats.ttest_rel(first, second).pvalue)


def test_six_or_more_pairs_use_wilcoxon_with_scipys_p_value() -> None:
    differences = np.array([0.02, 0.03, -0.01, 0.04, 0.05, 0.015, 0.025, -0.005])
    result = paired_test(differences)
    assert result.test == "wilcoxon"
    assert result.p_value == pytest.approx(stats.wilcoxon(differences).pvalue)


def test_all_zero_differences_give_p_one_and_one_pair_gives_no_test() -> None:
    assert paired_test([0.0, 0.0, 0.0]).p_value == 1.0
    assert paired_test([0.03]).p_value is None
    assert paired_test([0.03]).test is None


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time() -> None:
    generator = np.random.default_rng(2024)
    true_mean = 0.7
    covered = 0
    trials = 200
    for trial in range(trials):
        sample = generator.normal(true_mean, 0.05, size=30)
        low, high = bootstrap_mean_interval(sample, resamples=1000, random_seed=trial) or (math.nan, math.nan)
        covered += low <= true_mean <= high
    # Percentile intervals run slightly short at n = 30; a band around 95% of 200 trials.
    assert 0.88 <= covered / trials <= 0.99


def test_bootstrap_interval_is_reproducible_for_the_same_data() -> None:
    values = [0.81, 0.84, 0.79, 0.86, 0.83]
    assert bootstrap_mean_interval(values, random_seed=3) == bootstrap_mean_interval(list(values), random_seed=3)
    assert bootstrap_mean_interval(values, random_seed=3) != bootstrap_mean_interval(values, random_seed=4)
    assert bootstrap_mean_interval([0.5]) is None


def test_summary_values_for_final_best_and_mean_of_last_k() -> None:
    table = _table({"relu": [[0.5, 0.9, 0.7], [0.6, 0.8, 0.8]]})
    final = _row(summarise_activations(table, options=ResultOptions(summary="final")), "relu")
    best = _row(summarise_activations(table, options=ResultOptions(summary="best")), "relu")
    last_two = _row(summarise_activations(table, options=ResultOptions(summary="mean_last_k", k=2)), "relu")
    assert final["mean"] == pytest.approx(0.75)
    assert best["mean"] == pytest.approx(0.85)
    assert last_two["mean"] == pytest.approx((0.8 + 0.8) / 2 / 2 + (0.9 + 0.7) / 2 / 2)
    assert final["std"] == pytest.approx(np.std([0.7, 0.8], ddof=1))
    assert (final["min"], final["median"], final["max"]) == pytest.approx((0.7, 0.75, 0.8))
    # The mean curve 0.55, 0.85, 0.75 peaks at epoch 2; the AUC is the mean over epochs and runs.
    assert final["best_epoch"] == 2
    assert final["area_under_curve"] == pytest.approx(np.mean([0.5, 0.9, 0.7, 0.6, 0.8, 0.8]))
    assert final["generalisation_gap"] == pytest.approx(0.1)
    assert final["mean_epoch_seconds"] == pytest.approx(0.5)


def test_losses_are_lower_is_better() -> None:
    table = _table({"relu": [[0.5, 0.9, 0.7], [0.6, 0.8, 0.8]], "tanh": [[0.4, 0.5, 0.6], [0.4, 0.5, 0.6]]})
    best_loss = summarise_activations(table, options=ResultOptions(metric="test_loss", summary="best"))
    assert _row(best_loss, "relu")["mean"] == pytest.approx(np.mean([0.1, 0.2]))
    assert bool(_row(best_loss, "relu")["lower_is_better"])
    assert _row(best_loss, "relu")["rank"] == 1.0
    assert _row(best_loss, "tanh")["rank"] == 2.0


def test_epochs_to_threshold_is_read_off_the_mean_curve_and_empty_when_never_reached() -> None:
    table = _table({"relu": [[0.5, 0.9, 0.95], [0.6, 0.8, 0.9]], "tanh": [[0.3, 0.4, 0.5], [0.3, 0.4, 0.5]]})
    frame = summarise_activations(table, options=ResultOptions(threshold=0.85))
    assert _row(frame, "relu")["epochs_to_threshold"] == 2
    assert _row(frame, "relu")["seeds_reaching_threshold"] == 2
    assert pd.isna(_row(frame, "tanh")["epochs_to_threshold"])
    assert _row(frame, "tanh")["seeds_reaching_threshold"] == 0


def test_one_seed_gives_no_spread_no_interval_and_an_insufficient_verdict() -> None:
    table = _table({"relu": [[0.5, 0.9]], "gelu": [[0.6, 0.95]]})
    frame = summarise_activations(table, options=ResultOptions())
    gelu = _row(frame, "gelu")
    assert gelu["n"] == 1
    assert math.isnan(gelu["std"]) and math.isnan(gelu["ci_low"])
    assert gelu["verdict"] == "insufficient"
    assert pd.isna(gelu["p_value"])
    assert gelu["rank"] == 1.0


def test_identical_results_share_a_rank_and_are_shown_equivalent() -> None:
    curves = [[0.5, 0.8], [0.6, 0.82], [0.55, 0.79]]
    frame = summarise_activations(_table({"relu": curves, "gelu": curves}), options=ResultOptions())
    assert list(frame["rank"]) == [1.5, 1.5]
    gelu = _row(frame, "gelu")
    assert gelu["p_value"] == 1.0
    assert gelu["verdict"] == "equivalent"
    assert gelu["mean_difference"] == 0.0


def test_baseline_defaults_to_relu_else_the_first_and_rejects_unknown_labels() -> None:
    curves = [[0.5, 0.8], [0.6, 0.82]]
    with_relu = summarise_activations(_table({"tanh": curves, "relu": curves}), options=ResultOptions())
    assert set(with_relu["baseline"]) == {"relu"}
    assert _row(with_relu, "relu")["verdict"] == "baseline"
    without_relu = summarise_activations(_table({"tanh": curves, "gelu": curves}), options=ResultOptions())
    assert set(without_relu["baseline"]) == {"tanh"}
    with pytest.raises(StatisticsError, match="baseline must be one of tanh, gelu"):
        summarise_activations(_table({"tanh": curves, "gelu": curves}), options=ResultOptions(baseline="elu"))


def test_verdicts_follow_holm_adjusted_p_and_the_metric_direction() -> None:
    runs, metrics, _ = synthetic_tables(
        [
            SyntheticArm("relu", "relu", 0.80, noise=0.002),
            SyntheticArm("gelu", "gelu", 0.90, noise=0.002),
            SyntheticArm("sigmoid", "sigmoid", 0.50, noise=0.002),
            SyntheticArm("elu", "elu", 0.80, noise=0.002),
        ],
        seeds=range(8),
    )
    frame = summarise_activations(metrics, options=ResultOptions(), runs=runs)
    assert _row(frame, "gelu")["verdict"] == "better"
    assert _row(frame, "sigmoid")["verdict"] == "worse"
    assert _row(frame, "gelu")["test"] == "wilcoxon"
    raw = [_row(frame, label)["p_value"] for label in ("gelu", "sigmoid", "elu")]
    assert [_row(frame, label)["p_holm"] for label in ("gelu", "sigmoid", "elu")] == pytest.approx(holm_adjust(raw))
    losses = summarise_activations(metrics, options=ResultOptions(metric="test_loss"), runs=runs)
    assert _row(losses, "gelu")["verdict"] == "better"
    assert _row(losses, "gelu")["mean_difference"] < 0


def test_failed_diverged_and_cancelled_runs_are_counted_but_left_out() -> None:
    runs, metrics, _ = synthetic_tables(
        [
            SyntheticArm("relu", "relu", 0.8),
            SyntheticArm("tanh", "tanh", 0.7, statuses={0: "failed", 1: "diverged", 2: "cancelled"}),
        ],
        seeds=range(5),
    )
    frame = summarise_activations(metrics, options=ResultOptions(), runs=runs)
    tanh = _row(frame, "tanh")
    assert (tanh["runs"], tanh["succeeded"], tanh["failed"], tanh["diverged"], tanh["cancelled"]) == (5, 2, 1, 1, 1)
    assert tanh["n"] == 2
    assert tanh["seeds"] == "3;4"
    assert tanh["paired_n"] == 2
    expected = metrics[(metrics["activation"] == "tanh") & metrics["seed"].isin([3, 4]) & (metrics["epoch"] == 5)]
    assert tanh["mean"] == pytest.approx(expected["test_accuracy"].mean())
    included = summarise_activations(metrics, options=ResultOptions(include_diverged=True), runs=runs)
    assert _row(included, "tanh")["n"] == 3
    assert _row(included, "tanh")["seeds"] == "1;3;4"


def test_runs_without_any_epoch_still_count_when_the_runs_table_is_given() -> None:
    runs, metrics, _ = synthetic_tables([SyntheticArm("relu", "relu", 0.8, statuses={0: "failed", 1: "queued"})])
    per_run = run_summaries(metrics, options=ResultOptions(), runs=runs)
    assert len(per_run) == 4
    assert not per_run.loc[per_run["seed"] == 0, "included"].item()
    frame = summarise_activations(metrics, options=ResultOptions(), runs=runs)
    assert (frame["failed"].item(), frame["unfinished"].item(), frame["n"].item()) == (1, 1, 2)


def test_bad_options_name_the_field_and_allowed_values() -> None:
    with pytest.raises(StatisticsError, match="metric must be one of test_accuracy"):
        ResultOptions(metric="accuracy")
    with pytest.raises(StatisticsError, match="summary must be one of final, best, mean_last_k"):
        ResultOptions(summary="last")
    with pytest.raises(StatisticsError, match="alpha"):
        ResultOptions(alpha=1.5)
    with pytest.raises(StatisticsError, match="k must be at least 1"):
        ResultOptions(k=0)
    with pytest.raises(StatisticsError, match="equivalence_margin must be a positive number"):
        ResultOptions(equivalence_margin=0.0)


def test_pairs_are_mirrored_and_holm_corrected_over_all_pairs() -> None:
    runs, metrics, _ = synthetic_tables(
        [
            SyntheticArm("relu", "relu", 0.80, noise=0.002),
            SyntheticArm("gelu", "gelu", 0.90, noise=0.002),
            SyntheticArm("elu", "elu", 0.80, noise=0.002),
        ],
        # Six seeds would not do: Wilcoxon's smallest p, 2/64, times 3 pairs is above 0.05 after Holm.
        seeds=range(8),
    )
    pairs = compare_pairs(metrics, options=ResultOptions(), runs=runs)
    assert len(pairs) == 6
    forward = pairs[(pairs["activation"] == "gelu") & (pairs["opponent"] == "relu")].iloc[0]
    backward = pairs[(pairs["activation"] == "relu") & (pairs["opponent"] == "gelu")].iloc[0]
    assert (forward["outcome"], backward["outcome"]) == ("win", "loss")
    assert forward["mean_difference"] == pytest.approx(-backward["mean_difference"])
    unordered = pairs[pairs["activation_index"] < pairs["opponent_index"]]
    assert list(unordered["p_holm"]) == pytest.approx(holm_adjust(list(unordered["p_value"])))
    matrix = pair_matrix(pairs, ["relu", "gelu", "elu"])
    assert matrix.loc["gelu", "elu"] == "win"
    assert matrix.loc["elu", "gelu"] == "loss"
    assert matrix.loc["relu", "relu"] == ""
    counts = outcome_counts(pairs).set_index("activation")
    assert counts.loc["gelu", "win"] == 2


def test_epoch_0_the_network_at_initialisation_is_in_no_summary_but_starts_the_learning_curve() -> None:
    from app.results.statistics import learning_curves, trained_epochs

    trained = _table({"relu": [[0.5, 0.7, 0.6], [0.4, 0.8, 0.7]], "tanh": [[0.3, 0.35, 0.4], [0.2, 0.3, 0.5]]})
    # Epoch 0 rows that would win every summary if they counted: best, first to the threshold, top AUC.
    initial = trained[trained["epoch"] == 1].assign(epoch=0, test_accuracy=0.99, train_accuracy=0.99)
    with_initial = pd.concat([initial, trained], ignore_index=True)
    assert len(trained_epochs(with_initial)) == len(trained)
    for summary in ("final", "best", "mean_last_k"):
        options = ResultOptions(metric="test_accuracy", summary=summary, k=2, threshold=0.75, resamples=200)
        expected = run_summaries(trained, options=options)
        found = run_summaries(with_initial, options=options)
        pd.testing.assert_frame_equal(found, expected)
        assert found["best_epoch"].min() >= 1
        pd.testing.assert_frame_equal(
            summarise_activations(with_initial, options=options), summarise_activations(trained, options=options)
        )
    curves = learning_curves(with_initial, metric="test_accuracy", resamples=200)
    assert sorted(set(curves["epoch"])) == [0, 1, 2, 3]
    assert curves.loc[curves["epoch"] == 0, "mean"].tolist() == pytest.approx([0.99, 0.99])
