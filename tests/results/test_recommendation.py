"""The plain-language recommendation: failures first, remedies, then the ranking of what trained (issue 11)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from app.catalog import EXPLODING_RATIO, VANISHING_RATIO
from app.gradient_flow import gradient_flag
from app.results.diagnostics import summarise_diagnostics
from app.results.failures import TrainingSetup, chance_accuracy, did_not_train, remedies
from app.results.recommendation import RecommendationInputs, best_choices, recommend
from app.results.statistics import ResultOptions, compare_pairs, summarise_activations
from tests.results.synthetic import SyntheticArm, synthetic_tables
from tests.results.test_verdicts import QUICK_DIGITS, finals


def _inputs(
    arms: list[SyntheticArm],
    *,
    seeds: range = range(8),
    classes: int = 10,
    setup: TrainingSetup | None = None,
) -> RecommendationInputs:
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
        setup=setup or TrainingSetup(),
        experiment_id="e-1",
    )


def test_chance_is_the_most_frequent_training_class_and_the_margin_decides_what_trained() -> None:
    chance = chance_accuracy(classes=10)
    assert chance == pytest.approx(0.1)
    assert chance_accuracy(classes=10, class_counts=[300, 100, 100]) == pytest.approx(0.6)
    # The Elman RNN's tanh arm at 0.177 on 10 balanced classes trained; 0.103 did not.
    assert not did_not_train(0.177, chance=chance, margin=0.05)
    assert did_not_train(0.103, chance=chance, margin=0.05)
    assert did_not_train(0.15, chance=chance, margin=0.05)
    assert not did_not_train(0.103, chance=None)


def test_elman_rnn_at_0_177_trained_and_is_ranked() -> None:
    inputs = _inputs([SyntheticArm("relu", "relu", 0.103, noise=0.002), SyntheticArm("tanh", "tanh", 0.177)])
    sentences = recommend(inputs)
    assert sentences[0].startswith("relu failed to train: it stayed at chance")
    assert not any(sentence.startswith("tanh failed") for sentence in sentences)
    assert any(sentence.startswith("tanh ranks first among those that trained") for sentence in sentences)
    assert best_choices(inputs.summary, inputs.pairs, excluded={"relu"}) == ["tanh"]


def test_deep_mlp_at_chance_starts_with_failures_and_remedies_and_ranks_none() -> None:
    vanishing = (1e-7, 1e-5, 1e-3, 1.0)
    arms = [
        SyntheticArm("sigmoid", "sigmoid", 0.1, noise=0.002, gradient_profile=vanishing, saturated_fraction=0.95),
        SyntheticArm("relu", "relu", 0.1, noise=0.002, gradient_profile=vanishing, dead_fraction=0.7),
    ]
    setup = TrainingSetup(model_kind="mlp", norm="none", residual=False, lr=0.01, init="default")
    sentences = recommend(_inputs(arms, setup=setup))
    assert sentences[0].startswith("sigmoid failed to train: it stayed at chance")
    assert "vanishing gradients (first-to-last layer gradient-norm ratio 1.00e-07" in sentences[0]
    assert "saturation (on average 95%" in sentences[0]
    assert sentences[1].startswith("relu failed to train") and "dead units (on average 70%" in sentences[1]
    remedy = sentences[2]
    assert remedy.startswith("Remedies the service can run next for sigmoid and relu")
    for change in (
        '"training": {"init": "auto"}',
        '"model": {"norm": "batch"}',
        '"model": {"residual": true}',
        '"training": {"lr": 0.001}',
        '"activations": [{"name": "leaky_relu", "params": {"negative_slope": 0.1}}, "elu"]',
    ):
        assert change in remedy, change
    assert sentences[3] == "No activation trained, so none is ranked."
    assert not any("ranks first" in sentence or "any of" in sentence for sentence in sentences)


def test_remedies_for_divergence_lower_the_rate_and_clip_and_skip_what_the_spec_has() -> None:
    found = remedies({"diverged", "exploding"}, TrainingSetup(model_kind="cnn", norm="batch", lr=0.1, init="auto"))
    assert [remedy.change for remedy in found] == ['"training": {"lr": 0.01}', '"training": {"grad_clip": 1.0}']
    clipped = TrainingSetup(model_kind="cnn", norm="batch", lr=0.1, grad_clip=5.0)
    assert [remedy.change for remedy in remedies({"diverged"}, clipped)] == ['"training": {"lr": 0.01}']


def test_quick_digits_never_says_any_of_an_arm_not_shown_equivalent() -> None:
    metrics = finals(QUICK_DIGITS)
    summary = summarise_activations(metrics, options=ResultOptions())
    pairs = compare_pairs(metrics, options=ResultOptions())
    inputs = RecommendationInputs(
        summary=summary,
        pairs=pairs,
        diagnostics=None,
        final_accuracy=dict(zip(summary["activation"], summary["mean"], strict=True)),
        classes=10,
        experiment_id="e-1",
    )
    sentences = recommend(inputs)
    assert not any("any of" in sentence or "tied" in sentence for sentence in sentences)
    assert sentences[0].startswith("relu ranks first on test_accuracy (final)")
    sigmoid = next(sentence for sentence in sentences if sentence.startswith("sigmoid against relu"))
    assert "is inconclusive: mean difference -0.208 (95% bootstrap CI -0.244 to -0.172" in sigmoid
    advice = next(sentence for sentence in sentences if "seeds per activation would settle" in sentence)
    assert "about 9 seeds per activation would settle relu vs tanh" in advice
    assert "about 4 seeds per activation would settle relu vs sigmoid" in advice
    assert "(80% power at alpha 0.05 under Holm over all 3 pairs)" in advice
    assert 'POST /v1/experiments/e-1/seeds and a body such as {"seeds": [2, 3, 4, 5, 6, 7, 8]}' in advice
    assert best_choices(summary, pairs) == ["relu"]


def test_any_of_names_only_activations_shown_equivalent() -> None:
    inputs = _inputs(
        [
            SyntheticArm("relu", "relu", 0.80, noise=0.002),
            SyntheticArm("gelu", "gelu", 0.90, noise=0.002),
            SyntheticArm("silu", "silu", 0.90, noise=0.002),
        ]
    )
    best = best_choices(inputs.summary, inputs.pairs)
    assert set(best) == {"gelu", "silu"}
    sentences = recommend(inputs)
    assert sentences[0].startswith(f"{best[0]} ranks first on test_accuracy (final)")
    equivalent = next(sentence for sentence in sentences if "shown equivalent to" in sentence)
    assert f"so the best choice is any of {best[0]} and {best[1]}." in equivalent
    assert "within plus or minus 0.01 (two one-sided paired t-tests, Holm over all 3 pairs" in equivalent
    assert any(f"{best[0]} is significantly better than relu" in sentence for sentence in sentences)
    assert not any("failed to train" in sentence for sentence in sentences)


def test_an_inconclusive_comparison_over_few_seeds_says_how_many_seeds_would_settle_it() -> None:
    inputs = _inputs(
        [SyntheticArm("gelu", "gelu", 0.90, noise=0.02), SyntheticArm("silu", "silu", 0.88, noise=0.02)],
        seeds=range(4),
    )
    sentences = recommend(inputs)
    assert any(" is inconclusive: mean difference " in sentence for sentence in sentences)
    advice = next(sentence for sentence in sentences if "POST /v1/experiments/e-1/seeds" in sentence)
    assert "(80% power at alpha 0.05 under Holm over all 1 pair)" in advice
    needed = inputs.pairs["seeds_needed"].dropna()
    assert len(needed) and f"about {int(needed.iloc[0])} seeds per activation" in advice


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
    sentences = recommend(inputs)
    failure = sentences[0]
    assert failure.startswith("sigmoid failed to train")
    assert "diverged in 1 of 8 runs" in failure
    assert "stayed at chance: mean final test accuracy" in failure and "at most chance 0.1" in failure
    assert "vanishing gradients (first-to-last layer gradient-norm ratio 2.00e-05" in failure
    assert "85% of a layer's units saturated" in failure
    assert sentences[1].startswith("Remedies the service can run next for sigmoid")
    assert sentences[2].startswith("relu ranks first among those that trained")


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
    assert any("add seeds with POST /v1/experiments/e-1/seeds" in sentence for sentence in sentences)
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
        [
            {"activation": first, "opponent": second, "outcome": outcome, "correction": "Holm over all 1 pair"}
            for (first, second), outcome in outcomes.items()
        ]
    )


def test_a_lower_ranked_activation_that_wins_on_shared_seeds_is_reported_as_such() -> None:
    summary = _summary_frame(
        [{"activation": "relu", "mean": 0.9, "rank": 1.0}, {"activation": "gelu", "mean": 0.89, "rank": 2.0}]
    )
    pairs = _pairs_frame({("gelu", "relu"): "win", ("relu", "gelu"): "loss"})
    sentences = recommend(RecommendationInputs(summary=summary, pairs=pairs, diagnostics=None))
    assert "gelu beats relu on the seeds both finished (Holm over all 1 pair" in " ".join(sentences)
    assert not any("any of" in sentence for sentence in sentences)


def test_untestable_pairs_are_named_and_not_called_equivalent() -> None:
    summary = _summary_frame(
        [{"activation": "relu", "mean": 0.9, "rank": 1.0}, {"activation": "elu", "mean": 0.8, "rank": 2.0, "n": 1}]
    )
    pairs = _pairs_frame({("elu", "relu"): "insufficient", ("relu", "elu"): "insufficient"})
    sentences = recommend(RecommendationInputs(summary=summary, pairs=pairs, diagnostics=None))
    assert "elu could not be tested against relu" in " ".join(sentences)
    assert not any("equivalent" in sentence or "significantly" in sentence for sentence in sentences)


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
    failure = sentences[0]
    assert failure.startswith("selu failed to train")
    assert "diverged in 2 of 3 runs" in failure
    assert "exploding gradients (first-to-last layer gradient-norm ratio 2.00e+04, above 1000)" in failure
    assert '"training": {"grad_clip": 1.0}' in sentences[1]
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


def test_seed_advice_says_when_the_seeds_it_has_should_have_been_enough() -> None:
    summary = _summary_frame(
        [
            {"activation": "relu", "mean": 0.9, "rank": 1.0, "n": 4, "seeds": "0;1;2;3"},
            {"activation": "elu", "mean": 0.89, "rank": 2.0, "n": 4, "seeds": "0;1;2;3"},
        ]
    )
    pairs = _pairs_frame({("elu", "relu"): "inconclusive", ("relu", "elu"): "inconclusive"})
    pairs["paired_n"] = 4
    pairs["seeds_needed"] = 3
    sentences = recommend(RecommendationInputs(summary=summary, pairs=pairs, diagnostics=None, experiment_id="e-2"))
    advice = next(sentence for sentence in sentences if "seeds per activation" in sentence)
    assert "about 3 seeds per activation would settle relu vs elu (it has 4: this draw missed)" in advice
    assert 'a body such as {"seeds": [4]}' in advice


@pytest.mark.parametrize("ratio", [VANISHING_RATIO / 2, VANISHING_RATIO, 1.0, EXPLODING_RATIO, EXPLODING_RATIO * 2])
def test_the_recommendation_flags_gradients_by_the_gradient_flow_rule(ratio: float) -> None:
    summary = _summary_frame([{"activation": "selu", "mean": 0.9, "rank": 1.0, "diverged": 1}])
    diagnostics = pd.DataFrame(
        [{"activation": "selu", "gradient_ratio_first_epoch": ratio, "gradient_ratio_last_epoch": ratio}]
    )
    failure = recommend(RecommendationInputs(summary=summary, pairs=None, diagnostics=diagnostics))[0]
    flag = gradient_flag(ratio)
    assert ("vanishing gradients" in failure) == (flag == "vanishing")
    assert ("exploding gradients" in failure) == (flag == "exploding")
