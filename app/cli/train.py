"""``actlab train SPEC.json``: train every arm of a spec locally, print a summary, write CSVs.

No service needed: the spec is validated exactly as the API validates it, every
(activation, seed) arm is trained in this process, and the per-epoch and per-layer
metrics go to CSV files that pandas or a spreadsheet read directly.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pydantic import ValidationError

from app.errors import format_validation_errors
from app.models.epoch_metric import EPOCH_VALUE_FIELDS
from app.models.layer_metric import LAYER_VALUE_FIELDS
from app.spec import ExperimentSpec

if TYPE_CHECKING:
    from app.spec import Arm
    from worker.training.reports import ArmOutcome, EpochReport

EPOCH_COLUMNS = (
    "activation",
    "activation_index",
    "seed",
    "epoch",
    "status",
    *EPOCH_VALUE_FIELDS,
    "diverged",
)
LAYER_COLUMNS = (
    "activation",
    "activation_index",
    "seed",
    "epoch",
    "layer",
    "layer_name",
    *LAYER_VALUE_FIELDS,
)
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``train`` subcommand."""
    parser = subparsers.add_parser(
        "train",
        help="train every arm of a spec locally and write metrics as CSV",
        description="Train every (activation, seed) arm of SPEC.json in this process.",
    )
    parser.add_argument("spec", type=Path, metavar="SPEC.json", help="experiment spec (see examples/)")
    parser.add_argument("--out", type=Path, metavar="FILE.csv", help="one row per (arm, epoch)")
    parser.add_argument("--layers-out", type=Path, metavar="FILE.csv", help="one row per (arm, epoch, layer)")
    parser.add_argument(
        "--device", choices=("cpu", "cuda", "auto"), help="override the spec's device (default: the spec's)"
    )
    parser.set_defaults(handler=run_train)


def load_spec(path: Path, *, error_stream: TextIO) -> ExperimentSpec | None:
    """Read and validate a spec file; print each problem (with its field path) and return None when it is bad."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        print(f"error: spec file {path} does not exist", file=error_stream)
        return None
    except (OSError, UnicodeDecodeError) as error:
        print(f"error: cannot read spec file {path}: {error}", file=error_stream)
        return None
    except json.JSONDecodeError as error:
        print(f"error: {path} is not valid JSON: {error}", file=error_stream)
        return None
    try:
        return ExperimentSpec.model_validate(raw)
    except ValidationError as error:
        print(f"error: {path} is not a valid experiment spec:", file=error_stream)
        for line in format_validation_errors(error, model=ExperimentSpec):
            print(f"  {line}", file=error_stream)
        return None


@dataclass
class _Collected:
    """Every arm's epochs as they arrive, so an interrupted run still writes what it has."""

    epochs: list[tuple[Arm, EpochReport]] = field(default_factory=list)
    outcomes: dict[tuple[int, int], ArmOutcome] = field(default_factory=dict)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def write_epoch_csv(
    path: Path, collected: Iterable[tuple[Arm, EpochReport]], statuses: Mapping[tuple[int, int], str]
) -> None:
    """One row per (arm, epoch)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=EPOCH_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for arm, report in collected:
            row = {
                **report.as_row(),
                "activation": arm.label,
                "activation_index": arm.activation_index,
                "seed": arm.seed,
                "status": statuses.get((arm.activation_index, arm.seed), "cancelled"),
            }
            writer.writerow({key: _cell(value) for key, value in row.items()})


def write_layer_csv(path: Path, collected: Iterable[tuple[Arm, EpochReport]]) -> None:
    """One row per (arm, epoch, layer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=LAYER_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for arm, report in collected:
            for layer in report.layers:
                row = {
                    **vars(layer),
                    "activation": arm.label,
                    "activation_index": arm.activation_index,
                    "seed": arm.seed,
                    "epoch": report.epoch,
                }
                writer.writerow({key: _cell(value) for key, value in row.items()})


@dataclass(frozen=True)
class ActivationSummary:
    """Final test accuracy of one activation over its seeds."""

    label: str
    mean: float | None
    std: float | None
    seeds: int
    diverged: int


def summarise(spec: ExperimentSpec, outcomes: dict[tuple[int, int], ArmOutcome]) -> list[ActivationSummary]:
    """Per activation: mean and sample std of the final test accuracy over arms that did not diverge."""
    summaries = []
    for index, activation in enumerate(spec.activations):
        finished = [outcomes[(index, seed)] for seed in spec.seeds if (index, seed) in outcomes]
        diverged = sum(1 for outcome in finished if outcome.status == "diverged")
        accuracies = [
            outcome.reports[-1].test_accuracy
            for outcome in finished
            if outcome.status != "diverged" and outcome.reports and math.isfinite(outcome.reports[-1].test_accuracy)
        ]
        mean = statistics.fmean(accuracies) if accuracies else None
        std = statistics.stdev(accuracies) if len(accuracies) > 1 else None
        summaries.append(ActivationSummary(activation.display_label, mean, std, len(finished), diverged))
    return summaries


def format_summary(summaries: Sequence[ActivationSummary]) -> str:
    """The per-activation table as aligned text."""
    header = ("activation", "test_acc_mean", "test_acc_std", "seeds", "diverged")
    rows = [
        (
            summary.label,
            f"{summary.mean:.4f}" if summary.mean is not None else "-",
            f"{summary.std:.4f}" if summary.std is not None else "-",
            str(summary.seeds),
            str(summary.diverged),
        )
        for summary in summaries
    ]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def run_train(arguments: argparse.Namespace) -> int:
    """Handler of ``actlab train``."""
    spec = load_spec(arguments.spec, error_stream=sys.stderr)
    if spec is None:
        return EXIT_BAD_INPUT
    if arguments.device is not None:
        spec = spec.model_copy(update={"device": arguments.device})

    from tqdm import tqdm

    from worker.training.datasets import DatasetUnavailableError, load_dataset
    from worker.training.trainer import resolve_device, train_experiment

    try:
        device = resolve_device(spec.device)
    except ValueError as error:
        print(f"error: device: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        data = load_dataset(spec.dataset, validation_fraction=spec.training.validation_fraction, device=device)
    except DatasetUnavailableError as error:
        print(f"error: dataset: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    collected = _Collected()
    total = len(spec.activations) * len(spec.seeds) * spec.training.epochs
    interrupted = False
    print(
        f"training {len(spec.activations)} activations x {len(spec.seeds)} seeds, "
        f"{spec.training.epochs} epochs each, on {device}",
        file=sys.stderr,
    )
    with tqdm(total=total, file=sys.stderr, unit="epoch", dynamic_ncols=True) as progress:

        def on_epoch(arm: Arm, report: EpochReport) -> None:
            collected.epochs.append((arm, report))
            progress.set_postfix_str(f"{arm.label} seed {arm.seed} test_acc {report.test_accuracy:.3f}")
            progress.update(1)

        def on_arm_end(arm: Arm, outcome: ArmOutcome) -> None:
            collected.outcomes[(arm.activation_index, arm.seed)] = outcome
            # A diverged arm stops early; its remaining epochs still count as done.
            progress.update(spec.training.epochs - outcome.epochs_completed)

        try:
            train_experiment(spec, device=device, data=data, on_epoch=on_epoch, on_arm_end=on_arm_end)
        except KeyboardInterrupt:
            interrupted = True
    statuses = {key: outcome.status for key, outcome in collected.outcomes.items()}
    if arguments.out is not None:
        write_epoch_csv(arguments.out, collected.epochs, statuses)
        print(f"wrote {len(collected.epochs)} epoch rows to {arguments.out}", file=sys.stderr)
    if arguments.layers_out is not None:
        write_layer_csv(arguments.layers_out, collected.epochs)
        print(f"wrote layer rows to {arguments.layers_out}", file=sys.stderr)
    print(format_summary(summarise(spec, collected.outcomes)))
    if interrupted:
        print("interrupted: the table and files hold the arms finished so far", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
