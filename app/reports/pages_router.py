"""HTML pages beside the report: comparing experiments and the activation galleries (no JavaScript)."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from app.dependencies import SessionDependency, SettingsDependency
from app.reports.compare import compare_page
from app.reports.gallery import catalog_gallery, experiment_gallery
from app.reports.router import templates
from app.results import service as results_service

router = APIRouter(tags=["reports"])


@router.get("/compare", response_class=HTMLResponse, summary="Comparison of experiments")
def compare(
    request: Request,
    session: SessionDependency,
    settings: SettingsDependency,
    experiments: Annotated[
        list[str],
        Query(
            max_length=4000,
            description="Experiment ids separated by commas or repeated (the dashboard's check boxes); the first is "
            "the reference.",
        ),
    ],
    metric: Annotated[str, Query(max_length=40)] = "test_accuracy",
    summary: Annotated[Literal["final", "best", "mean_last_k"], Query()] = "final",
    k: Annotated[int, Query(ge=1, le=10_000)] = 3,
    alpha: Annotated[float, Query(gt=0, lt=1)] = 0.05,
    include_diverged: Annotated[bool, Query()] = False,
) -> HTMLResponse:
    """The experiments' curves overlaid and the table of GET /v1/compare."""
    options = results_service.result_options(
        metric=metric,
        summary=summary,
        k=k,
        alpha=alpha,
        include_diverged=include_diverged,
        default_equivalence_margin=settings.equivalence_margin,
        power=settings.seeds_power,
    )
    page = compare_page(
        session=session, experiments=",".join(experiments), options=options, limit=settings.max_compare_experiments
    )
    return templates.TemplateResponse(request, "compare.html", {"page": page})


@router.get(
    "/experiments/{experiment_id}/gallery", response_class=HTMLResponse, summary="The activations of one experiment"
)
def gallery(request: Request, experiment_id: uuid.UUID, session: SessionDependency) -> HTMLResponse:
    """f(x) and f'(x) of every activation of the experiment, with formulas and learned values."""
    page = experiment_gallery(session=session, experiment_id=experiment_id)
    return templates.TemplateResponse(request, "gallery.html", {"page": page})


@router.get("/catalog/activations", response_class=HTMLResponse, summary="Every catalog activation")
def catalog(request: Request) -> HTMLResponse:
    """f(x) and f'(x) of every activation a spec may name, at its defaults."""
    return templates.TemplateResponse(request, "gallery.html", {"page": catalog_gallery()})
