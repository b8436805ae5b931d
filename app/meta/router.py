"""The catalog and the health endpoints."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from app.dependencies import SettingsDependency, get_current_principal
from app.meta.checks import WorkerSupervision, check_broker, check_database
from app.meta.schemas import Catalog, CheckResult, Liveness, Readiness, build_catalog
from app.schemas import MessageResponse

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
