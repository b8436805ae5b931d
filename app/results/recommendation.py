"""The plain-language recommendation: failures first, then remedies, then the ranking of what trained.

Every sentence follows from measured numbers (the summary and pairwise tables, the diagnostics, the
final test accuracies). The order is fixed:

1. What failed and why: activations that diverged or did not train (app/results/failures.py), each with
   the measured diagnostic that explains it (gradient-norm ratio, dead or saturated units).
2. Remedies the service can run next, each a concrete change to the spec.
3. The ranking of the activations that trained, against the best of them in the pairwise view: shown
   worse, shown better on shared seeds, shown equivalent within the margin (only then "any of"), or
   inconclusive with the seeds that would settle it. When nothing trained, nothing is ranked.
4. Diagnostics of activations that trained, runs left out, cost per epoch, learned parameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from app.catalog import EXPLODING_RATIO, VANISHING_RATIO
from app.gradient_flow import gradient_flag
from app.numbers import finite_or_none
from app.results.failures import DEFAULT_CHANCE_MARGIN, TrainingSetup, chance_accuracy, did_not_train, remedies

# A dead or saturated share this large in the mean layer is enough to stop most of a layer learning.
NOTABLE_DEAD_FRACTION = 0.5
NOTABLE_SATURATED_FRACTION = 0.5
# Epoch times within this relative margin of the fastest are reported as "about the same".
SIMILAR_COST_MARGIN = 0.1


@dataclass(frozen=True)
class RecommendationInputs:
    """What the recommendation reads: the tables, the final test accuracies, chance and the spec's setup."""

    summary: pd.DataFrame
    pairs: pd.DataFrame | None
    diagnostics: pd.DataFrame | None
    final_accuracy: Mapping[str, float] | None = None
    classes: int | None = None
    alpha: float = 0.05
    chance: float | None = None
    chance_margin: float = DEFAULT_CHANCE_MARGIN
    setup: TrainingSetup = field(default_factory=TrainingSetup)
    experiment_id: str | None = None

    @property
    def chance_level(self) -> float | None:
        """The given chance accuracy, else that of balanced classes."""
        return self.chance if self.chance is not None else chance_accuracy(classes=self.classes)


def _number(value: float | None) -> str:
    """Three significant digits, plainly."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
        return f"{value:.2e}"
    return f"{value:.3g}"


def _share(value: float | None) -> str:
    return f"{value:.0%}" if value is not None and math.isfinite(value) else "n/a"


def _join(labels: Sequence[str]) -> str:
    if len(labels) <= 1:
        return "".join(labels)
    return ", ".join(labels[:-1]) + " and " + labels[-1]


def untrained(inputs: RecommendationInputs) -> dict[str, float]:
    """Activation -> mean final test accuracy, for those at most chance plus the margin."""
    chance = inputs.chance_level
    return {
        label: accuracy
        for label, accuracy in (inputs.final_accuracy or {}).items()
        if did_not_train(accuracy, chance=chance, margin=inputs.chance_margin)
    }


def outcomes_against_best(
    summary: pd.DataFrame, pairs: pd.DataFrame | None, *, excluded: set[str] | frozenset[str] = frozenset()
) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """The top-ranked activation (leaving out ``excluded``) and every other ranked one's pair row against it."""
    ranked = summary[summary["rank"].notna() & ~summary["activation"].isin(excluded)]
    ranked = ranked.sort_values(["rank", "activation_index"], kind="stable")
    if ranked.empty:
        return None, {}
    best = str(ranked["activation"].iloc[0])
    rows: dict[str, dict[str, Any]] = {}
    if pairs is None or pairs.empty:
        return best, rows
    against_best = pairs[pairs["opponent"] == best]
    for label in ranked["activation"].iloc[1:]:
        match = against_best[against_best["activation"] == label]
        if not match.empty:
            rows[str(label)] = match.iloc[0].to_dict()
    return best, rows


def best_choices(
    summary: pd.DataFrame, pairs: pd.DataFrame | None, *, excluded: set[str] | frozenset[str] = frozenset()
) -> list[str]:
    """The top-ranked activation that trained followed by those shown equivalent to it; empty when none trained."""
    best, rows = outcomes_against_best(summary, pairs, excluded=excluded)
    if best is None:
        return []
    return [best, *[label for label, row in rows.items() if row.get("outcome") == "equivalent"]]


def _explanations(diagnostic: Mapping[str, Any] | None) -> tuple[list[str], set[str]]:
    """Measured causes of poor training for one activation, each with its number, and their cause names."""
    if diagnostic is None:
        return [], set()
    reasons: list[str] = []
    causes: set[str] = set()
    ratios = [
        ratio
        for ratio in (
            finite_or_none(diagnostic.get("gradient_ratio_first_epoch")),
            finite_or_none(diagnostic.get("gradient_ratio_last_epoch")),
        )
        if ratio is not None
    ]
    # The rule is app/gradient_flow.py's; the thresholds are quoted in the sentence with the number.
    vanishing = [ratio for ratio in ratios if gradient_flag(ratio) == "vanishing"]
    if vanishing:
        causes.add("vanishing")
        reasons.append(
            f"vanishing gradients (first-to-last layer gradient-norm ratio {_number(min(vanishing))}, "
            f"below {VANISHING_RATIO:g})"
        )
    exploding = [ratio for ratio in ratios if gradient_flag(ratio) == "exploding"]
    if exploding:
        causes.add("exploding")
        reasons.append(
            f"exploding gradients (first-to-last layer gradient-norm ratio {_number(max(exploding))}, "
            f"above {EXPLODING_RATIO:g})"
        )
    dead = finite_or_none(diagnostic.get("dead_fraction"))
    if dead is not None and dead >= NOTABLE_DEAD_FRACTION:
        causes.add("dead")
        initial = finite_or_none(diagnostic.get("dead_fraction_initial"))
        # Dead from the start (a bad initialisation) or killed by training: epoch 0 tells them apart.
        when = (
            f"; {initial:.0%} already at initialisation"
            if initial is not None and initial >= NOTABLE_DEAD_FRACTION
            else f"; {initial:.0%} at initialisation, so they died in training"
            if initial is not None
            else ""
        )
        reasons.append(f"dead units (on average {dead:.0%} of a layer's units never activate at the last epoch{when})")
    saturated = finite_or_none(diagnostic.get("saturated_fraction"))
    if saturated is not None and saturated >= NOTABLE_SATURATED_FRACTION:
        causes.add("saturated")
        reasons.append(f"saturation (on average {saturated:.0%} of a layer's units saturated at the last epoch)")
    return reasons, causes


@dataclass
class _Failures:
    sentences: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    causes: set[str] = field(default_factory=set)
    names: list[str] = field(default_factory=list)


def _failures(inputs: RecommendationInputs, diagnostics: Mapping[str, Mapping[str, Any]]) -> _Failures:
    found = _Failures()
    at_chance = untrained(inputs)
    chance = inputs.chance_level
    for row in inputs.summary.itertuples(index=False):
        label = str(row.activation)
        problems = []
        causes: set[str] = set()
        if int(row.diverged) > 0:
            problems.append(f"diverged in {int(row.diverged)} of {int(row.runs)} runs")
            causes.add("diverged")
        if label in at_chance and chance is not None:
            problems.append(
                f"stayed at chance: mean final test accuracy {_number(at_chance[label])}, at most chance "
                f"{_number(chance)} (always predicting the most frequent training class) plus {inputs.chance_margin:g}"
            )
        if not problems:
            continue
        reasons, measured = _explanations(diagnostics.get(label))
        causes |= measured or {"unexplained"}
        found.labels.append(label)
        found.causes |= causes
        found.names.append(str((diagnostics.get(label) or {}).get("activation_name") or label))
        sentence = f"{label} failed to train: it {_join(problems)}"
        if reasons:
            sentence += f"; the diagnostics show {_join(reasons)}."
        else:
            sentence += "; none of the measured diagnostics (gradient-norm ratio, dead or saturated units) explains it."
        found.sentences.append(sentence)
    return found


def _remedy_sentences(failures: _Failures, setup: TrainingSetup) -> list[str]:
    if not failures.labels:
        return []
    found = remedies(failures.causes, setup, activation_names=failures.names)
    if not found:
        return []
    listed = "; ".join(f"{remedy.change} ({remedy.reason})" for remedy in found)
    return [
        f"Remedies the service can run next for {_join(failures.labels)}, each a change to merge into the spec "
        f"and submit: {listed}."
    ]


def _seed_request(summary: pd.DataFrame, needed: int) -> str:
    """A POST /seeds body with new seeds bringing every activation up to ``needed`` seeds."""
    used: set[int] = set()
    for seeds in summary.get("seeds", pd.Series(dtype=object)):
        used |= {int(seed) for seed in str(seeds).split(";") if seed.strip().lstrip("-").isdigit()}
    have = len(used)
    new: list[int] = []
    candidate = 0
    while have + len(new) < needed and len(new) < 8:
        if candidate not in used:
            new.append(candidate)
        candidate += 1
    more = ", ..." if have + len(new) < needed else ""
    return '{"seeds": [' + ", ".join(str(seed) for seed in new) + more + "]}"


def _ranking_sentences(inputs: RecommendationInputs, excluded: set[str]) -> list[str]:
    summary = inputs.summary
    best, rows = outcomes_against_best(summary, inputs.pairs, excluded=excluded)
    if best is None:
        if excluded:
            return ["No activation trained, so none is ranked."]
        return ["No activation has a finished run with a usable value of the metric yet, so nothing can be ranked."]
    row = summary[summary["activation"] == best].iloc[0]
    interval = (
        f", 95% CI {_number(row['ci_low'])} to {_number(row['ci_high'])}"
        if finite_or_none(row["ci_low"]) is not None
        else ""
    )
    among = " among those that trained" if excluded else ""
    sentences = [
        f"{best} ranks first{among} on {row['metric']} ({row['summary']}): mean {_number(row['mean'])}{interval}, "
        f"over {int(row['n'])} seed{'s' if int(row['n']) != 1 else ''}."
    ]
    grouped: dict[str, list[str]] = {}
    for label, pair in rows.items():
        grouped.setdefault(str(pair.get("outcome")), []).append(label)
    correction = next((str(pair["correction"]) for pair in rows.values() if pair.get("correction")), "Holm")
    alpha = f"{inputs.alpha:g}"
    equivalent = grouped.get("equivalent", [])
    if equivalent:
        margin = next(
            (pair.get("equivalence_margin") for pair in rows.values() if pair.get("equivalence_margin")), None
        )
        verb = "is" if len(equivalent) == 1 else "are"
        sentences.append(
            f"{_join(equivalent)} {verb} shown equivalent to {best} within plus or minus {_number(margin)} "
            f"(two one-sided paired t-tests, {correction}, p < {alpha}), so the best choice is any of "
            f"{_join([best, *equivalent])}."
        )
    if grouped.get("loss"):
        sentences.append(
            f"{best} is significantly better than {_join(grouped['loss'])} ({correction}, adjusted p < {alpha})."
        )
    if grouped.get("win"):
        sentences.append(
            f"{_join(grouped['win'])} beat{'s' if len(grouped['win']) == 1 else ''} {best} on the seeds both "
            f"finished ({correction}, adjusted p < {alpha}) although {best} has the better mean over all its seeds."
        )
    for label in grouped.get("inconclusive", []):
        pair = rows[label]
        sentences.append(
            f"{label} against {best} is inconclusive: mean difference {_number(pair.get('mean_difference'))} "
            f"(95% bootstrap CI {_number(pair.get('difference_ci_low'))} to {_number(pair.get('difference_ci_high'))}; "
            f"{label} beats {best} on {_share(pair.get('probability_outperforms'))} of the {pair.get('paired_n')} "
            f"shared seeds), neither shown ({correction}, adjusted p = {_number(pair.get('p_holm'))}) nor excluded "
            "by an equivalence test."
        )
    if grouped.get("insufficient"):
        sentences.append(
            f"{_join(grouped['insufficient'])} could not be tested against {best}: "
            "fewer than two seeds where both finished."
        )
    sentences.extend(_seed_sentences(inputs, best, rows))
    return sentences


def _seed_sentences(inputs: RecommendationInputs, best: str, rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    target = f"/v1/experiments/{inputs.experiment_id or '{id}'}/seeds"
    largest_n = int(inputs.summary["n"].max()) if not inputs.summary.empty else 0
    if largest_n < 2:
        return [f"With at most one seed per activation no significance test is possible; add seeds with POST {target}."]
    parts = []
    needed_most = 0
    for label, pair in rows.items():
        if pair.get("outcome") != "inconclusive":
            continue
        detect = finite_or_none(pair.get("seeds_needed"))
        equivalence = finite_or_none(pair.get("seeds_needed_equivalence"))
        have = int(pair.get("paired_n") or 0)
        if detect is not None:
            # At 80% power a difference is missed one time in five: then the seeds it has can be "enough".
            missed = f" (it has {have}: this draw missed)" if int(detect) <= have else ""
            parts.append(f"about {int(detect)} seeds per activation would settle {best} vs {label}{missed}")
            needed_most = max(needed_most, int(detect), have + 1)
        elif equivalence is not None:
            parts.append(f"about {int(equivalence)} seeds per activation would show {best} and {label} equivalent")
            needed_most = max(needed_most, int(equivalence), have + 1)
    if not parts:
        return []
    correction = next((str(pair["correction"]) for pair in rows.values() if pair.get("correction")), "Holm")
    return [
        f"From the observed spread of the paired differences, {'; '.join(parts)} (80% power at alpha "
        f"{inputs.alpha:g} under {correction}); add them with POST {target} and a body such as "
        f"{_seed_request(inputs.summary, needed_most)}."
    ]


def _trained_diagnostic_sentences(diagnostics: Mapping[str, Mapping[str, Any]], failed: set[str]) -> list[str]:
    sentences = []
    for label, diagnostic in diagnostics.items():
        if label in failed:
            continue
        reasons, _ = _explanations(diagnostic)
        if reasons:
            sentences.append(f"{label} trained but shows {_join(reasons)}.")
    return sentences


def _excluded_sentences(summary: pd.DataFrame) -> list[str]:
    excluded = {
        status: int(summary[status].sum())
        for status in ("failed", "cancelled", "timed_out")
        if status in summary.columns and int(summary[status].sum()) > 0
    }
    if not excluded:
        return []
    parts = [f"{count} {status.replace('_', ' ')}" for status, count in excluded.items()]
    return [f"Runs left out of the statistics: {_join(parts)}."]


def _cost_sentences(summary: pd.DataFrame) -> list[str]:
    timed = summary[summary["mean_epoch_seconds"].notna() & (summary["mean_epoch_seconds"] > 0)]
    if len(timed) < 2:
        return []
    base = float(timed["mean_epoch_seconds"].min())
    relative = [(str(row.activation), float(row.mean_epoch_seconds) / base) for row in timed.itertuples(index=False)]
    fastest = [label for label, ratio in relative if ratio <= 1.0 + SIMILAR_COST_MARGIN]
    slower = sorted(
        [(label, ratio) for label, ratio in relative if ratio > 1.0 + SIMILAR_COST_MARGIN],
        key=lambda item: item[1],
        reverse=True,
    )
    if not slower:
        return [
            f"Cost per epoch: every activation is within {SIMILAR_COST_MARGIN:.0%} of the fastest ({_number(base)} s)."
        ]
    verb = "is" if len(fastest) == 1 else "are"
    head = f"Cost per epoch: {_join(fastest)} {verb} fastest ({_number(base)} s per epoch"
    head += ")" if len(fastest) == 1 else f", within {SIMILAR_COST_MARGIN:.0%} of each other)"
    listed = _join([f"{label} {ratio:.2g}x" for label, ratio in slower])
    return [head + f"; relative to the fastest: {listed}."]


def _learned_sentences(diagnostics: pd.DataFrame | None) -> list[str]:
    if diagnostics is None:
        return []
    sentences = []
    for row in diagnostics.to_dict("records"):
        learned = row.get("learned_parameters")
        if not row.get("learnable") or not isinstance(learned, Mapping) or not learned:
            continue
        shown = list(learned.items())[:4]
        values = ", ".join(f"{name} = {_number(value)}" for name, value in shown)
        more = f" (and {len(learned) - len(shown)} more)" if len(learned) > len(shown) else ""
        sentences.append(f"{row['activation']} learned {values}{more} at the last epoch (mean over layers and seeds).")
    return sentences


def recommend(inputs: RecommendationInputs) -> list[str]:
    """Plain-language findings in the fixed order of the module docstring, each following from the inputs."""
    diagnostics = (
        {str(row["activation"]): row for row in inputs.diagnostics.to_dict("records")}
        if inputs.diagnostics is not None
        else {}
    )
    failures = _failures(inputs, diagnostics)
    not_trained = set(untrained(inputs))
    sentences = [*failures.sentences, *_remedy_sentences(failures, inputs.setup)]
    sentences.extend(_ranking_sentences(inputs, not_trained))
    sentences.extend(_trained_diagnostic_sentences(diagnostics, set(failures.labels)))
    sentences.extend(_excluded_sentences(inputs.summary))
    sentences.extend(_cost_sentences(inputs.summary))
    sentences.extend(_learned_sentences(inputs.diagnostics))
    return sentences
