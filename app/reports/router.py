"""HTML pages: the dashboard at / and the report of one experiment at /experiments/{id} (no JavaScript)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from app.catalog_datasets import DATASETS
from app.dependencies import SessionDependency, SettingsDependency
from app.models import ExperimentStatus
from app.reports import dashboard as dashboard_view
from app.reports import service
from app.results import service as results_service
from app.service_errors import invalid_query_parameter

router = APIRouter(tags=["reports"], include_in_schema=True)
templates = Jinja2Templates(directory=str(Path(__file__).resolve().parent.parent / "templates"))
templates.env.filters["number"] = service.format_number


@router.get("/", response_class=HTMLResponse, summary="Dashboard: the experiments and their status")
def dashboard(
    request: Request,
    session: SessionDependency,
    settings: SettingsDependency,
    status: Annotated[str, Query(max_length=20, description="Keep this status (empty: all).")] = "",
    name: Annotated[str, Query(max_length=200, description="Keep names containing this (case-insensitive).")] = "",
    dataset: Annotated[
        str,
        Query(max_length=64, description="Keep this dataset, also as a level of a dataset.name factor (empty: all)."),
    ] = "",
) -> HTMLResponse:
    """The newest experiments with status, progress, dataset, model and best activation; filters; compare links.

    Refreshes itself while any listed experiment is in progress.
    """
    statuses = [str(choice) for choice in ExperimentStatus]
    if status and status not in statuses:
        raise invalid_query_parameter("status", f"status must be empty or one of {', '.join(statuses)}; got {status!r}")
    filters = dashboard_view.DashboardFilters(status=status, name=name.strip(), dataset=dataset)
    rows, total, in_progress = dashboard_view.dashboard(
        session=session, page_size_limit=settings.page_size_limit, filters=filters
    )
    return templates.TemplateResponse(
        request,
        "dashboard.html",
        {
            "rows": rows,
            "total": total,
            "filters": filters,
            "statuses": statuses,
            "datasets": list(DATASETS),
            "metric": dashboard_view.DASHBOARD_METRIC_LABEL,
            "refresh": service.REFRESH_SECONDS if in_progress else None,
        },
    )


@router.get("/experiments/{experiment_id}", response_class=HTMLResponse, summary="Report of one experiment")
def report(
    request: Request,
    experiment_id: uuid.UUID,
    session: SessionDependency,
    settings: SettingsDependency,
    metric: Annotated[str, Query(max_length=40)] = "test_accuracy",
    summary: Annotated[Literal["final", "best", "mean_last_k"], Query()] = "final",
    k: Annotated[int, Query(ge=1, le=10_000)] = 3,
    threshold: Annotated[str | None, Query(max_length=40, description="A number, or empty for none.")] = None,
    baseline: Annotated[str | None, Query(max_length=200)] = None,
    alpha: Annotated[float, Query(gt=0, lt=1)] = 0.05,
    include_diverged: Annotated[bool, Query()] = False,
    equivalence_margin: Annotated[
        str | None, Query(max_length=40, description="A positive number, or empty for the setting's default.")
    ] = None,
) -> HTMLResponse:
    """Results table, verdicts, pairwise matrix, recommendation, diagnostics and plots of one experiment."""
    options = results_service.result_options(
        metric=metric,
        summary=summary,
        k=k,
        threshold=_optional_number(threshold, "threshold"),
        baseline=baseline or None,
        alpha=alpha,
        include_diverged=include_diverged,
        equivalence_margin=_optional_number(equivalence_margin, "equivalence_margin"),
        default_equivalence_margin=settings.equivalence_margin,
        power=settings.seeds_power,
    )
    page = service.report(
        session=session, experiment_id=experiment_id, options=options, chance_margin=settings.chance_margin
    )
    return templates.TemplateResponse(
        request,
        "report.html",
        {"report": page, "refresh": None if page.finished else service.REFRESH_SECONDS},
    )


def _optional_number(text: str | None, name: str) -> float | None:
    """An optional number from a form field, where an empty field means none."""
    if text is None or not text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        raise invalid_query_parameter(name, f"{name} must be a number or empty; got {text!r}") from None
