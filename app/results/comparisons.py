"""The columns of one paired comparison (first minus second) and the decisions of one comparison family.

Both views use these: the results view (each activation against the baseline, one family) and the
pairwise view (every pair, one family). The rules live in app/results/verdicts.py (tests, Holm,
verdicts) and app/results/power.py (seeds needed); docs/statistics.md documents them with sources.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from app.results import verdicts
from app.results.power import seeds_needed, seeds_needed_equivalence

if TYPE_CHECKING:
    from app.results.statistics import ResultOptions

COMPARISON_COLUMNS: tuple[str, ...] = (
    "paired_n",
    "mean_difference",
    "difference_ci_low",
    "difference_ci_high",
    "difference_sd",
    "probability_outperforms",
    "test",
    "p_value",
    "p_holm",
    "equivalence_margin",
    "equivalence_ci_low",
    "equivalence_ci_high",
    "p_equivalence",
    "p_equivalence_holm",
    "correction",
    "seeds_needed",
    "seeds_needed_equivalence",
)
INTEGER_COLUMNS: tuple[str, ...] = ("paired_n", "seeds_needed", "seeds_needed_equivalence")
TEXT_COLUMNS: tuple[str, ...] = ("test", "correction")
FLOAT_COLUMNS: tuple[str, ...] = tuple(
    column for column in COMPARISON_COLUMNS if column not in INTEGER_COLUMNS and column not in TEXT_COLUMNS
)


def describe(differences: np.ndarray, interval: tuple[float, float] | None, options: ResultOptions) -> dict[str, Any]:
    """Every comparison column but Holm's, from the per-seed differences and their bootstrap interval."""
    columns: dict[str, Any] = dict.fromkeys(COMPARISON_COLUMNS)
    columns["paired_n"] = int(differences.size)
    if differences.size == 0:
        return columns
    # Rounded like the tests' input, so that equal metrics give exactly zero, not floating-point noise.
    differences = verdicts.clean_differences(differences)
    mean_difference = float(differences.mean())
    spread = float(differences.std(ddof=1)) if differences.size >= 2 else math.nan
    test = verdicts.paired_test(differences)
    equivalence = verdicts.equivalence_test(differences, margin=options.margin, alpha=options.alpha)
    columns.update(
        mean_difference=mean_difference,
        difference_ci_low=interval[0] if interval else None,
        difference_ci_high=interval[1] if interval else None,
        difference_sd=spread if math.isfinite(spread) else None,
        probability_outperforms=verdicts.probability_outperforms(differences, lower_is_better=options.lower_is_better),
        test=test.test,
        p_value=test.p_value,
        equivalence_margin=options.margin,
        equivalence_ci_low=equivalence.ci_low,
        equivalence_ci_high=equivalence.ci_high,
        p_equivalence=equivalence.p_value,
    )
    return columns


def _add_seeds_needed(row: dict[str, Any], options: ResultOptions, family: int) -> None:
    """Seeds needed at alpha / family: Holm's strictest step, so that the comparison is settled in its view."""
    spread = row["difference_sd"]
    if spread is None or row["mean_difference"] is None:
        return
    alpha = options.alpha / max(family, 1)
    difference = float(row["mean_difference"])
    row["seeds_needed"] = seeds_needed(difference=difference, sd=spread, alpha=alpha, power=options.power)
    row["seeds_needed_equivalence"] = seeds_needed_equivalence(
        difference=difference, sd=spread, margin=options.margin, alpha=alpha, power=options.power
    )


def decide_family(rows: Sequence[dict[str, Any]], options: ResultOptions, correction: str) -> list[str]:
    """Holm over the family's difference and TOST p-values; sets p_holm, p_equivalence_holm, correction, seeds."""
    adjusted = verdicts.holm_adjust([row["p_value"] for row in rows])
    adjusted_equivalence = verdicts.holm_adjust([row["p_equivalence"] for row in rows])
    family = sum(1 for p_holm in adjusted if p_holm is not None)
    decided = []
    for row, p_holm, p_equivalence_holm in zip(rows, adjusted, adjusted_equivalence, strict=True):
        row.update(p_holm=p_holm, p_equivalence_holm=p_equivalence_holm, correction=correction)
        _add_seeds_needed(row, options, family)
        decided.append(
            verdicts.verdict(
                mean_difference=row["mean_difference"],
                p_holm=p_holm,
                p_equivalence_holm=p_equivalence_holm,
                alpha=options.alpha,
                lower_is_better=options.lower_is_better,
            )
        )
    return decided


def mirrored(row: dict[str, Any]) -> dict[str, Any]:
    """The same pairwise comparison read from the opponent's side."""

    def negated(name: str) -> float | None:
        return -row[name] if row[name] is not None else None

    probability = row["probability_outperforms"]
    return {
        **row,
        "activation": row["opponent"],
        "opponent": row["activation"],
        "mean_difference": negated("mean_difference"),
        "difference_ci_low": negated("difference_ci_high"),
        "difference_ci_high": negated("difference_ci_low"),
        "equivalence_ci_low": negated("equivalence_ci_high"),
        "equivalence_ci_high": negated("equivalence_ci_low"),
        "probability_outperforms": 1.0 - probability if probability is not None else None,
        "outcome": verdicts.MIRRORED_OUTCOMES.get(row["outcome"], row["outcome"]),
    }


def _adjusted(value: Any) -> str:
    return f"{float(value):.3g}" if value is not None and not pd.isna(value) else "n/a"


def family_disagreements(summary: pd.DataFrame, pairs: pd.DataFrame) -> list[str]:
    """One sentence for each pair on which the results view and the pairwise view disagree, saying why."""
    if summary.empty or pairs.empty or "verdict" not in summary.columns:
        return []
    sentences = []
    for row in summary.to_dict("records"):
        verdict = row.get("verdict")
        if verdict not in verdicts.PAIR_OUTCOMES:
            continue
        match = pairs[(pairs["activation"] == row["activation"]) & (pairs["opponent"] == row["baseline"])]
        if match.empty:
            continue
        pair = match.iloc[0].to_dict()
        if pair["outcome"] == verdicts.PAIR_OUTCOMES[verdict]:
            continue
        sentences.append(
            f"{row['activation']} against {row['baseline']} is {verdict} in the results view ({row['correction']}, "
            f"adjusted p = {_adjusted(row['p_holm'])}) but {pair['outcome']} in the pairwise matrix "
            f"({pair['correction']}, adjusted p = {_adjusted(pair['p_holm'])}): the same paired test, corrected over "
            "a different number of comparisons, and the larger family needs stronger evidence."
        )
    return sentences
