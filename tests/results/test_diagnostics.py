"""Diagnostics per activation and the rules of the plain-language recommendation."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from app.results.diagnostics import (
    RecommendationInputs,
    learned_parameters_by_layer,
    recommend,
    summarise_diagnostics,
    tied_best,
)
from app.results.statistics import ResultOptions, compare_pairs, summarise_activations
from tests.results.synthetic import SyntheticArm, synthetic_tables


def _inputs(arms: list[SyntheticArm], *, seeds: range = range(8), classes: int = 10) -> RecommendationInputs:
    runs, metrics, layers = synthetic_tables(arms, seeds=seeds)
    options = ResultOptions()
    summary = summarise_activations(metrics, options=options, runs=runs)
    accuracy = dict(zip(summary["activation"], summary["mean"], strict=True))
    return RecommendationInputs(
        summary=summary,
        pairs=compare_pairs(metrics, options=options, runs=runs),
        diagnostics=summarise_diagnostics(layers, runs=runs),
        final_accuracy=accuracy,
        classes=classes,
    )


def _row(frame: pd.DataFrame, label: str) -> pd.Series:
    return frame[frame["activation"] == label].iloc[0]


def test_gradient_ratio_flags_and_unit_fractions() -> None:
    runs, _, layers = synthetic_tables(
        [
            SyntheticArm("sigmoid", "sigmoid", 0.5, gradient_profile=(1e-5, 1e-2, 1.0), saturated_fraction=0.8),
            SyntheticArm("relu", "relu", 0.9, gradient_profile=(2.0, 1.5, 1.0), dead_fraction=0.25),
            SyntheticArm("selu", "selu", 0.9, gradient_profile=(1e4, 10.0, 1.0)),
        ]
    )
    frame = summarise_diagnostics(layers, runs=runs)
    sigmoid, relu, selu = (_row(frame, label) for label in ("sigmoid", "relu", "selu"))
    assert sigmoid["gradient_ratio_first_epoch"] == pytest.approx(1e-5)
    assert sigmoid["gradient_ratio_last_epoch"] == pytest.approx(1e-5)
    assert bool(sigmoid["vanishing"]) and not bool(sigmoid["exploding"])
    assert sigmoid["saturated_fraction"] == pytest.approx(0.8)
    assert math.isnan(sigmoid["dead_fraction"])
    assert relu["gradient_ratio_last_epoch"] == pytest.approx(2.0)
    assert not bool(relu["vanishing"]) and not bool(relu["exploding"])
    assert relu["dead_fraction"] == pytest.approx(0.25)
    assert bool(selu["exploding"])
    assert (relu["first_epoch"], relu["last_epoch"]) == (1, 5)


def test_ratios_are_averaged_geometrically_over_seeds() -> None:
    runs, _, layers = synthetic_tables([SyntheticArm("relu", "relu", 0.9, gradient_profile=(1.0, 1.0))], seeds=[0, 1])
    # Seed 0 has ratio 100, seed 1 ratio 0.01: the geometric mean is 1, the arithmetic one would be 50.
    layers.loc[(layers["seed"] == 0) & (layers["layer"] == 1), "grad_norm"] = 50.0
    layers.loc[(layers["seed"] == 1) & (layers["layer"] == 1), "grad_norm"] = 0.005
    frame = summarise_diagnostics(layers, runs=runs)
    assert frame["gradient_ratio_last_epoch"].item() == pytest.approx(1.0)


def test_learned_parameters_are_averaged_over_layers_and_seeds_at_the_last_epoch() -> None:
    runs, _, layers = synthetic_tables([SyntheticArm("prelu", "prelu", 0.9, parameters={"slope": 0.2})], seeds=[0, 1])
    last = layers["epoch"] == layers["epoch"].max()
    layers.loc[last & (layers["seed"] == 1) & (layers["layer"] == 1), "activation_parameters"] = [{"slope": 0.4}]
    frame = summarise_diagnostics(layers, runs=runs)
    assert bool(frame["learnable"].item())
    # Layers 1 and 2 of seed 0 (0.2, 0.2) and of seed 1 (0.4, 0.2).
    assert frame["learned_parameters"].item() == {"slope": pytest.approx(0.25)}
    by_layer = learned_parameters_by_layer(layers)
    assert list(by_layer["layer"]) == [1, 2]
    assert by_layer["parameters"].iloc[0] == {"slope": pytest.approx(0.3)}


def test_fixed_activations_report_no_learned_parameters() -> None:
    runs, _, layers = synthetic_tables([SyntheticArm("relu", "relu", 0.9)])
    frame = summarise_diagnostics(layers, runs=runs)
    assert not bool(frame["learnable"].item())
    assert frame["learned_parameters"].item() is None


def test_recommendation_names_the_best_and_the_activations_tied_with_it() -> None:
    inputs = _inputs(
        [
            SyntheticArm("relu", "relu", 0.80, noise=0.002),
            SyntheticArm("gelu", "gelu", 0.90, noise=0.002),
            SyntheticArm("silu", "silu", 0.90, noise=0.002),
        ]
    )
    best = tied_best(inputs.summary, inputs.pairs)
    assert best[0] in ("gelu", "silu") and set(best) == {"gelu", "silu"}
    sentences = recommend(inputs)
    assert sentences[0].startswith(f"{best[0]} ranks first on test_accuracy (final)")
    assert any("statistically tied with" in sentence and best[1] in sentence for sentence in sentences)
    assert any(f"{best[0]} is significantly better than relu" in sentence for sentence in sentences)
    assert not any("failed to train" in sentence for sentence in sentences)


@pytest.mark.parametrize(("seeds", "warned"), [(4, True), (8, False)])
def test_a_tie_over_few_seeds_is_called_weak_evidence(seeds: int, warned: bool) -> None:
    inputs = _inputs(
        [SyntheticArm("gelu", "gelu", 0.90, noise=0.02), SyntheticArm("silu", "silu", 0.90, noise=0.02)],
        seeds=range(seeds),
    )
    sentences = recommend(inputs)
    assert any("statistically tied with" in sentence for sentence in sentences)
    caveat = [sentence for sentence in sentences if "has little power" in sentence]
    assert bool(caveat) is warned
    if warned:
        assert caveat[0].startswith(f"With only {seeds} seeds per activation")


def test_recommendation_explains_a_failure_with_the_measured_diagnostic() -> None:
    inputs = _inputs(
        [
            SyntheticArm("relu", "relu", 0.9),
            SyntheticArm(
                "sigmoid",
                "sigmoid",
                0.12,
                statuses={0: "diverged"},
                gradient_profile=(2e-5, 1e-2, 1.0),
                saturated_fraction=0.85,
            ),
        ]
    )
    failure = next(sentence for sentence in recommend(inputs) if sentence.startswith("sigmoid failed to train"))
    assert "diverged in 1 of 8 runs" in failure
    assert "stayed near chance" in failure and "chance level of 0.1" in failure
    assert "vanishing gradients (first-to-last layer gradient-norm ratio 2.00e-05" in failure
    assert "85% of a layer's units saturated" in failure


def test_recommendation_says_when_no_diagnostic_explains_a_failure() -> None:
    inputs = _inputs([SyntheticArm("relu", "relu", 0.9), SyntheticArm("elu", "elu", 0.11)])
    failure = next(sentence for sentence in recommend(inputs) if sentence.startswith("elu failed to train"))
    assert "none of the measured diagnostics" in failure


def test_dead_units_are_reported_for_an_activation_that_trained() -> None:
    inputs = _inputs([SyntheticArm("relu", "relu", 0.9, dead_fraction=0.6), SyntheticArm("elu", "elu", 0.9)])
    assert "relu trained but shows dead units (on average 60% of a layer's units" in " ".join(recommend(inputs))


def test_cost_sentence_relates_each_activation_to_the_fastest() -> None:
    inputs = _inputs(
        [
            SyntheticArm("relu", "relu", 0.9, epoch_seconds=0.2),
            SyntheticArm("elu", "elu", 0.9, epoch_seconds=0.21),
            SyntheticArm("pau", "pau", 0.9, epoch_seconds=0.6),
        ]
    )
    cost = next(sentence for sentence in recommend(inputs) if sentence.startswith("Cost per epoch"))
    assert "relu and elu are fastest (0.2 s per epoch" in cost
    assert "pau 3x" in cost


def test_one_seed_asks_for_more_seeds_and_claims_no_significance() -> None:
    sentences = recommend(_inputs([SyntheticArm("relu", "relu", 0.9), SyntheticArm("elu", "elu", 0.8)], seeds=range(1)))
    assert any("add seeds" in sentence for sentence in sentences)
    assert not any("significantly" in sentence for sentence in sentences)


def test_learned_values_appear_only_for_learnable_activations() -> None:
    inputs = _inputs(
        [SyntheticArm("relu", "relu", 0.9), SyntheticArm("prelu", "prelu", 0.9, parameters={"slope": 0.07})]
    )
    learned = [sentence for sentence in recommend(inputs) if " learned " in sentence]
    assert learned == ["prelu learned slope = 0.07 at the last epoch (mean over layers and seeds)."]


def _summary_frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    defaults = {
        "metric": "test_accuracy",
        "summary": "final",
        "n": 3,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "runs": 3,
        "diverged": 0,
        "failed": 0,
        "cancelled": 0,
        "timed_out": 0,
        "mean_epoch_seconds": 0.1,
    }
    return pd.DataFrame([{**defaults, "activation_index": index, **row} for index, row in enumerate(rows)])


def _pairs_frame(outcomes: dict[tuple[str, str], str]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"activation": first, "opponent": second, "outcome": outcome} for (first, second), outcome in outcomes.items()]
    )


def test_a_lower_ranked_activation_that_wins_on_shared_seeds_is_reported_as_such() -> None:
    summary = _summary_frame(
        [{"activation": "relu", "mean": 0.9, "rank": 1.0}, {"activation": "gelu", "mean": 0.89, "rank": 2.0}]
    )
    pairs = _pairs_frame({("gelu", "relu"): "win", ("relu", "gelu"): "loss"})
    sentences = recommend(RecommendationInputs(summary=summary, pairs=pairs, diagnostics=None))
    assert "gelu beats relu on the seeds both finished" in " ".join(sentences)
    assert not any("tied" in sentence for sentence in sentences)


def test_untestable_pairs_are_named_and_not_called_tied() -> None:
    summary = _summary_frame(
        [{"activation": "relu", "mean": 0.9, "rank": 1.0}, {"activation": "elu", "mean": 0.8, "rank": 2.0, "n": 1}]
    )
    pairs = _pairs_frame({("elu", "relu"): "insufficient", ("relu", "elu"): "insufficient"})
    sentences = recommend(RecommendationInputs(summary=summary, pairs=pairs, diagnostics=None))
    assert "elu could not be tested against relu" in " ".join(sentences)
    assert not any("tied" in sentence or "significantly" in sentence for sentence in sentences)


def test_exploding_gradients_explain_a_divergence_and_left_out_runs_are_counted() -> None:
    summary = _summary_frame(
        [
            {"activation": "relu", "mean": 0.9, "rank": 1.0, "failed": 1, "timed_out": 1},
            {"activation": "selu", "mean": 0.9, "rank": 2.0, "diverged": 2},
        ]
    )
    diagnostics = pd.DataFrame(
        [
            {"activation": "relu", "gradient_ratio_first_epoch": 1.0, "gradient_ratio_last_epoch": 2.0},
            {"activation": "selu", "gradient_ratio_first_epoch": 5e3, "gradient_ratio_last_epoch": 2e4},
        ]
    )
    sentences = recommend(RecommendationInputs(summary=summary, pairs=None, diagnostics=diagnostics))
    failure = next(sentence for sentence in sentences if sentence.startswith("selu failed to train"))
    assert "diverged in 2 of 3 runs" in failure
    assert "exploding gradients (first-to-last layer gradient-norm ratio 2.00e+04, above 1000)" in failure
    assert "Runs left out of the statistics: 1 failed and 1 timed out." in sentences
    assert not any(sentence.startswith("relu failed") or sentence.startswith("relu trained") for sentence in sentences)


def test_similar_epoch_times_are_reported_as_similar() -> None:
    summary = _summary_frame(
        [
            {"activation": "relu", "mean": 0.9, "rank": 1.0, "mean_epoch_seconds": 0.100},
            {"activation": "elu", "mean": 0.9, "rank": 2.0, "mean_epoch_seconds": 0.105},
        ]
    )
    sentences = recommend(RecommendationInputs(summary=summary, pairs=None, diagnostics=None))
    assert "Cost per epoch: every activation is within 10% of the fastest (0.1 s)." in sentences
