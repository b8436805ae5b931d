"""Across cells: mean ranks, Friedman and Nemenyi against scipy and Demšar (2006), the ANOVA, the plots, the advice."""

from __future__ import annotations

import io
import json
import math
import xml.etree.ElementTree as ElementTree

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import scikit_posthocs
from scipy import stats

from app.results.factorial import (
    critical_difference,
    factor_effects,
    iman_davenport,
    mean_ranks_by_level,
    rank_activations,
)
from app.results.factorial_advice import CellResult, how_to_choose
from app.results.factorial_plots import FACTORIAL_PLOT_KINDS, factorial_plot
from app.results.statistics import ResultOptions, compare_pairs, run_summaries, summarise_activations
from tests.results.synthetic import SyntheticArm, synthetic_tables

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Demšar (2006), Table 6 layout: AUC of four C4.5 variants on 14 data sets (one row per block).
# With these values the mean ranks and the uncorrected statistics are the paper's published ones.
DEMSAR_CLASSIFIERS = ("C4.5", "C4.5+m", "C4.5+cf", "C4.5+m+cf")
DEMSAR_TABLE = {
    "adult": (0.763, 0.768, 0.771, 0.798),
    "breast cancer": (0.599, 0.591, 0.590, 0.569),
    "breast cancer wisconsin": (0.954, 0.971, 0.968, 0.967),
    "cmc": (0.628, 0.661, 0.654, 0.654),
    "ionosphere": (0.882, 0.888, 0.886, 0.898),
    "iris": (0.936, 0.931, 0.916, 0.931),
    "liver disorders": (0.661, 0.668, 0.609, 0.685),
    "lung cancer": (0.583, 0.583, 0.563, 0.625),
    "lymphography": (0.775, 0.838, 0.866, 0.875),
    "mushroom": (1.000, 1.000, 1.000, 1.000),
    "primary tumor": (0.940, 0.962, 0.965, 0.962),
    "rheum": (0.619, 0.666, 0.614, 0.669),
    "voting": (0.972, 0.981, 0.975, 0.975),
    "wine": (0.957, 0.978, 0.946, 0.970),
}


def _demsar_runs(*, seeds: int = 1, loss: bool = False) -> pd.DataFrame:
    rows = []
    for cell, values in DEMSAR_TABLE.items():
        for label, value in zip(DEMSAR_CLASSIFIERS, values, strict=True):
            for seed in range(seeds):
                number = 1.0 - value if loss else value
                # Seeds spread symmetrically around the value, so the seed mean is the table's value.
                rows.append({"cell": cell, "activation": label, "seed": seed, "value": number + 0.001 * (seed - 1)})
    return pd.DataFrame(rows)


def test_mean_ranks_and_friedman_match_demsar_and_scipy() -> None:
    ranking = rank_activations(_demsar_runs(), metric="test_accuracy")
    assert ranking.status == "ok"
    published = {"C4.5": 3.143, "C4.5+m": 2.000, "C4.5+cf": 2.893, "C4.5+m+cf": 1.964}
    assert ranking.mean_ranks == pytest.approx(published, abs=5e-4)
    columns = np.array(list(DEMSAR_TABLE.values()))
    expected = stats.friedmanchisquare(*columns.T)
    assert ranking.test == "friedman"
    assert ranking.statistic == pytest.approx(expected.statistic)
    assert ranking.p_value == pytest.approx(expected.pvalue)
    # Demšar's chi2_F = 9.28 and F_F = 3.69 use the mean ranks without scipy's tie correction.
    k, n = 4, len(DEMSAR_TABLE)
    ranks = np.array(list(ranking.mean_ranks.values()))
    chi_square = 12 * n / (k * (k + 1)) * (np.sum(ranks**2) - k * (k + 1) ** 2 / 4)
    assert chi_square == pytest.approx(9.28, abs=0.005)
    assert iman_davenport(chi_square, k, n)[0] == pytest.approx(3.69, abs=0.005)
    f_value = iman_davenport(ranking.statistic or 0.0, k, n)[0]
    assert ranking.iman_davenport_f == pytest.approx(f_value)
    assert ranking.iman_davenport_p == pytest.approx(stats.f.sf(f_value, k - 1, (k - 1) * (n - 1)))
    assert ranking.rejected
    # Demšar: CD = 1.25 at alpha 0.05 for k = 4, N = 14.
    assert ranking.critical_difference == pytest.approx(1.25, abs=0.005)


def test_nemenyi_pairs_come_from_scikit_posthocs() -> None:
    ranking = rank_activations(_demsar_runs(), metric="test_accuracy")
    expected = scikit_posthocs.posthoc_nemenyi_friedman(np.array(list(DEMSAR_TABLE.values())))
    pair = ranking.pairs.set_index(["activation", "opponent"]).loc[("C4.5", "C4.5+m+cf")]
    assert pair["p_value"] == pytest.approx(expected.iloc[0, 3])
    assert pair["rank_difference"] == pytest.approx(3.143 - 1.964, abs=1e-3)
    # 1.18 is below the CD of 1.25: Demšar finds no pair different at 0.05 ...
    assert not ranking.pairs["different"].any()
    # ... and at 0.10 (CD = 1.12) C4.5+m+cf and C4.5+m beat C4.5.
    lenient = rank_activations(_demsar_runs(), metric="test_accuracy", alpha=0.10)
    different = {(row.activation, row.opponent) for row in lenient.pairs.itertuples() if row.different}
    assert different == {("C4.5", "C4.5+m"), ("C4.5", "C4.5+m+cf")}


def test_seed_means_rank_and_lower_is_better_reverses_the_order() -> None:
    accuracy = rank_activations(_demsar_runs(seeds=3), metric="test_accuracy")
    loss = rank_activations(_demsar_runs(seeds=3, loss=True), metric="test_loss")
    assert loss.mean_ranks == pytest.approx(accuracy.mean_ranks)
    assert accuracy.cell_ranks["n"].eq(3).all()
    mushroom = accuracy.cell_ranks[accuracy.cell_ranks["cell"] == "mushroom"]
    assert mushroom["rank"].tolist() == [2.5, 2.5, 2.5, 2.5]


def test_critical_difference_closed_form() -> None:
    q_alpha = stats.studentized_range.ppf(0.95, 4, np.inf) / math.sqrt(2)
    assert q_alpha == pytest.approx(2.569, abs=5e-4)
    assert critical_difference(4, 10, 0.05) == pytest.approx(2.569 * math.sqrt(4 * 5 / 60), abs=1e-3)
    assert critical_difference(4, 10, 0.05) == pytest.approx(1.48, abs=0.005)


def test_too_few_cells_or_activations_is_insufficient_not_an_error() -> None:
    one_cell = _demsar_runs()
    one_cell = one_cell[one_cell["cell"] == "adult"]
    ranking = rank_activations(one_cell, metric="test_accuracy")
    assert ranking.status == "insufficient"
    assert "at least 2 cells" in (ranking.reason or "")
    one_activation = _demsar_runs()
    one_activation = one_activation[one_activation["activation"] == "C4.5"]
    ranking = rank_activations(one_activation, metric="test_accuracy")
    assert ranking.status == "insufficient"
    assert "at least 2 activations" in (ranking.reason or "")
    assert ranking.as_dict()["mean_ranks"] == {}
    for image_format in ("png", "svg"):
        assert factorial_plot("critical-difference", image_format=image_format, ranking=ranking)


def test_a_cell_without_a_finished_seed_of_some_activation_is_left_out() -> None:
    runs = _demsar_runs(seeds=2)
    unfinished = (runs["cell"] == "wine") & (runs["activation"] == "C4.5")
    runs.loc[unfinished, "value"] = math.nan
    one_left = (runs["cell"] == "iris") & (runs["activation"] == "C4.5") & (runs["seed"] == 0)
    runs.loc[one_left, "value"] = math.nan
    ranking = rank_activations(runs, metric="test_accuracy")
    assert ranking.excluded_cells == ("wine",)
    assert ranking.excluded_runs == 3
    assert len(ranking.cells) == 13
    iris = ranking.cell_ranks[(ranking.cell_ranks["cell"] == "iris") & (ranking.cell_ranks["activation"] == "C4.5")]
    assert iris["n"].tolist() == [1]
    assert ranking.as_dict()["excluded_cells"] == ["wine"]


def test_two_activations_use_wilcoxon_over_cells() -> None:
    runs = _demsar_runs()
    runs = runs[runs["activation"].isin(["C4.5", "C4.5+m"])]
    ranking = rank_activations(runs, metric="test_accuracy")
    table = np.array(list(DEMSAR_TABLE.values()))
    expected = stats.wilcoxon(np.round(table[:, 0] - table[:, 1], 12))
    assert ranking.test == "wilcoxon"
    assert ranking.p_value == pytest.approx(expected.pvalue)
    assert ranking.iman_davenport_p is None


def _depth_init_runs(*, interaction: bool) -> pd.DataFrame:
    """A 2 x 2 design (depth x init) x {sigmoid, relu} x 5 seeds; init changes nothing by construction."""
    generator = np.random.default_rng(3)
    noise = generator.normal(0.0, 0.01, size=(2, 5))
    rows = []
    for depth in ("2", "16"):
        for init in ("auto", "default"):
            for index, label in enumerate(("sigmoid", "relu")):
                if interaction:
                    mean = 0.9 if (label == "sigmoid") == (depth == "2") else 0.7
                else:
                    mean = (0.9 if label == "sigmoid" else 0.8) - (0.1 if depth == "16" else 0.0)
                for seed in range(5):
                    rows.append(
                        {
                            "cell": f"hidden={depth}, init={init}",
                            "activation": label,
                            "seed": seed,
                            "value": mean + noise[index, seed],
                            "model.hidden": depth,
                            "training.init": init,
                        }
                    )
    return pd.DataFrame(rows)


def test_effects_anova_finds_a_planted_interaction() -> None:
    effects = factor_effects(_depth_init_runs(interaction=True), factors=["model.hidden", "training.init"])
    depth, init = effects
    assert depth.status == "ok"
    assert depth.levels == ("2", "16")
    interaction = depth.term("interaction")
    assert interaction["p_value"] is not None and interaction["p_value"] < 1e-6
    assert interaction["partial_eta_squared"] is not None and interaction["partial_eta_squared"] > 0.9
    means = depth.means.set_index(["level", "activation"])
    assert means.loc[("2", "sigmoid"), "mean"] == pytest.approx(0.9, abs=0.02)
    assert means.loc[("16", "sigmoid"), "mean"] == pytest.approx(0.7, abs=0.02)
    assert means.loc[("16", "relu"), "n"] == 5
    assert (
        means.loc[("16", "relu"), "ci_low"] < means.loc[("16", "relu"), "mean"] < means.loc[("16", "relu"), "ci_high"]
    )
    # Init levels carry identical numbers: no interaction, no effect.
    assert init.term("interaction")["p_value"] == pytest.approx(1.0)
    assert init.term("interaction")["partial_eta_squared"] == pytest.approx(0.0, abs=1e-9)


def test_effects_anova_without_interaction() -> None:
    effects = factor_effects(_depth_init_runs(interaction=False), factors=["model.hidden"])
    terms = {name: effects[0].term(name) for name in ("activation", "factor", "interaction")}
    assert terms["interaction"]["p_value"] is not None and terms["interaction"]["p_value"] > 0.05
    assert terms["interaction"]["partial_eta_squared"] is not None and terms["interaction"]["partial_eta_squared"] < 0.2
    assert terms["activation"]["p_value"] is not None and terms["activation"]["p_value"] < 1e-6
    assert terms["factor"]["p_value"] is not None and terms["factor"]["p_value"] < 1e-6


def test_effects_with_one_seed_per_level_are_insufficient() -> None:
    runs = _depth_init_runs(interaction=True)
    runs = runs[(runs["seed"] == 0) & (runs["training.init"] == "auto")]
    (effect,) = factor_effects(runs, factors=["model.hidden"])
    assert effect.status == "insufficient"
    assert effect.term("interaction")["p_value"] is None
    assert effect.as_dict()["anova"] == []
    exact = _depth_init_runs(interaction=True)
    exact["value"] = exact["value"].round(1)
    (effect,) = factor_effects(exact, factors=["model.hidden"])
    assert effect.status == "insufficient"
    assert "no residual" in (effect.reason or "")


def test_views_are_json_ready() -> None:
    ranking = rank_activations(_demsar_runs(), metric="test_accuracy")
    encoded = json.loads(json.dumps(ranking.as_dict()))
    assert encoded["mean_ranks"]["C4.5"] == pytest.approx(3.143, abs=5e-4)
    assert encoded["pairs"][0]["different"] is False
    effects = factor_effects(_depth_init_runs(interaction=True), factors=["model.hidden"])
    encoded = json.loads(json.dumps([effect.as_dict() for effect in effects]))
    assert [row["term"] for row in encoded[0]["anova"]] == ["activation", "factor", "interaction", "residual"]
    assert encoded[0]["anova"][3]["p_value"] is None


def test_mean_ranks_per_level_of_a_factor() -> None:
    runs = _depth_init_runs(interaction=True)
    ranking = rank_activations(runs, metric="test_accuracy")
    by_depth = mean_ranks_by_level(ranking, runs, "model.hidden").set_index(["level", "activation"])
    assert by_depth.loc[("2", "sigmoid"), "mean_rank"] == 1.0
    assert by_depth.loc[("16", "relu"), "mean_rank"] == 1.0
    assert by_depth.loc[("16", "relu"), "cells"] == 2


@pytest.mark.parametrize("kind", sorted(FACTORIAL_PLOT_KINDS))
def test_plots_render_for_a_two_by_two_design(kind: str) -> None:
    runs = _depth_init_runs(interaction=True)
    ranking = rank_activations(runs, metric="test_accuracy")
    effects = factor_effects(runs, factors=["model.hidden", "training.init"])
    options = {"ranking": ranking, "effects": effects, "metric": "test_accuracy"}
    png = factorial_plot(kind, image_format="png", **options)
    assert png.startswith(PNG_SIGNATURE)
    height, width = matplotlib.image.imread(io.BytesIO(png)).shape[:2]
    assert height > 100 and width > 300
    svg = factorial_plot(kind, image_format="svg", **options)
    assert b"<svg" in svg
    ElementTree.fromstring(svg)
    assert factorial_plot(kind, image_format="svg", **options) == svg


def test_unknown_plot_kind_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="critical-difference, interaction"):
        factorial_plot("bars", image_format="png")


def _cell(
    depth: str, init: str, accuracies: dict[str, float], *, noise: float = 0.005
) -> tuple[CellResult, pd.DataFrame]:
    arms = [SyntheticArm(label, label, accuracy, noise=noise) for label, accuracy in accuracies.items()]
    runs, metrics, _ = synthetic_tables(arms, seeds=tuple(range(8)))
    options = ResultOptions(metric="test_accuracy")
    summary = summarise_activations(metrics, options=options, runs=runs)
    pairs = compare_pairs(metrics, options=options, runs=runs)
    label = f"hidden={depth}, init={init}"
    per_run = run_summaries(metrics, options=options, runs=runs).assign(
        cell=label, **{"model.hidden": depth, "training.init": init}
    )
    return CellResult(label, {"model.hidden": depth, "training.init": init}, summary, pairs), per_run


def _planted_cells(*, with_pairs: bool = True) -> tuple[list[CellResult], pd.DataFrame]:
    cells, tables = [], []
    for depth in ("2", "16"):
        for init in ("auto", "default"):
            shallow = depth == "2"
            accuracies = {"relu": 0.80 if shallow else 0.90, "sigmoid": 0.90 if shallow else 0.50, "tanh": 0.85}
            cell, per_run = _cell(depth, init, accuracies)
            cells.append(cell if with_pairs else CellResult(cell.label, cell.levels, cell.summary))
            tables.append(per_run)
    return cells, pd.concat(tables, ignore_index=True)


def test_how_to_choose_says_depth_changes_the_ranking_and_init_does_not() -> None:
    cells, per_run = _planted_cells()
    effects = factor_effects(per_run, factors=["model.hidden", "training.init"])
    sentences = how_to_choose(cells, effects=effects)
    text = "\n".join(sentences)
    assert "In cell hidden=2, init=auto, sigmoid is best on test_accuracy" in text
    assert "In cell hidden=16, init=default, relu is best on test_accuracy" in text
    depth = next(sentence for sentence in sentences if sentence.startswith("model.hidden"))
    assert depth.startswith("model.hidden changes the ranking")
    assert "at model.hidden=2 the best is sigmoid in 2 of 2 cells" in depth
    assert "at model.hidden=16 the best is relu in 2 of 2 cells" in depth
    init = next(sentence for sentence in sentences if sentence.startswith("training.init"))
    assert init.startswith("training.init does not change the ranking in the measured cells")
    assert "sigmoid where model.hidden=2; relu where model.hidden=16" in init
    assert "activation x training.init interaction: p = 1, partial eta squared = 0.00" in init
    assert sentences[-1].startswith("These statements hold for the measured cells only")
    assert "model.hidden in 2, 16" in sentences[-1]


def test_how_to_choose_from_baseline_verdicts_and_with_weak_evidence() -> None:
    cells, _ = _planted_cells(with_pairs=False)
    sentences = how_to_choose(cells)
    depth = next(sentence for sentence in sentences if sentence.startswith("model.hidden"))
    # relu (the baseline) is shown worse than sigmoid in the shallow cells, so the change is shown.
    assert depth.startswith("model.hidden changes the ranking")
    # Two activations that swap places by far less than the seed noise: the evidence is too weak to say.
    close = []
    for depth_level, first in (("2", 0.80), ("16", 0.79)):
        cell, _ = _cell(depth_level, "auto", {"relu": first, "gelu": 0.795}, noise=0.05)
        close.append(cell)
    sentences = how_to_choose(close)
    assert any("not separated from it (evidence too weak)" in sentence for sentence in sentences)
    assert any(sentence.startswith("model.hidden may change the ranking") for sentence in sentences)


def test_a_significant_interaction_changes_the_ranking_even_with_the_same_best() -> None:
    cells, tables = [], []
    for init, relu in (("auto", 0.80), ("default", 0.60)):
        cell, per_run = _cell("2", init, {"relu": relu, "sigmoid": 0.90})
        cells.append(cell)
        tables.append(per_run)
    effects = factor_effects(pd.concat(tables, ignore_index=True), factors=["training.init"])
    sentences = how_to_choose(cells, effects=effects)
    init = next(sentence for sentence in sentences if sentence.startswith("training.init"))
    assert init.startswith(
        "training.init changes the ranking (the interaction with the activation is significant, "
        "though the best activation is the same at every level)"
    )
    assert "model.hidden" not in init
