"""The catalog and the health endpoints."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from app.dependencies import SettingsDependency, get_current_principal
from app.meta.checks import WorkerSupervision, check_broker, check_database
from app.meta.schemas import Catalog, CheckResult, Liveness, Readiness, build_catalog
from app.results.encoding import image_media_type
from app.results.gallery import gallery_image
from app.results.plots import IMAGE_FORMATS
from app.schemas import MessageResponse, ValidationErrorResponse
from app.service_errors import InvalidInputError
from app.spec import ActivationSpec

router = APIRouter(tags=["meta"])


@router.get(
    "/v1/catalog",
    response_model=Catalog,
    summary="What a spec may name",
    description="Activations with their parameters, defaults and formulas; datasets with shapes and sizes; "
    "model kinds; optimizers; schedules; init schemes; the formula language; and the limits in force.",
    dependencies=[Depends(get_current_principal)],
    responses={401: {"model": MessageResponse, "description": "No API key, or an unknown or revoked one."}},
)
def get_catalog(settings: SettingsDependency) -> Catalog:
    """The catalog."""
    return build_catalog(settings)


@router.get(
    "/v1/catalog/activations/{name}/{filename}",
    response_class=Response,
    summary="f(x) and f'(x) of one catalog activation as SVG or PNG",
    description="filename is plot.svg or plot.png; the activation at its default parameters (learnable units at "
    "their start, input-conditioned ones at a zero hyper-network output). `custom` needs `expression`.",
    dependencies=[Depends(get_current_principal)],
    responses={
        200: {"content": {"image/png": {}, "image/svg+xml": {}}, "description": "The image."},
        401: {"model": MessageResponse},
        422: {"model": ValidationErrorResponse},
    },
)
def catalog_activation_plot(
    name: str,
    filename: str,
    expression: Annotated[str | None, Query(max_length=2000, description="Formula over x (custom only).")] = None,
) -> Response:
    """The catalog entry's closed forms drawn from numpy."""
    stem, _, image_format = filename.rpartition(".")
    if stem != "plot" or image_format not in IMAGE_FORMATS:
        raise InvalidInputError(
            [
                {
                    "loc": "path.filename",
                    "msg": f"filename must be one of {', '.join(f'plot.{kind}' for kind in IMAGE_FORMATS)}; "
                    f"got {filename!r}",
                    "type": "enum",
                }
            ]
        )
    try:
        spec = ActivationSpec.model_validate({"name": name, "expression": expression})
    except ValidationError as error:
        raise InvalidInputError(
            [{"loc": "path.name", "msg": detail["msg"], "type": detail["type"]} for detail in error.errors()]
        ) from None
    content = gallery_image({spec.display_label: spec}, image_format=image_format, title=spec.display_label)
    return Response(content, media_type=image_media_type(image_format))


@router.get("/healthz", response_model=Liveness, summary="The process is up")
def healthz() -> Liveness:
    """Always 200 while the process answers."""
    return Liveness(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="The database and the broker are reachable (and the worker of `actlab serve` is up)",
    description="Under `actlab serve` with its worker, the `worker` check also requires that worker to be running "
    "and to have recorded since its last (re)start that it consumes the queues; a separate API (uvicorn) does not "
    "depend on workers and has no such check.",
    responses={503: {"model": Readiness, "description": "A check failed; `checks` says which."}},
)
def readyz(request: Request, settings: SettingsDependency) -> JSONResponse:
    """200 when every check passes, else 503 naming the failed check."""
    database_ok, database_detail = check_database(request.app.state.engine)
    broker_ok, broker_detail = check_broker(settings)
    checks = {
        "database": CheckResult(ok=database_ok, detail=database_detail),
        "broker": CheckResult(ok=broker_ok, detail=broker_detail),
    }
    supervisor: WorkerSupervision | None = getattr(request.app.state, "worker_supervisor", None)
    if supervisor is not None:
        worker_ok, worker_detail = supervisor.check()
        checks["worker"] = CheckResult(ok=worker_ok, detail=worker_detail)
    readiness = Readiness(
        status="ready" if all(check.ok for check in checks.values()) else "unavailable", checks=checks
    )
    return JSONResponse(readiness.model_dump(mode="json"), status_code=200 if readiness.status == "ready" else 503)
