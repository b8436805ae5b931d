"""The FastAPI application: routers, error handlers, the body size limit, the cross-site request checks.

Run it with ``uvicorn --factory app.main:create_app`` (``actlab serve`` does this for you).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib import metadata
from typing import Any

import sqlalchemy.exc
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.allowed_methods import AllowedMethodsMiddleware
from app.archives.router import router as archives_router
from app.auth.router import router as auth_router
from app.compare.router import router as compare_router
from app.config import Settings, get_settings
from app.db import make_engine, session_factory
from app.dependencies import CeleryDispatcher, authorize_path_resources, check_query_parameters, split_challenges
from app.experiments.router import router as experiments_router
from app.meta.docs import router as docs_router
from app.meta.router import router as meta_router
from app.metrics.router import router as metrics_router
from app.middleware import (
    JSON_MEDIA_TYPE,
    STATE_CHANGING_METHODS,
    BodySizeLimitMiddleware,
    CrossSiteRequestMiddleware,
)
from app.monitoring.middleware import RequestMetricsMiddleware
from app.monitoring.router import router as monitoring_router
from app.monitoring.service import ServiceMetrics
from app.reports.assets import router as report_assets_router
from app.reports.pages_router import router as report_pages_router
from app.reports.router import router as reports_router
from app.results.events_router import router as events_router
from app.results.router import router as results_router
from app.runs.router import router as runs_router
from app.schemas import MessageResponse, ValidationErrorResponse
from app.service_errors import InvalidInputError, ServiceError
from app.spec import ExperimentSpec
from app.streaming import StreamLimits

DESCRIPTION = """\
Controlled comparisons of neural-network activation functions.

Submit an experiment spec (dataset, model, activations, seeds, shared training settings) to
`POST /v1/experiments`; every (activation, seed) arm trains on a worker; poll
`GET /v1/experiments/{id}` and pull the per-epoch metrics as JSON or CSV from
`GET /v1/experiments/{id}/metrics`. `GET /v1/catalog` lists what a spec may name and the limits in force.

Every `/v1` route and report page needs an API key, sent as `Authorization: Bearer <key>` (on GET and HEAD
browsers may send it as the password of HTTP Basic); an admin creates keys with `actlab keys create --name NAME`.
POST, PUT, PATCH and DELETE need the Bearer header, and their bodies must be `application/json` (the archive
import: `application/zip` or `multipart/form-data`), so a page of another site cannot change anything. Each key sees
the experiments it submitted (an admin key sees all); another key's experiment answers 404. `/healthz`,
`/readyz`, `/metrics` (Prometheus) and this description are open.
"""

OPENAPI_TAGS = [
    {"name": "experiments", "description": "Submit, list, inspect and cancel experiments."},
    {"name": "runs", "description": "One run per (activation, seed) arm."},
    {"name": "metrics", "description": "Per-epoch and per-layer metric tables, streamed as JSON or CSV."},
    {"name": "meta", "description": "The catalog and health checks."},
    {"name": "results", "description": "Cross-seed statistics, diagnostics, plots, archives and live events."},
    {"name": "reports", "description": "Server-rendered HTML: the dashboard and experiment reports."},
]

logger = logging.getLogger(__name__)

# Every route of these routers needs an API key and is owner-checked (see authorize_path_resources).
# Open: /healthz, /readyz, /metrics and the API description (/docs, /openapi.json).
PROTECTED_ROUTE_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        "model": MessageResponse,
        "description": "No API key, or an unknown or revoked one; or HTTP Basic on a method other than GET and HEAD.",
    }
}
# Bodies of state-changing requests: JSON, except where a path takes something else (CrossSiteRequestMiddleware).
REQUEST_BODY_TYPES = {"/v1/experiments/import": ("application/zip", "multipart/form-data")}


def _version() -> str:
    try:
        return metadata.version("activation-lab")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def request_error_items(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Turn FastAPI's request errors into {loc, msg, type} items: body paths bare ('' for the whole body), query.NAME, path.NAME."""
    items = []
    for error in errors:
        location = list(error.get("loc", ()))
        if location and location[0] == "body":
            location = location[1:]
        error_type = str(error.get("type", "value_error"))
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        if error_type == "json_invalid":
            location = []
            message = f"the request body is not valid JSON: {error.get('ctx', {}).get('error', message)}"
        items.append({"loc": ".".join(str(part) for part in location), "msg": message, "type": error_type})
    return items


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _request_validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": request_error_items(error.errors())}, status_code=422)

    @app.exception_handler(InvalidInputError)
    async def _invalid_input(_request: Request, error: InvalidInputError) -> JSONResponse:
        return JSONResponse({"detail": error.errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> Response:
        # FastAPI answers a typed body it cannot decode (not UTF-8) with a bare 400 raised from the
        # decoding error: the same 422 as every other body that is not JSON (app.dependencies.read_json_body).
        if error.status_code == 400 and isinstance(error.__cause__, ValueError):
            message = f"the request body is not valid JSON: {error.__cause__}"
            return JSONResponse({"detail": [{"loc": "", "msg": message, "type": "json_invalid"}]}, status_code=422)
        return await http_exception_handler(request, error)

    @app.exception_handler(sqlalchemy.exc.TimeoutError)
    @app.exception_handler(sqlalchemy.exc.OperationalError)
    async def _database_unavailable(_request: Request, error: Exception) -> JSONResponse:
        # No free pooled connection within database_pool_timeout, or the database refused or locked:
        # not the caller's fault and usually brief, so a 503 to retry rather than a 500.
        retry_after = str(app.state.settings.stream_retry_after_seconds)
        logger.warning("database unavailable for a request: %s", error)
        return JSONResponse(
            {"detail": f"the database is busy or unreachable ({type(error).__name__}); retry in {retry_after} s"},
            status_code=503,
            headers={"Retry-After": retry_after},
        )

    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, error: ServiceError) -> JSONResponse:
        headers = dict(error.headers or {})
        challenges = headers.pop("WWW-Authenticate", None)
        response = JSONResponse({"detail": error.detail}, status_code=error.status_code, headers=headers)
        if challenges:
            # One challenge per header line: browsers (Chromium) read only the first challenge of a line,
            # and need the Basic one to ask for the key (as the password) on the HTML report pages.
            for challenge in split_challenges(challenges):
                response.headers.append("WWW-Authenticate", challenge)
        return response


def _document_cross_site_refusals(responses: dict[str, Any], path: str, message: dict[str, str]) -> None:
    """The 403 and 415 of app.middleware.CrossSiteRequestMiddleware, on a state-changing operation."""
    allowed = " or ".join(REQUEST_BODY_TYPES.get(path, (JSON_MEDIA_TYPE,)))
    content = {"application/json": {"schema": message}}
    responses.setdefault(
        "403", {"description": "Sent from a page of another origin (Origin header).", "content": content}
    )
    responses.setdefault(
        "415",
        {"description": f"A body that is not {allowed}; the message names the allowed types.", "content": content},
    )


def _document_error_bodies(schema: dict[str, Any]) -> None:
    """Make the documented error bodies match what the handlers send.

    FastAPI documents 422 with its own body (``loc`` a list), but this API sends ErrorItem (``loc`` a
    dotted string); errors of HTML routes are JSON too; and every route with an experiment or run id
    in its path can answer 404 (the owner check of app.dependencies.authorize_path_resources); every
    state-changing one 403 and 415 (the cross-site request checks).
    """
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    error_schema = ValidationErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(error_schema.pop("$defs", {}))
    components["HTTPValidationError"] = error_schema
    components.pop("ValidationError", None)
    message = {"$ref": "#/components/schemas/MessageResponse"}
    components.setdefault("MessageResponse", MessageResponse.model_json_schema())
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            for code, response in responses.items():
                content = response.get("content", {})
                if code.startswith(("4", "5")) and "text/html" in content and "$ref" in content["text/html"]["schema"]:
                    content["application/json"] = content.pop("text/html")
            if method.upper() in STATE_CHANGING_METHODS:
                _document_cross_site_refusals(responses, path, message)
            if ("{experiment_id}" in path or "{run_id}" in path) and "404" not in responses:
                responses["404"] = {
                    "description": "No such experiment or run, or it belongs to another API key.",
                    "content": {"application/json": {"schema": message}},
                }


def _install_openapi(app: FastAPI) -> None:
    """Publish ExperimentSpec in the components: the submit endpoint validates it itself, with the app's limits."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            tags=OPENAPI_TAGS,
        )
        spec_schema = ExperimentSpec.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(spec_schema.pop("$defs", {}))
        components["ExperimentSpec"] = spec_schema
        _document_error_bodies(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API for these settings (default: from the environment); the schema must already be migrated."""
    settings = settings or get_settings()
    engine = make_engine(settings.database_url, settings=settings)

    metrics = ServiceMetrics(settings=settings, session_factory=session_factory(engine))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if not settings.auth_required:
            logger.warning("authentication is off (auth_required=false): every request acts as an admin")
        yield
        metrics.close()
        engine.dispose()

    app = FastAPI(
        title="Activation Lab",
        version=_version(),
        description=DESCRIPTION,
        openapi_tags=OPENAPI_TAGS,
        lifespan=lifespan,
        # /docs and /redoc come from app.meta.docs, with their assets served here rather than from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.session_factory = metrics.session_factory
    app.state.dispatcher = CeleryDispatcher()
    app.state.metrics = metrics
    app.state.stream_limits = StreamLimits.from_settings(settings)

    app.add_middleware(
        BodySizeLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        path_limits={"/v1/experiments/import": settings.max_import_bytes},
    )
    app.add_middleware(AllowedMethodsMiddleware, routes=lambda: app.routes)
    app.add_middleware(CrossSiteRequestMiddleware, body_types=REQUEST_BODY_TYPES)
    # Added last, so it is the outer one: it also sees the 413s of the size limit.
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    _install_error_handlers(app)
    protected: dict[str, Any] = {
        "dependencies": [Depends(authorize_path_resources), Depends(check_query_parameters)],
        "responses": PROTECTED_ROUTE_RESPONSES,
    }
    app.include_router(experiments_router, **protected)
    app.include_router(runs_router, **protected)
    app.include_router(metrics_router, **protected)
    app.include_router(meta_router)
    app.include_router(docs_router)
    app.include_router(report_assets_router)
    app.include_router(auth_router, **protected)
    app.include_router(monitoring_router)
    app.include_router(results_router, **protected)
    app.include_router(compare_router, **protected)
    app.include_router(archives_router, **protected)
    app.include_router(events_router, **protected)
    app.include_router(reports_router, **protected)
    app.include_router(report_pages_router, **protected)
    _install_openapi(app)
    return app
