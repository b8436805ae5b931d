"""View data of the dashboard: the newest experiments, their progress, and each one's best activation."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from scipy.stats import rankdata
from sqlalchemy.orm import Session

from app.experiments import service as experiments_service
from app.models import Experiment, ExperimentStatus
from app.reports import repository as dashboard_repository
from app.reports.progress import ProgressView, progress_view
from app.reports.service import FINISHED, format_number, format_time, model_text
from app.results import service as results_service
from app.spec_factors import cell_count

DASHBOARD_LIMIT = 100
# How the dashboard names its headline column (app.reports.repository.DASHBOARD_METRIC, per-run summary final).
DASHBOARD_METRIC_LABEL = "final test accuracy"


@dataclass
class DashboardRow:
    """One experiment on the dashboard."""

    id: uuid.UUID
    name: str
    status: str
    created_at: str
    finished_at: str
    progress: ProgressView
    runs: str
    dataset: str = ""
    model: str = ""
    cells: int = 1
    best: str = ""
    best_value: str = ""
    best_note: str = ""


@dataclass(frozen=True)
class BestActivation:
    """The dashboard's pick of one experiment: the activation with the best mean final test accuracy (with factors:
    the best mean rank over the cells), its value, and over how many cells."""

    label: str
    value: float
    cells: int
    mean_rank: float | None


def best_activations(finals: list[dashboard_repository.FinalMean]) -> dict[uuid.UUID, BestActivation]:
    """Per experiment: the activation whose succeeded runs' mean final metric is best; ranked within each cell and
    averaged over the cells where there are several (the ranking of the factorial view, on final means)."""
    by_experiment: dict[uuid.UUID, dict[int, dict[str, float]]] = {}
    for final in finals:
        by_experiment.setdefault(final.experiment_id, {}).setdefault(final.cell_index, {})[final.activation] = (
            final.mean
        )
    found: dict[uuid.UUID, BestActivation] = {}
    for experiment_id, cells in by_experiment.items():
        ranks: dict[str, list[float]] = {}
        values: dict[str, list[float]] = {}
        for means in cells.values():
            labels = list(means)
            # Rank 1 = the highest accuracy; ties share the average rank.
            for label, rank in zip(labels, rankdata([-means[label] for label in labels]), strict=True):
                ranks.setdefault(label, []).append(float(rank))
                values.setdefault(label, []).append(means[label])
        # Only activations measured in every cell are ranked over the cells (a missing cell is no evidence).
        complete = [label for label in ranks if len(ranks[label]) == len(cells)] or list(ranks)
        best = min(complete, key=lambda label: (sum(ranks[label]) / len(ranks[label]), -max(values[label])))
        found[experiment_id] = BestActivation(
            label=best,
            value=sum(values[best]) / len(values[best]),
            cells=len(cells),
            mean_rank=sum(ranks[best]) / len(ranks[best]) if len(cells) > 1 else None,
        )
    return found


def _dataset_text(spec: dict[str, Any]) -> str:
    dataset = spec.get("dataset") or {}
    text = str(dataset.get("name", ""))
    levels = (spec.get("factors") or {}).get("dataset.name")
    return ", ".join(str(level) for level in levels) + " (factor)" if levels else text


def _model_and_cells(experiment: Experiment) -> tuple[str, int]:
    """The model in a few words (naming the model factors) and the number of cells."""
    spec = results_service.stored_spec(experiment)
    if spec is None:
        return "", 1
    text = model_text(spec.model)
    varied = [path for path in spec.factors or {} if path == "model" or path.startswith("model.")]
    return (f"{text}; varied: {', '.join(varied)}" if varied else text), cell_count(spec)


@dataclass(frozen=True)
class DashboardFilters:
    """What the dashboard lists: statuses, a name substring and a dataset name (empty: all)."""

    status: str = ""
    name: str = ""
    dataset: str = ""


def dashboard(
    *, session: Session, page_size_limit: int, filters: DashboardFilters | None = None
) -> tuple[list[DashboardRow], int, bool]:
    """The newest experiments matching the filters, how many match, and whether any is still in progress."""
    filters = filters or DashboardFilters()
    listing = experiments_service.list_experiments(
        session=session,
        statuses=[ExperimentStatus(filters.status)] if filters.status else [],
        name_contains=filters.name or None,
        dataset=filters.dataset or None,
        limit=min(DASHBOARD_LIMIT, page_size_limit),
        offset=0,
        page_size_limit=page_size_limit,
    )
    best = best_activations(
        dashboard_repository.final_means(
            session=session, experiment_ids=[experiment.id for experiment in listing.experiments]
        )
    )
    rows = []
    for experiment in listing.experiments:
        counts = listing.counts.get(experiment.id)
        progress = (
            experiments_service.progress_from_counts(counts=counts, total_epochs=experiment.total_epochs)
            if counts is not None
            else None
        )
        runs = (
            ", ".join(f"{count} {status}" for status, count in sorted(counts.runs_by_status.items())) if counts else ""
        )
        pick = best.get(experiment.id)
        model, cells = _model_and_cells(experiment)
        rows.append(
            DashboardRow(
                id=experiment.id,
                name=experiment.name,
                status=str(experiment.status),
                created_at=format_time(experiment.created_at),
                finished_at=format_time(experiment.finished_at),
                progress=(
                    progress_view(progress=progress, status=str(experiment.status))
                    if progress is not None
                    else ProgressView(percent=0, epochs="no runs")
                ),
                runs=runs,
                dataset=_dataset_text(experiment.spec),
                model=model,
                cells=cells,
                best=pick.label if pick else "",
                best_value=format_number(pick.value) if pick else "",
                best_note=(
                    f"mean rank {format_number(pick.mean_rank, 3)} over {pick.cells} cells; value: mean over them"
                    if pick is not None and pick.mean_rank is not None
                    else ""
                ),
            )
        )
    in_progress = any(row.status not in FINISHED for row in rows)
    return rows, listing.total, in_progress
