"""``actlab train SPEC.json``: train every arm of a spec locally, print a summary, write CSVs.

No service needed: the spec is validated exactly as the API validates it, every arm of every
cell (a factorial spec's combinations of levels, or the one cell of a plain spec) is trained on
this machine as the worker trains it (``worker.local_runner``: stacked where that is faster, one
process per core with one torch thread each), and the per-epoch and per-layer metrics go to CSV
files that pandas or a spreadsheet read directly, with the cell and one column per factor; so do
the robustness points of an ``evaluation`` block (the API's /robustness rows).
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
from app.models.robustness import ROBUSTNESS_VALUE_FIELDS
from app.spec import ExperimentSpec
from app.spec_factors import Cell, level_text

if TYPE_CHECKING:
    from worker.local_runner import LocalArm
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
# The API's /robustness columns (app.metrics.repository) without run_id, which a local run has not.
ROBUSTNESS_COLUMNS = ("activation", "activation_index", "seed", "kind", "strength", *ROBUSTNESS_VALUE_FIELDS)
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
        "--robustness-out",
        type=Path,
        metavar="FILE.csv",
        help="one row per (arm, kind, strength) of the spec's evaluation block "
        "(default with --out and an evaluation block: FILE_robustness.csv beside it)",
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda", "auto"), help="override the spec's device (default: the spec's)"
    )
    parser.add_argument(
        "--processes",
        type=positive_count,
        metavar="N",
        help="training processes on a CPU (default: one per available core, each with one torch thread)",
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


def positive_count(text: str) -> int:
    """An argparse type: a whole number >= 1 (--processes, actlab list --limit)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


@dataclass
class _Collected:
    """Every arm's epochs as they arrive, so an interrupted run still writes what it has."""

    epochs: list[tuple[LocalArm, EpochReport]] = field(default_factory=list)
    outcomes: dict[tuple[int, int, int], ArmOutcome] = field(default_factory=dict)

    def ordered_epochs(self) -> list[tuple[LocalArm, EpochReport]]:
        """Rows in a fixed order (cell, activation, seed, epoch), whatever order the processes finished in."""
        return sorted(self.epochs, key=lambda item: (*item[0].key, item[1].epoch))


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def _arm_columns(arm: LocalArm, factors: Mapping[str, Any], levels: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    columns: dict[str, Any] = {
        "activation": arm.label,
        "activation_index": arm.activation_index,
        "seed": arm.seed,
    }
    if factors:
        columns["cell_index"] = arm.cell_index
        columns["cell"] = arm.cell_label
        columns.update({path: level_text(levels[arm.cell_index][path]) for path in factors})
    return columns


def _factor_columns(spec: ExperimentSpec) -> tuple[str, ...]:
    return ("cell_index", "cell", *spec.factors) if spec.factors else ()


def write_epoch_csv(
    path: Path,
    spec: ExperimentSpec,
    cells: Sequence[Cell],
    collected: Iterable[tuple[LocalArm, EpochReport]],
    statuses: Mapping[tuple[int, int, int], str],
) -> None:
    """One row per (arm, epoch); a factorial spec adds the cell and one column per factor (levels as query text)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    factors, levels = spec.factors or {}, {cell.index: cell.levels for cell in cells}
    head, tail = EPOCH_COLUMNS[:3], EPOCH_COLUMNS[3:]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=(*head, *_factor_columns(spec), *tail), extrasaction="ignore")
        writer.writeheader()
        for arm, report in collected:
            row = {
                **report.as_row(),
                **_arm_columns(arm, factors, levels),
                "status": statuses.get(arm.key, "cancelled"),
            }
            writer.writerow({key: _cell(value) for key, value in row.items()})


def write_layer_csv(
    path: Path, spec: ExperimentSpec, cells: Sequence[Cell], collected: Iterable[tuple[LocalArm, EpochReport]]
) -> None:
    """One row per (arm, epoch, layer), with the cell and factor columns of ``write_epoch_csv``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    factors, levels = spec.factors or {}, {cell.index: cell.levels for cell in cells}
    head, tail = LAYER_COLUMNS[:3], LAYER_COLUMNS[3:]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=(*head, *_factor_columns(spec), *tail), extrasaction="ignore")
        writer.writeheader()
        for arm, report in collected:
            for layer in report.layers:
                row = {**vars(layer), **_arm_columns(arm, factors, levels), "epoch": report.epoch}
                writer.writerow({key: _cell(value) for key, value in row.items()})


def write_robustness_csv(
    path: Path,
    spec: ExperimentSpec,
    cells: Sequence[Cell],
    outcomes: Iterable[tuple[LocalArm, ArmOutcome]],
) -> int:
    """One row per (arm, kind, strength) measured after training (succeeded arms of a spec with an evaluation
    block), with the cell and factor columns of ``write_epoch_csv``; returns the rows written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    factors, levels = spec.factors or {}, {cell.index: cell.levels for cell in cells}
    head, tail = ROBUSTNESS_COLUMNS[:3], ROBUSTNESS_COLUMNS[3:]
    written = 0
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=(*head, *_factor_columns(spec), *tail), extrasaction="ignore")
        writer.writeheader()
        for arm, outcome in outcomes:
            for point in outcome.robustness:
                writer.writerow(
                    {key: _cell(value) for key, value in {**vars(point), **_arm_columns(arm, factors, levels)}.items()}
                )
                written += 1
    return written


def robustness_path(arguments: argparse.Namespace, spec: ExperimentSpec) -> Path | None:
    """Where the robustness rows go: --robustness-out, else FILE_robustness.csv beside --out when the spec has an
    evaluation block, else nowhere."""
    if arguments.robustness_out is not None:
        return Path(arguments.robustness_out)
    if arguments.out is None or spec.evaluation is None:
        return None
    out = Path(arguments.out)
    return out.with_name(f"{out.stem}_robustness{out.suffix or '.csv'}")


@dataclass(frozen=True)
class ActivationSummary:
    """Final test accuracy of one activation (in one cell) over its seeds."""

    label: str
    mean: float | None
    std: float | None
    seeds: int
    diverged: int
    cell: str = ""


def summarise(
    spec: ExperimentSpec, cells: Sequence[Cell], outcomes: Mapping[tuple[int, int, int], ArmOutcome]
) -> list[ActivationSummary]:
    """Per (cell, activation): mean and sample std of the final test accuracy over arms that did not diverge."""
    summaries = []
    for cell in cells:
        for index, activation in enumerate(spec.activations):
            keys = [(cell.index, index, seed) for seed in spec.seeds]
            finished = [outcomes[key] for key in keys if key in outcomes]
            diverged = sum(1 for outcome in finished if outcome.status == "diverged")
            # The final epoch is the last trained one: epoch 0 (the network at initialisation) is no final.
            finals = [
                [report for report in outcome.reports if report.epoch > 0]
                for outcome in finished
                if outcome.status != "diverged"
            ]
            accuracies = [
                trained[-1].test_accuracy for trained in finals if trained and math.isfinite(trained[-1].test_accuracy)
            ]
            mean = statistics.fmean(accuracies) if accuracies else None
            std = statistics.stdev(accuracies) if len(accuracies) > 1 else None
            summaries.append(
                ActivationSummary(activation.display_label, mean, std, len(finished), diverged, cell.label)
            )
    return summaries


def format_summary(summaries: Sequence[ActivationSummary]) -> str:
    """The per-activation table as aligned text (with a leading cell column for a factorial spec)."""
    with_cells = any(summary.cell for summary in summaries)
    header = (*(("cell",) if with_cells else ()), "activation", "test_acc_mean", "test_acc_std", "seeds", "diverged")
    rows = [
        (
            *((summary.cell.replace(" ", ""),) if with_cells else ()),
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

    from worker.local_runner import LocalTrainingError, start_local
    from worker.training.datasets import DatasetUnavailableError
    from worker.training.trainer import resolve_device

    try:
        device = resolve_device(spec.device)
    except ValueError as error:
        print(f"error: device: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    training = start_local(spec, device=str(device), processes=arguments.processes)
    plan = training.plan
    collected = _Collected()
    arms = plan.arms()
    total = sum(plan.cells[arm.cell_index].spec.training.evaluations for arm in arms)
    stacked = sum(job.cost for job in plan.jobs if job.stacked)
    cells = f"{len(plan.cells)} cells x " if spec.factors else ""
    print(
        f"training {cells}{len(spec.activations)} activations x {len(spec.seeds)} seeds, "
        f"{spec.training.budget_text()} each, on {device}: {len(arms) - stacked} arms one at a time, "
        f"{stacked} stacked, in {plan.processes} process{'es' if plan.processes > 1 else ''}",
        file=sys.stderr,
    )
    for reason in sorted({job.reason for job in plan.jobs}):
        print(f"  {reason}", file=sys.stderr)
    # No tqdm monitor thread: the training processes are forked while the bar is open.
    tqdm.monitor_interval = 0
    with tqdm(total=total, file=sys.stderr, unit="epoch", dynamic_ncols=True) as progress:

        def on_event(kind: str, arm: LocalArm, value: Any) -> None:
            if kind == "epoch":
                collected.epochs.append((arm, value))
                progress.set_postfix_str(f"{arm.label} seed {arm.seed} test_acc {value.test_accuracy:.3f}")
                # Epoch 0 (the network at initialisation) trains nothing: the bar counts trained epochs.
                progress.update(1 if value.epoch > 0 else 0)
            else:
                collected.outcomes[arm.key] = value
                # A diverged arm stops early; its remaining epochs still count as done.
                progress.update(plan.cells[arm.cell_index].spec.training.evaluations - value.epochs_completed)

        try:
            interrupted = training.run(on_event)
        except DatasetUnavailableError as error:
            print(f"error: dataset: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except LocalTrainingError as error:
            print(f"error: training failed:\n{error}", file=sys.stderr)
            return 1
    statuses = {key: outcome.status for key, outcome in collected.outcomes.items()}
    epochs = collected.ordered_epochs()
    if arguments.out is not None:
        write_epoch_csv(arguments.out, spec, plan.cells, epochs, statuses)
        print(f"wrote {len(epochs)} epoch rows to {arguments.out}", file=sys.stderr)
    if arguments.layers_out is not None:
        write_layer_csv(arguments.layers_out, spec, plan.cells, epochs)
        print(f"wrote layer rows to {arguments.layers_out}", file=sys.stderr)
    robustness_out = robustness_path(arguments, spec)
    if robustness_out is not None:
        by_key = {arm.key: arm for arm in arms}
        ended = [(by_key[key], collected.outcomes[key]) for key in sorted(collected.outcomes)]
        rows = write_robustness_csv(robustness_out, spec, plan.cells, ended)
        print(f"wrote {rows} robustness rows to {robustness_out}", file=sys.stderr)
    print(format_summary(summarise(spec, plan.cells, collected.outcomes)))
    if interrupted:
        print("interrupted: the table and files hold the arms finished so far", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
