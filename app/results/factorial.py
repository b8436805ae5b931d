"""Statistics across the cells of a factorial experiment: mean ranks, Friedman, Nemenyi, main effects, interactions.

numpy, pandas, scipy.stats, scikit-posthocs and statsmodels; no torch, so the API process can run it on SQL rows.
docs/statistics.md ("Across cells") gives every rule with its source.

The input is a per-run table with the columns ``cell`` (the readable cell label), ``activation``, ``seed``,
``value`` (the run's summary value of the metric, app/results/statistics.py ``run_summaries``; NaN for a
run that did not count: failed, cancelled, timed out, unfinished, diverged unless included) and, for the
effects, one column per factor path holding the run's level as text (``"model.hidden": "[128,128]"``).

- Which runs count: only finite values. A (cell, activation) is the mean of its finite seeds.
- Ranking (Demšar 2006): the blocks are the cells (so datasets too, where ``dataset.name`` is a factor).
  Within each cell the activations are ranked on their seed means, 1 the best in the metric's good
  direction, ties sharing the average rank. A cell where some activation has no finite seed is left out
  of the ranking (the Friedman test needs complete blocks) and listed in ``excluded_cells``.
  Fewer than 2 activations or fewer than 2 complete cells: ``insufficient`` with the reason.
- Omnibus test over cells: Friedman's chi-square (Friedman 1937; scipy.stats.friedmanchisquare, with its
  tie correction) and the Iman-Davenport F = (N-1) chi2 / (N(k-1) - chi2) on (k-1, (k-1)(N-1)) degrees of
  freedom (Iman & Davenport 1980), which Demšar recommends as less conservative; its p-value decides.
  With only 2 activations Friedman is not defined in scipy; the Wilcoxon signed-rank test over the cells'
  seed-mean differences decides instead (Demšar 2006, section 3.1.3; all differences zero: p = 1).
- Post-hoc: Nemenyi's test (Nemenyi 1963; scikit-posthocs ``posthoc_nemenyi_friedman``) for every pair,
  and the critical difference CD = q_alpha * sqrt(k(k+1) / (6N)) with q_alpha the studentized range
  quantile at 1 - alpha for k groups and infinite degrees of freedom divided by sqrt(2). A pair is
  ``different`` only when the omnibus test rejects at alpha and its Nemenyi p-value is below alpha.
- Effects, per factor: the observations are seeds. For each (activation, level, seed) the metric is
  averaged over the other factors' cells at that level (the per-seed marginal mean); the table gives per
  (level, activation) the mean, SD and percentile bootstrap interval over seeds. The interaction of
  activation with the factor is the two-way ANOVA ``value ~ C(activation) * C(level)`` on those
  observations with type II sums of squares (statsmodels ``ols`` + ``anova_lm(typ=2)``), the effect size
  partial eta squared = SS_effect / (SS_effect + SS_residual) (Cohen 1973). It treats seeds as independent
  (pairing across cells is not modelled), and needs every (activation, level) observed and a positive
  residual degree of freedom and some spread between seeds (residual sum of squares above 1e-12 of the
  total), else ``insufficient``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import scikit_posthocs
import statsmodels.formula.api as smf
from scipy import stats
from statsmodels.stats.anova import anova_lm

from app.numbers import finite_or_none
from app.results.statistics import StatisticsError, bootstrap_mean_interval, is_lower_better

Status = Literal["ok", "insufficient"]
RUN_COLUMNS: tuple[str, ...] = ("cell", "activation", "seed", "value")
MINIMUM_ACTIVATIONS = 2
MINIMUM_CELLS = 2
# A residual sum of squares below this share of the total is floating-point noise: the seeds agree exactly.
RESIDUAL_TOLERANCE = 1e-12


def _clean_runs(runs: pd.DataFrame, extra: Sequence[str] = ()) -> pd.DataFrame:
    missing = [column for column in (*RUN_COLUMNS, *extra) if column not in runs.columns]
    if missing:
        raise StatisticsError(f"the per-run table lacks the columns {', '.join(missing)}")
    table = runs[[*RUN_COLUMNS, *extra]].copy()
    table["cell"] = table["cell"].astype(str)
    table["activation"] = table["activation"].astype(str)
    table["value"] = pd.to_numeric(table["value"], errors="coerce").astype(float)
    return table


def _ordered(values: pd.Series, order: Sequence[str] | None) -> list[str]:
    seen = [str(value) for value in pd.unique(values.astype(str))]
    if order is None:
        return seen
    return [str(label) for label in order if str(label) in seen] + [label for label in seen if label not in order]


def cell_means(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (cell, activation): the number of finite seeds and their mean (NaN when none finished)."""
    table = _clean_runs(runs)
    finite = table[np.isfinite(table["value"])]
    grouped = finite.groupby(["cell", "activation"], sort=False)["value"].agg(["count", "mean"])
    every = table[["cell", "activation"]].drop_duplicates()
    merged = every.merge(grouped.reset_index(), on=["cell", "activation"], how="left")
    merged["count"] = merged["count"].fillna(0).astype(int)
    return merged.rename(columns={"count": "n"}).reset_index(drop=True)


def critical_difference(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi's critical difference of mean ranks for k groups over n blocks (Demšar 2006, eq. 5)."""
    if k < 2 or n < 1:
        raise StatisticsError(f"the critical difference needs k >= 2 and n >= 1; got k={k}, n={n}")
    q_alpha = float(stats.studentized_range.ppf(1.0 - alpha, k, np.inf)) / math.sqrt(2.0)
    return q_alpha * math.sqrt(k * (k + 1) / (6.0 * n))


def iman_davenport(chi_square: float, k: int, n: int) -> tuple[float, float]:
    """Iman-Davenport's F from Friedman's chi-square and its p-value on (k-1, (k-1)(n-1)) degrees of freedom."""
    denominator = n * (k - 1) - chi_square
    if denominator <= 0:
        return math.inf, 0.0
    statistic = (n - 1) * chi_square / denominator
    return statistic, float(stats.f.sf(statistic, k - 1, (k - 1) * (n - 1)))


@dataclass(frozen=True)
class Ranking:
    """The ranking view: mean ranks over cells, the omnibus test, Nemenyi pairs and the critical difference."""

    status: Status
    reason: str | None
    metric: str
    lower_is_better: bool
    alpha: float
    activations: tuple[str, ...]
    cells: tuple[str, ...]
    excluded_cells: tuple[str, ...]
    excluded_runs: int
    cell_ranks: pd.DataFrame
    mean_ranks: dict[str, float] = field(default_factory=dict)
    test: str | None = None
    statistic: float | None = None
    p_value: float | None = None
    iman_davenport_f: float | None = None
    iman_davenport_p: float | None = None
    critical_difference: float | None = None
    pairs: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def rejected(self) -> bool:
        """True when the omnibus test over cells rejects "all activations rank alike" at alpha."""
        decisive = self.iman_davenport_p if self.iman_davenport_p is not None else self.p_value
        return decisive is not None and decisive < self.alpha

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: non-finite numbers as None, tables as lists of records."""
        return {
            "status": self.status,
            "reason": self.reason,
            "metric": self.metric,
            "lower_is_better": self.lower_is_better,
            "alpha": self.alpha,
            "activations": list(self.activations),
            "cells": list(self.cells),
            "excluded_cells": list(self.excluded_cells),
            "excluded_runs": self.excluded_runs,
            "mean_ranks": {label: finite_or_none(rank) for label, rank in self.mean_ranks.items()},
            "test": self.test,
            "statistic": finite_or_none(self.statistic),
            "p_value": finite_or_none(self.p_value),
            "iman_davenport_f": finite_or_none(self.iman_davenport_f),
            "iman_davenport_p": finite_or_none(self.iman_davenport_p),
            "critical_difference": finite_or_none(self.critical_difference),
            "rejected": self.rejected,
            "cell_ranks": _records(self.cell_ranks),
            "pairs": _records(self.pairs),
        }


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {key: (finite_or_none(value) if isinstance(value, float) else value) for key, value in row.items()}
        for row in frame.to_dict(orient="records")
    ]


def _rank_cells(means: pd.DataFrame, labels: list[str], lower_is_better: bool) -> pd.DataFrame:
    """Ranks within each cell, 1 the best, ties averaged."""
    matrix = means.pivot(index="cell", columns="activation", values="mean")[labels]
    scores = matrix.to_numpy(dtype=float)
    scores = scores if lower_is_better else -scores
    ranks = stats.rankdata(scores, axis=1, method="average")
    return pd.DataFrame(ranks, index=matrix.index, columns=labels)


def rank_activations(
    runs: pd.DataFrame,
    *,
    metric: str,
    alpha: float = 0.05,
    activations: Sequence[str] | None = None,
    cells: Sequence[str] | None = None,
) -> Ranking:
    """Each activation's mean rank over the cells, the Friedman (or Wilcoxon) test, Nemenyi pairs and the CD."""
    if not 0.0 < alpha < 1.0:
        raise StatisticsError(f"alpha must be between 0 and 1 (exclusive); got {alpha}", field="alpha")
    table = _clean_runs(runs)
    lower = is_lower_better(metric)
    labels = _ordered(table["activation"], activations)
    cell_order = _ordered(table["cell"], cells)
    means = cell_means(table)
    used = [cell for cell in cell_order if _has_all(means, cell, labels)]
    excluded = tuple(cell for cell in cell_order if cell not in used)
    base: dict[str, Any] = {
        "metric": metric,
        "lower_is_better": lower,
        "alpha": alpha,
        "activations": tuple(labels),
        "cells": tuple(used),
        "excluded_cells": excluded,
        "excluded_runs": int((~np.isfinite(table["value"])).sum()),
    }
    empty = pd.DataFrame(columns=["cell", "activation", "n", "mean", "rank"])
    if len(labels) < MINIMUM_ACTIVATIONS:
        reason = f"ranking needs at least {MINIMUM_ACTIVATIONS} activations; the experiment has {len(labels)}"
        return Ranking(status="insufficient", reason=reason, cell_ranks=empty, **base)
    if len(used) < MINIMUM_CELLS:
        reason = (
            f"ranking needs at least {MINIMUM_CELLS} cells in which every activation has a finished seed; "
            f"{len(used)} of {len(cell_order)} cells have one"
        )
        return Ranking(status="insufficient", reason=reason, cell_ranks=empty, **base)
    kept = means[means["cell"].isin(used)]
    ranks = _rank_cells(kept, labels, lower).loc[used]
    long = ranks.reset_index().melt(id_vars="cell", var_name="activation", value_name="rank")
    cell_ranks = kept.merge(long, on=["cell", "activation"], how="left")
    cell_ranks["_cell"] = cell_ranks["cell"].map({cell: i for i, cell in enumerate(used)})
    cell_ranks["_activation"] = cell_ranks["activation"].map({label: i for i, label in enumerate(labels)})
    cell_ranks = cell_ranks.sort_values(["_cell", "_activation"]).drop(columns=["_cell", "_activation"])
    mean_ranks = {label: float(ranks[label].mean()) for label in labels}
    k, n = len(labels), len(used)
    # Scores in the good direction: larger is better, so the Friedman and Nemenyi ranks agree with ours.
    scores = kept.pivot(index="cell", columns="activation", values="mean").loc[used, labels].to_numpy(dtype=float)
    scores = -scores if lower else scores
    omnibus = _omnibus(scores, k, n)
    nemenyi = scikit_posthocs.posthoc_nemenyi_friedman(scores)
    nemenyi.index = nemenyi.columns = labels
    result = Ranking(
        status="ok",
        reason=None,
        cell_ranks=cell_ranks.reset_index(drop=True),
        mean_ranks=mean_ranks,
        critical_difference=critical_difference(k, n, alpha),
        pairs=pd.DataFrame(),
        **omnibus,
        **base,
    )
    pairs = _pairs(labels, mean_ranks, nemenyi, alpha, result.rejected)
    return dataclasses.replace(result, pairs=pairs)


def _has_all(means: pd.DataFrame, cell: str, labels: list[str]) -> bool:
    present = set(means.loc[(means["cell"] == cell) & (means["n"] > 0), "activation"])
    return all(label in present for label in labels)


def _omnibus(scores: np.ndarray, k: int, n: int) -> dict[str, Any]:
    if k == 2:
        differences = np.round(scores[:, 0] - scores[:, 1], 12)
        if not differences.any():
            return {"test": "wilcoxon", "statistic": 0.0, "p_value": 1.0}
        outcome = stats.wilcoxon(differences)
        return {"test": "wilcoxon", "statistic": float(outcome.statistic), "p_value": float(outcome.pvalue)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        outcome = stats.friedmanchisquare(*scores.T)
    chi_square = float(outcome.statistic)
    if not math.isfinite(chi_square):  # every cell ranks all activations alike (all ties)
        return {"test": "friedman", "statistic": 0.0, "p_value": 1.0, "iman_davenport_f": 0.0, "iman_davenport_p": 1.0}
    f_value, f_p = iman_davenport(chi_square, k, n)
    return {
        "test": "friedman",
        "statistic": chi_square,
        "p_value": float(outcome.pvalue),
        "iman_davenport_f": f_value,
        "iman_davenport_p": f_p,
    }


def _pairs(
    labels: list[str], mean_ranks: dict[str, float], nemenyi: pd.DataFrame, alpha: float, rejected: bool
) -> pd.DataFrame:
    rows = []
    for position, first in enumerate(labels):
        for second in labels[position + 1 :]:
            p_value = float(nemenyi.loc[first, second])
            rows.append(
                {
                    "activation": first,
                    "opponent": second,
                    "rank_difference": mean_ranks[first] - mean_ranks[second],
                    "p_value": p_value,
                    "different": bool(rejected and p_value < alpha),
                }
            )
    return pd.DataFrame(rows, columns=["activation", "opponent", "rank_difference", "p_value", "different"])


def mean_ranks_by_level(ranking: Ranking, levels: pd.DataFrame, factor: str) -> pd.DataFrame:
    """Mean rank per (level of one factor, activation) over that level's ranked cells (e.g. per dataset).

    ``levels`` maps each cell to its levels: a ``cell`` column and one column per factor path.
    """
    if factor not in levels.columns:
        raise StatisticsError(f"factor must be one of {', '.join(c for c in levels.columns if c != 'cell')}")
    columns = ["level", "activation", "cells", "mean_rank"]
    if ranking.status != "ok":
        return pd.DataFrame(columns=columns)
    lookup = levels[["cell", factor]].drop_duplicates("cell").astype({"cell": str, factor: str})
    merged = ranking.cell_ranks.merge(lookup, on="cell", how="left")
    grouped = merged.groupby([factor, "activation"], sort=False)["rank"].agg(["count", "mean"]).reset_index()
    grouped.columns = pd.Index(columns)
    return grouped


@dataclass(frozen=True)
class FactorEffect:
    """One factor: the per-(level, activation) seed statistics and the activation x factor ANOVA."""

    factor: str
    levels: tuple[str, ...]
    status: Status
    reason: str | None
    means: pd.DataFrame
    anova: pd.DataFrame

    def term(self, name: str) -> dict[str, float | None]:
        """F, p and partial eta squared of ``activation``, ``factor`` or ``interaction``; Nones when untested."""
        if self.anova.empty or name not in set(self.anova["term"]):
            return {"f": None, "p_value": None, "partial_eta_squared": None}
        row = self.anova.set_index("term").loc[name]
        return {key: finite_or_none(row[key]) for key in ("f", "p_value", "partial_eta_squared")}

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: non-finite numbers as None, tables as lists of records."""
        return {
            "factor": self.factor,
            "levels": list(self.levels),
            "status": self.status,
            "reason": self.reason,
            "means": _records(self.means),
            "anova": _records(self.anova),
        }


ANOVA_TERMS: dict[str, str] = {
    "C(activation)": "activation",
    "C(level)": "factor",
    "C(activation):C(level)": "interaction",
    "Residual": "residual",
}


def factor_effects(
    runs: pd.DataFrame,
    *,
    factors: Sequence[str],
    levels: dict[str, Sequence[str]] | None = None,
    activations: Sequence[str] | None = None,
    confidence: float = 0.95,
    resamples: int = 2000,
    random_seed: int = 0,
) -> list[FactorEffect]:
    """Per factor: mean, SD and CI over seeds per (level, activation), and the activation x factor ANOVA."""
    table = _clean_runs(runs, extra=factors)
    table = table[np.isfinite(table["value"])].copy()
    labels = _ordered(table["activation"], activations)
    effects = []
    for factor in factors:
        table[factor] = table[factor].astype(str)
        order = _ordered(table[factor], (levels or {}).get(factor))
        observations = table.groupby(["activation", factor, "seed"], sort=False)["value"].mean().reset_index()
        observations = observations.rename(columns={factor: "level"})
        means = _level_means(observations, labels, order, confidence, resamples, random_seed)
        status, reason, anova = _anova(observations, labels, order)
        effects.append(
            FactorEffect(factor=factor, levels=tuple(order), status=status, reason=reason, means=means, anova=anova)
        )
    return effects


def _level_means(
    observations: pd.DataFrame,
    labels: list[str],
    order: list[str],
    confidence: float,
    resamples: int,
    random_seed: int,
) -> pd.DataFrame:
    rows = []
    for level in order:
        for label in labels:
            chosen = observations[(observations["level"] == level) & (observations["activation"] == label)]
            values = chosen["value"].to_numpy(dtype=float)
            interval = bootstrap_mean_interval(
                values, confidence=confidence, resamples=resamples, random_seed=random_seed
            )
            rows.append(
                {
                    "level": level,
                    "activation": label,
                    "n": int(values.size),
                    "mean": float(values.mean()) if values.size else math.nan,
                    "std": float(values.std(ddof=1)) if values.size >= 2 else math.nan,
                    "ci_low": interval[0] if interval else math.nan,
                    "ci_high": interval[1] if interval else math.nan,
                }
            )
    return pd.DataFrame(rows, columns=["level", "activation", "n", "mean", "std", "ci_low", "ci_high"])


def _anova(observations: pd.DataFrame, labels: list[str], order: list[str]) -> tuple[Status, str | None, pd.DataFrame]:
    empty = pd.DataFrame(columns=["term", "sum_sq", "df", "f", "p_value", "partial_eta_squared"])
    if len(labels) < MINIMUM_ACTIVATIONS or len(order) < 2:
        return "insufficient", "the ANOVA needs at least 2 activations and 2 levels", empty
    counts = observations.groupby(["activation", "level"]).size()
    if len(counts) < len(labels) * len(order):
        return "insufficient", "the ANOVA needs a finished seed for every (activation, level)", empty
    residual_df = len(observations) - len(labels) * len(order)
    if residual_df < 1:
        return "insufficient", "the ANOVA needs more than one seed in some (activation, level)", empty
    model = smf.ols("value ~ C(activation) * C(level)", data=observations).fit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        table = anova_lm(model, typ=2)
    residual = float(table.loc["Residual", "sum_sq"])
    if residual <= RESIDUAL_TOLERANCE * float(table["sum_sq"].sum()):
        return (
            "insufficient",
            "the seeds agree exactly in every (activation, level): no residual to test against",
            empty,
        )
    rows = []
    for term, name in ANOVA_TERMS.items():
        sum_sq = float(table.loc[term, "sum_sq"])
        effect = name != "residual"
        total = sum_sq + residual
        rows.append(
            {
                "term": name,
                "sum_sq": sum_sq,
                "df": float(table.loc[term, "df"]),
                "f": float(table.loc[term, "F"]) if effect else math.nan,
                "p_value": float(table.loc[term, "PR(>F)"]) if effect else math.nan,
                "partial_eta_squared": sum_sq / total if effect and total > 0 else math.nan,
            }
        )
    return "ok", None, pd.DataFrame(rows, columns=list(empty.columns))
