"""FastAPI dependencies: settings, per-request database sessions, the caller, the run dispatcher, the JSON body."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.auth import service as auth_service
from app.auth.schemas import LOCAL_ADMIN, Principal
from app.config import Settings
from app.experiments import service as experiments_service
from app.experiments.service import Dispatcher
from app.runs import service as runs_service
from app.service_errors import InvalidInputError, UnauthorizedError, UnavailableError
from app.streaming import StreamLimits

# Bearer for programs; Basic (any user name, the key as password) lets a browser open the HTML reports.
AUTHENTICATE_CHALLENGE = 'Bearer realm="Activation Lab", Basic realm="Activation Lab"'
INVALID_KEY_CHALLENGE = 'Bearer realm="Activation Lab", error="invalid_token", Basic realm="Activation Lab"'
# A browser replays Basic credentials on any request to the site, cross-site forms included, so they are
# taken only where nothing changes; no Basic challenge there, so a browser does not offer to log in.
BASIC_METHODS = frozenset({"GET", "HEAD"})
BEARER_ONLY_CHALLENGE = 'Bearer realm="Activation Lab"'
BEARER_INVALID_KEY_CHALLENGE = 'Bearer realm="Activation Lab", error="invalid_token"'


def split_challenges(value: str) -> list[str]:
    """Split a WWW-Authenticate value holding several challenges into one challenge each."""
    challenges: list[str] = []
    for part in value.split(", "):
        scheme = part.split(" ", 1)[0]
        if challenges and ("=" in scheme or scheme.lower() not in ("bearer", "basic")):
            challenges[-1] += ", " + part
        else:
            challenges.append(part)
    return challenges


bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="APIKey",
    description="An API key from `actlab keys create --name NAME`, sent as `Authorization: Bearer <key>`. "
    "GET and HEAD also take it as the password of HTTP Basic (any user name), so a browser can open the pages; "
    "POST, PUT, PATCH and DELETE need the Bearer header (a cross-site form cannot send it).",
)


class CeleryDispatcher:
    """The production dispatcher: delegates to app.dispatch, imported on first use to keep Celery out of startup."""

    def choose_queue(self, *, session: Session, device: str) -> str:
        """The queue for the device ('auto' asks the worker registry)."""
        from app import dispatch

        return dispatch.choose_queue(session=session, device=device)

    def enqueue_runs(self, *, run_ids: list[uuid.UUID], queue: str) -> None:
        """Send one Celery task per run id."""
        from app import dispatch

        dispatch.enqueue_runs(run_ids=run_ids, queue=queue)


def get_app_settings(request: Request) -> Settings:
    """The settings the application was created with."""
    settings: Settings = request.app.state.settings
    return settings


def get_session_factory(request: Request) -> sessionmaker[Session]:
    """The application's session factory (for work that outlives the request, such as streaming)."""
    factory: sessionmaker[Session] = request.app.state.session_factory
    return factory


def get_session(request: Request) -> Iterator[Session]:
    """A database session for one request; services commit, anything uncommitted is rolled back."""
    session = get_session_factory(request)()
    try:
        yield session
    finally:
        session.close()


def stream_limits(request: Request) -> StreamLimits:
    """The admission limits of downloads and event streams (app.streaming)."""
    limits: StreamLimits = request.app.state.stream_limits
    return limits


def get_dispatcher(request: Request) -> Dispatcher:
    """The run dispatcher; tests override this dependency to record what is enqueued."""
    dispatcher: Dispatcher = request.app.state.dispatcher
    return dispatcher


async def read_json_body(request: Request) -> Any:
    """The request body parsed as JSON, or a 422 that says what is wrong.

    The body's Content-Type was already checked (application/json) by app.middleware.CrossSiteRequestMiddleware.
    """
    body = await request.body()
    if not body.strip():
        raise InvalidInputError(
            [{"loc": "", "msg": "the request body is empty; send the experiment spec as JSON", "type": "missing"}]
        )
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as error:
        raise InvalidInputError(
            [{"loc": "", "msg": f"the request body is not valid JSON: {error}", "type": "json_invalid"}]
        ) from None


def _basic_password(authorization: str | None) -> str | None:
    """The password of an ``Authorization: Basic`` header (where browsers put the key), or None."""
    if not authorization:
        return None
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _user, separator, password = decoded.partition(":")
    return password if separator and password else None


def _authenticate(factory: sessionmaker[Session], key: str) -> Principal | None:
    with factory() as session:
        return auth_service.authenticate(session=session, key=key)


async def get_current_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    """The caller, from its API key; 401 with a WWW-Authenticate challenge when the key is missing, unknown or revoked.

    With authentication off (setting auth_required) every request acts as the built-in local admin.
    The principal is also made the current one for the request's context, where services read it.
    HTTP Basic is taken on GET and HEAD only (BASIC_METHODS); anything else needs the Bearer header (401 saying so).
    """
    settings = get_app_settings(request)
    if not settings.auth_required:
        principal = LOCAL_ADMIN
    else:
        basic = _basic_password(request.headers.get("authorization")) if credentials is None else None
        if basic is not None and request.method not in BASIC_METHODS:
            raise UnauthorizedError(
                f"HTTP Basic credentials are accepted on GET and HEAD only; send {request.method} requests with "
                "the API key as `Authorization: Bearer <key>` (a browser's saved login is not enough to change "
                "anything)",
                headers={"WWW-Authenticate": BEARER_ONLY_CHALLENGE},
            )
        key = credentials.credentials if credentials is not None else basic
        browsable = request.method in BASIC_METHODS
        if not key:
            raise UnauthorizedError(
                "an API key is required: send it as `Authorization: Bearer <key>` "
                "(an admin creates keys with `actlab keys create --name NAME`)",
                headers={"WWW-Authenticate": AUTHENTICATE_CHALLENGE if browsable else BEARER_ONLY_CHALLENGE},
            )
        try:
            found = await run_in_threadpool(_authenticate, get_session_factory(request), key)
        except SQLAlchemyError as error:
            # Not the caller's fault: say so (503, retry) instead of failing with a 500.
            raise UnavailableError(
                f"the database did not answer while checking the API key ({type(error).__name__}); retry shortly",
                headers={"Retry-After": "5"},
            ) from error
        if found is None:
            raise UnauthorizedError(
                "the API key is unknown or has been revoked",
                headers={"WWW-Authenticate": INVALID_KEY_CHALLENGE if browsable else BEARER_INVALID_KEY_CHALLENGE},
            )
        principal = found
    request.state.principal = principal
    # Set from this async dependency, it is seen by the endpoint and its threadpool calls (they copy the context).
    auth_service.set_current_principal(principal)
    return principal


PrincipalDependency = Annotated[Principal, Depends(get_current_principal)]


def _path_uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def _check_path_resources(
    factory: sessionmaker[Session], principal: Principal, experiment_id: uuid.UUID | None, run_id: uuid.UUID | None
) -> None:
    with factory() as session:
        if experiment_id is not None:
            experiments_service.require_visible(session=session, experiment_id=experiment_id, viewer=principal)
        if run_id is not None:
            runs_service.require_run(session=session, run_id=run_id, viewer=principal)


async def authorize_path_resources(request: Request, principal: PrincipalDependency) -> None:
    """Authenticate, then 404 for an experiment or run in the path that the caller may not see.

    Applied to whole routers in app.main, so a new endpoint under /v1/experiments/{experiment_id}
    is owner-checked even if its code forgets to pass the caller along. Malformed ids are left to
    the endpoint's own validation (422).
    """
    experiment_id = _path_uuid(request.path_params["experiment_id"]) if "experiment_id" in request.path_params else None
    run_id = _path_uuid(request.path_params["run_id"]) if "run_id" in request.path_params else None
    if experiment_id is None and run_id is None:
        return
    await run_in_threadpool(_check_path_resources, get_session_factory(request), principal, experiment_id, run_id)


def _takes_many_values(parameter_schema: dict[str, Any]) -> bool:
    if parameter_schema.get("type") == "array":
        return True
    return any(_takes_many_values(option) for option in parameter_schema.get("anyOf", []))


@dataclass(frozen=True)
class QueryParameters:
    """The query parameters one operation declares, and which of them take a single value."""

    names: frozenset[str]
    single_valued: frozenset[str]
    # Prefixes of parameter families an operation reads itself (its "x-query-prefixes"), e.g. "factor.".
    prefixes: tuple[str, ...] = ()


def declared_query_parameters(app: Any) -> dict[tuple[str, str], QueryParameters]:
    """For each (method, path template): its declared query parameters, read once from the OpenAPI document."""
    table: dict[tuple[str, str], QueryParameters] | None = getattr(app.state, "declared_query_parameters", None)
    if table is None:
        table = {}
        for path, operations in app.openapi().get("paths", {}).items():
            for method, operation in operations.items():
                query = [parameter for parameter in operation.get("parameters", []) if parameter.get("in") == "query"]
                table[(method.upper(), path)] = QueryParameters(
                    names=frozenset(parameter["name"] for parameter in query),
                    single_valued=frozenset(
                        parameter["name"] for parameter in query if not _takes_many_values(parameter.get("schema", {}))
                    ),
                    prefixes=tuple(operation.get("x-query-prefixes", ())),
                )
        app.state.declared_query_parameters = table
    return table


async def check_query_parameters(request: Request) -> None:
    """422 for an unknown query parameter (a misspelt filter would be silently ignored) or a repeated one-value one."""
    path = getattr(request.scope.get("route"), "path", None)
    if not request.query_params or not isinstance(path, str):
        return
    declared = declared_query_parameters(request.app).get((request.method, path))
    if declared is None:
        return
    errors = []
    for name in dict.fromkeys(request.query_params.keys()):
        if name not in declared.names and not name.startswith(declared.prefixes):
            allowed = (
                ", ".join([*sorted(declared.names), *(f"{prefix}<name>" for prefix in declared.prefixes)]) or "none"
            )
            message = f"unknown query parameter {name!r}; allowed: {allowed}"
            errors.append({"loc": f"query.{name}", "msg": message, "type": "unknown_parameter"})
        elif name in declared.single_valued and (count := len(request.query_params.getlist(name))) > 1:
            message = f"{name} takes one value but was given {count} times"
            errors.append({"loc": f"query.{name}", "msg": message, "type": "repeated_parameter"})
    if errors:
        raise InvalidInputError(errors)


SettingsDependency = Annotated[Settings, Depends(get_app_settings)]
SessionDependency = Annotated[Session, Depends(get_session)]
SessionFactoryDependency = Annotated[sessionmaker[Session], Depends(get_session_factory)]
DispatcherDependency = Annotated[Dispatcher, Depends(get_dispatcher)]
JsonBody = Annotated[Any, Depends(read_json_body)]
