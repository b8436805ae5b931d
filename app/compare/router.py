"""HTTP endpoints of comparisons: GET /v1/compare (the aligned table) and its learning-curve plot."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from app.compare import service
from app.compare.plots import COMPARE_PLOT_KINDS, compare_image
from app.dependencies import SessionDependency, SettingsDependency
from app.results.encoding import TABLE_MEDIA_TYPES, encode_table, image_media_type
from app.results.plots import IMAGE_FORMATS
from app.results.queries import FormatQuery, ResultQuery, result_query
from app.schemas import MessageResponse, ValidationErrorResponse
from app.service_errors import InvalidInputError

router = APIRouter(prefix="/v1/compare", tags=["results"])

ExperimentsQuery = Annotated[
    str,
    Query(
        max_length=4000,
        description="Experiment ids separated by commas: 2 to ACTLAB_MAX_COMPARE_EXPERIMENTS distinct ones the caller "
        "may see; the first is the reference the others are compared with.",
    ),
]
CompareQuery = Annotated[
    ResultQuery,
    Depends(result_query("metric", "summary", "k", "alpha", "include_diverged", "resamples", "equivalence_margin")),
]
PlotQuery = Annotated[ResultQuery, Depends(result_query("metric", "summary", "k", "include_diverged"))]
_ERRORS: dict[int | str, dict[str, object]] = {
    404: {"model": MessageResponse, "description": "An experiment does not exist or is not the caller's."},
    422: {
        "model": ValidationErrorResponse,
        "description": "Bad, repeated or too many ids (loc query.experiments), experiments on different datasets "
        "(query.experiments, type dataset_mismatch), or a metric some experiment did not record (query.metric).",
    },
}


@router.get(
    "",
    response_class=Response,
    summary="Compare experiments: activations aligned across them, with paired differences",
    description=(
        "One row per (activation, experiment), and with factors per (cell, activation, experiment): activations "
        "align by label (and cell label). Each row has the results view's n, mean, std and 95% bootstrap CI of "
        "the metric's per-run summary. The first experiment is the reference: every other row has "
        "difference_of_means (its mean minus the reference's) and, over the seeds both ran (paired_seeds; the "
        "same seed on the same dataset gives the same split and data order), the paired comparison of "
        "GET /v1/experiments/{id}/results (mean_difference with its bootstrap CI, probability_outperforms, "
        "Wilcoxon or paired t, TOST within equivalence_margin), Holm over every comparison with the reference "
        "(column correction), and verdict better | worse | equivalent | inconclusive | insufficient for the row's "
        "experiment against the reference (reference on the reference's rows). The experiments must share the "
        "dataset and have recorded the metric, or the answer is a 422 saying which differ."
    ),
    responses={
        200: {
            "description": "The aligned table.",
            "content": {
                "application/json": {},
                "text/csv": {"schema": {"type": "string"}},
                "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        **_ERRORS,
    },
)
def compare(
    experiments: ExperimentsQuery,
    session: SessionDependency,
    settings: SettingsDependency,
    query: CompareQuery,
    output_format: FormatQuery = "json",
) -> Response:
    """The comparison table in JSON, CSV or Parquet."""
    found = service.comparison(
        session=session, experiments=experiments, options=query.options(), limit=settings.max_compare_experiments
    )
    headers = {"Content-Disposition": f'inline; filename="compare.{output_format}"'}
    return Response(
        encode_table(found.table, output_format), media_type=TABLE_MEDIA_TYPES[output_format], headers=headers
    )


@router.get(
    "/plots/{filename}",
    response_class=Response,
    summary="A plot of a comparison as PNG or SVG",
    description="filename is KIND.png or KIND.svg; kinds: "
    + "; ".join(f"`{kind}`: {text}" for kind, text in COMPARE_PLOT_KINDS.items()),
    responses={200: {"content": {"image/png": {}, "image/svg+xml": {}}, "description": "The image."}, **_ERRORS},
)
def compare_plot(
    filename: str,
    experiments: ExperimentsQuery,
    session: SessionDependency,
    settings: SettingsDependency,
    query: PlotQuery,
) -> Response:
    """The overlaid learning curves of the compared experiments."""
    kind, _, image_format = filename.rpartition(".")
    if kind not in COMPARE_PLOT_KINDS or image_format not in IMAGE_FORMATS:
        allowed = ", ".join(f"{name}.{extension}" for name in COMPARE_PLOT_KINDS for extension in IMAGE_FORMATS)
        raise InvalidInputError(
            [{"loc": "path.filename", "msg": f"filename must be one of {allowed}; got {filename!r}", "type": "enum"}]
        )
    options = query.options()
    found = service.comparable_experiments(
        session=session, experiments=experiments, options=options, limit=settings.max_compare_experiments
    )
    content = compare_image(found, kind=kind, metric=options.metric, image_format=image_format)
    return Response(content, media_type=image_media_type(image_format), headers={"Cache-Control": "no-cache"})
