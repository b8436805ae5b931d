"""HTTP endpoint of the caller's identity (keys themselves are managed with `actlab keys`)."""

from __future__ import annotations

from fastapi import APIRouter

from app.auth.schemas import WhoAmI
from app.dependencies import PrincipalDependency, SettingsDependency

router = APIRouter(prefix="/v1", tags=["meta"])


@router.get(
    "/me",
    response_model=WhoAmI,
    summary="Who the API key belongs to",
    description="The name, prefix and role of the calling API key: a quick check that a key works.",
)
def who_am_i(principal: PrincipalDependency, settings: SettingsDependency) -> WhoAmI:
    """The caller."""
    return WhoAmI(
        name=principal.name,
        prefix=principal.prefix,
        is_admin=principal.is_admin,
        owner_id=principal.owner_id,
        auth_required=settings.auth_required,
    )
