""" "How to choose" across the cells of a factorial experiment: sentences that follow from per-cell verdicts.

The inputs are, per cell, its levels and the tables that the per-cell results already compute inside the
cell (app/results/statistics.py ``summarise_activations`` and, when available, ``compare_pairs``), and
optionally the activation x factor ANOVA of app/results/factorial.py ``factor_effects``. The rules
(docs/statistics.md, "Across cells"):

- In each cell, the best activation is the one ranked first on its seed mean (ties: all of them). Every
  other activation is ``equivalent`` to it (TOST within the margin), ``worse`` (shown worse), or
  ``unresolved`` (neither: the evidence is too weak), read from the pairwise view of the cell against the
  best; without a pairwise table, from the baseline verdicts where the best or the other is the baseline,
  else ``unresolved``.
- A factor changes the ranking when, with the other factors held at the same levels, the best activation at
  one of its levels is shown worse at another, or when the activation x factor interaction is significant
  at alpha. When the best activation differs between levels but neither holds, the evidence is too weak to
  say. Otherwise the factor does not change the ranking in the measured cells.
- Nothing is said about cells that were not measured: the last sentence names the levels that were.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from app.results.factorial import FactorEffect

Standing = str  # "best", "equivalent", "worse" or "unresolved"


@dataclass(frozen=True)
class CellResult:
    """One cell: its label, its level of each factor path, and its per-cell summary (and pairwise) tables."""

    label: str
    levels: Mapping[str, str]
    summary: pd.DataFrame
    pairs: pd.DataFrame | None = None


@dataclass(frozen=True)
class CellStanding:
    """Each finished activation of one cell against the cell's best."""

    label: str
    levels: Mapping[str, str]
    metric: str
    best_mean: float
    standing: dict[str, Standing]

    def of(self, kind: Standing) -> list[str]:
        """The activations with this standing, in the summary's order."""
        return [label for label, standing in self.standing.items() if standing == kind]


def _number(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else "n/a"


def _join(labels: Sequence[str]) -> str:
    return ", ".join(labels[:-1]) + f" and {labels[-1]}" if len(labels) > 1 else "".join(labels)


def _against_best(cell: CellResult, label: str, best: str) -> Standing:
    if cell.pairs is not None and not cell.pairs.empty:
        chosen = cell.pairs[(cell.pairs["activation"] == label) & (cell.pairs["opponent"] == best)]
        outcome = str(chosen["outcome"].iloc[0]) if len(chosen) else ""
        return {"loss": "worse", "equivalent": "equivalent"}.get(outcome, "unresolved")
    verdicts = dict(zip(cell.summary["activation"], cell.summary["verdict"], strict=True))
    baseline = str(cell.summary["baseline"].iloc[0])
    if best == baseline:
        return {"worse": "worse", "equivalent": "equivalent"}.get(str(verdicts.get(label)), "unresolved")
    if label == baseline:
        return {"better": "worse", "equivalent": "equivalent"}.get(str(verdicts.get(best)), "unresolved")
    return "unresolved"


def cell_standing(cell: CellResult) -> CellStanding | None:
    """The cell's best activations and every other finished one against the best; None when none finished."""
    ranked = cell.summary[(cell.summary["n"] > 0) & cell.summary["rank"].notna()]
    if ranked.empty:
        return None
    top = float(ranked["rank"].min())
    best = [str(label) for label in ranked.loc[ranked["rank"] == top, "activation"]]
    standing: dict[str, Standing] = {}
    for label in ranked["activation"].astype(str):
        standing[label] = "best" if label in best else _against_best(cell, label, best[0])
    best_mean = float(ranked.loc[ranked["activation"] == best[0], "mean"].iloc[0])
    metric = str(ranked["metric"].iloc[0])
    return CellStanding(cell.label, cell.levels, metric, best_mean, standing)


def _cell_sentence(cell: CellStanding) -> str:
    best = cell.of("best")
    verb = "is" if len(best) == 1 else "tie for"
    parts = [f"In cell {cell.label}, {_join(best)} {verb} best on {cell.metric} (mean {_number(cell.best_mean)})"]
    if cell.of("equivalent"):
        parts.append(f"equivalent to it within the margin: {_join(cell.of('equivalent'))}")
    if cell.of("worse"):
        parts.append(f"shown worse: {_join(cell.of('worse'))}")
    if cell.of("unresolved"):
        parts.append(f"not separated from it (evidence too weak): {_join(cell.of('unresolved'))}")
    return "; ".join(parts) + "."


def _slices(cells: Sequence[CellStanding], factor: str) -> list[dict[str, CellStanding]]:
    """Groups of cells that differ only in this factor's level, each as level -> cell."""
    groups: dict[tuple[tuple[str, str], ...], dict[str, CellStanding]] = {}
    for cell in cells:
        if factor not in cell.levels:
            continue
        rest = tuple(sorted((path, level) for path, level in cell.levels.items() if path != factor))
        groups.setdefault(rest, {})[cell.levels[factor]] = cell
    return [group for group in groups.values() if len(group) >= 2]


def _bests_by_level(cells: Sequence[CellStanding], factor: str, levels: Sequence[str]) -> str:
    phrases = []
    for level in levels:
        at_level = [cell for cell in cells if cell.levels.get(factor) == level]
        counts = Counter(label for cell in at_level for label in cell.of("best"))
        if not counts:
            continue
        described = ", ".join(
            f"{label} in {count} of {len(at_level)} cell{'s' if len(at_level) > 1 else ''}"
            for label, count in counts.most_common()
        )
        phrases.append(f"at {factor}={level} the best is {described}")
    return "; ".join(phrases)


def _interaction(effects: Mapping[str, FactorEffect], factor: str) -> tuple[float | None, float | None]:
    effect = effects.get(factor)
    if effect is None or effect.status != "ok":
        return None, None
    term = effect.term("interaction")
    return term["p_value"], term["partial_eta_squared"]


def _factor_sentence(
    cells: Sequence[CellStanding], factor: str, levels: Sequence[str], effects: Mapping[str, FactorEffect], alpha: float
) -> str:
    slices = _slices(cells, factor)
    p_value, eta = _interaction(effects, factor)
    tested = (
        f" (activation x {factor} interaction: p = {_number(p_value)}, partial eta squared = {eta or 0.0:.2f})"
        if p_value is not None
        else ""
    )
    if not slices:
        return (
            f"The effect of {factor} cannot be judged: no two of its levels were measured with the other factors equal."
        )
    shown = differs = False
    for group in slices:
        for first in group.values():
            for second in group.values():
                if first is second:
                    continue
                if set(first.of("best")) != set(second.of("best")):
                    differs = True
                if any(second.standing.get(label) == "worse" for label in first.of("best")):
                    shown = True
    significant = p_value is not None and p_value < alpha
    bests = _bests_by_level(cells, factor, levels)
    if shown or significant:
        reason = "the best activation at one level is shown worse at another" if shown else ""
        if significant:
            reason = (reason + " and " if reason else "") + "the interaction with the activation is significant"
        if not differs:
            reason += ", though the best activation is the same at every level"
        return f"{factor} changes the ranking ({reason}): {bests}{tested}."
    if differs:
        return (
            f"{factor} may change the ranking, but the evidence is too weak to say: {bests}, "
            f"and no level's best is shown worse at another{tested}."
        )
    return (
        f"{factor} does not change the ranking in the measured cells: the best activation is the same at "
        f"{_join(levels)} with the other factors held fixed, {_bests_by_slice(slices, factor)}{tested}."
    )


def _bests_by_slice(slices: Sequence[dict[str, CellStanding]], factor: str) -> str:
    phrases = []
    for group in slices:
        cell = next(iter(group.values()))
        others = ", ".join(f"{path}={level}" for path, level in cell.levels.items() if path != factor)
        phrases.append(f"{_join(cell.of('best'))}" + (f" where {others}" if others else ""))
    return "; ".join(phrases)


def how_to_choose(
    cells: Sequence[CellResult], *, effects: Sequence[FactorEffect] = (), alpha: float = 0.05
) -> list[str]:
    """Per condition: the best activations per cell, the factors that change the ranking and those that do not."""
    standings = [standing for standing in (cell_standing(cell) for cell in cells) if standing is not None]
    unfinished = [cell.label for cell in cells if cell_standing(cell) is None]
    sentences = [_cell_sentence(standing) for standing in standings]
    if unfinished:
        sentences.append(f"No activation finished in {_join(unfinished)}, so nothing is said about it.")
    if not standings:
        return sentences or ["No cell has finished runs to compare."]
    by_factor = {effect.factor: effect for effect in effects}
    factors: dict[str, list[str]] = {}
    for cell in cells:
        for path, level in cell.levels.items():
            if level not in factors.setdefault(path, []):
                factors[path].append(level)
    for factor, levels in factors.items():
        if len(levels) >= 2:
            sentences.append(_factor_sentence(standings, factor, levels, by_factor, alpha))
    if factors:
        measured = "; ".join(f"{factor} in {', '.join(levels)}" for factor, levels in factors.items())
        sentences.append(
            f"These statements hold for the measured cells only ({measured}); "
            "other levels and combinations were not measured."
        )
    return sentences
