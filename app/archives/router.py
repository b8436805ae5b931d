"""HTTP endpoints of archives: export an experiment as a zip, import one as a new experiment."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from app.archives import service, tensorboard
from app.archives.schemas import ImportResponse
from app.archives.tensorboard import TENSORBOARD_EXTRA
from app.dependencies import PrincipalDependency, SessionDependency, SettingsDependency
from app.models import ExperimentStatus
from app.schemas import MessageResponse, ValidationErrorResponse
from app.service_errors import InvalidInputError

# Archives belong with the results in the API description (one tag, as before they had their own router).
router = APIRouter(prefix="/v1/experiments", tags=["results"])

ExportFormat = Literal["zip", "tensorboard"]


@router.get(
    "/{experiment_id}/export",
    response_class=Response,
    summary="Archive an experiment as a zip",
    description="format=zip (the default): spec.json (the canonical spec; POST it to /v1/experiments to rerun), "
    "experiment.json, runs.csv, metrics.csv, layer_metrics.csv, robustness.csv, results.csv and diagnostics.csv; "
    "POST /v1/experiments/import loads it back. format=tensorboard: one TensorBoard event folder per run "
    "(scalars per epoch, per-layer gradient norms and dead/saturated fractions, hparams with the activation, "
    "seed and cell levels); unzip it and run `tensorboard --logdir`. It needs the tensorboard extra "
    f"({TENSORBOARD_EXTRA}); without it the answer is 501.",
    responses={
        200: {"content": {"application/zip": {}}},
        404: {"model": MessageResponse},
        501: {"model": MessageResponse},
    },
)
def export(
    experiment_id: uuid.UUID,
    session: SessionDependency,
    format: Annotated[ExportFormat, Query(description="zip (re-importable) or tensorboard (event files)")] = "zip",
) -> Response:
    """The experiment as a zip archive (re-importable, or TensorBoard event files)."""
    if format == "tensorboard":
        try:
            archive = tensorboard.export_tensorboard(session=session, experiment_id=experiment_id)
        except tensorboard.TensorBoardUnavailableError as error:
            return JSONResponse({"detail": str(error)}, status_code=501)
    else:
        archive = service.export_archive(session=session, experiment_id=experiment_id)
    headers = {"Content-Disposition": f'attachment; filename="{archive.filename}"'}
    return Response(archive.content, media_type=service.ARCHIVE_MEDIA_TYPE, headers=headers)


@router.post(
    "/import",
    status_code=201,
    response_model=ImportResponse,
    summary="Load an exported archive as a new experiment",
    description="Send the zip from GET /v1/experiments/{id}/export as the request body (Content-Type "
    "application/zip) or as a multipart file upload. The spec is validated against the limits in force; "
    "runs keep their statuses (runs that were still queued or running are stored as cancelled); nothing is "
    "trained. A bad archive gets 422 naming the file and column.",
    responses={413: {"model": MessageResponse}, 422: {"model": ValidationErrorResponse}},
)
async def import_experiment(
    request: Request,
    session: SessionDependency,
    settings: SettingsDependency,
    principal: PrincipalDependency,
    response: Response,
) -> ImportResponse:
    """Store an archive as a new experiment owned by the caller."""
    content = await _upload_bytes(request)
    outcome = await run_in_threadpool(
        lambda: service.import_archive(session=session, content=content, settings=settings, owner_id=principal.owner_id)
    )
    experiment = outcome.experiment
    base = f"/v1/experiments/{experiment.id}"
    response.headers["Location"] = base
    return ImportResponse(
        id=experiment.id,
        imported_from=outcome.imported_from,
        name=experiment.name,
        status=ExperimentStatus(experiment.status),
        spec_hash=experiment.spec_hash,
        runs=outcome.runs,
        epoch_metrics=outcome.epoch_metrics,
        layer_metrics=outcome.layer_metrics,
        robustness=outcome.robustness,
        links={"self": base, "results": f"{base}/results", "report": f"/experiments/{experiment.id}"},
    )


async def _upload_bytes(request: Request) -> bytes:
    """The zip from a raw body or from the first file of a multipart form."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        for value in form.values():
            if not isinstance(value, str):
                return bytes(await value.read())
        raise InvalidInputError(
            [{"loc": "body.file", "msg": "the form holds no file; attach the exported zip", "type": "missing"}]
        )
    body = await request.body()
    if not body:
        raise InvalidInputError(
            [{"loc": "body", "msg": "the request body is empty; send the exported zip", "type": "missing"}]
        )
    return body
