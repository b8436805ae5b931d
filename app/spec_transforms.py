"""Input transforms of ``dataset.transforms`` (spec version 2): one model for every kind of ``app.catalog_datasets.TRANSFORMS``.

The kind names its parameters (``seed``, and ``std`` or ``size``); each is checked against the catalog
entry and the defaults are filled in, so a transform dumps (and hashes) the same whatever its spelling.
Whether a subset fits the training split is checked with the whole spec (``app.spec``). No torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import SerializerFunctionWrapHandler, ValidationInfo, model_serializer, model_validator

from app.catalog_datasets import TRANSFORMS
from app.spec_fields import Integer, Number, StrictModel, check_parameter, limits_in_force, without_unset

if TYPE_CHECKING:
    TransformKind = str
else:
    TransformKind = Literal[tuple(TRANSFORMS)]

_PARAMETER_FIELDS = ("seed", "std", "size")


class TransformSpec(StrictModel):
    """One input transform: ``{"kind": "permute", "seed": 3}``, ``{"kind": "gaussian_noise", "std": 0.1, "seed": 0}``,
    ``{"kind": "subset", "size": 1000, "seed": 0}``."""

    kind: TransformKind
    seed: Integer | None = None
    std: Number | None = None
    size: Integer | None = None

    @model_validator(mode="after")
    def _check_parameters(self, info: ValidationInfo) -> TransformSpec:
        known = {parameter.name: parameter for parameter in TRANSFORMS[self.kind].parameters}
        for name in _PARAMETER_FIELDS:
            value = getattr(self, name)
            if name not in known:
                if value is not None:
                    allowed = ", ".join(known)
                    raise ValueError(f"{name} is not a parameter of transform {self.kind}; allowed: {allowed}")
                continue
            checked = check_parameter(known[name], known[name].default if value is None else value, name)
            setattr(self, name, checked)
        limit = limits_in_force(info).max_seed_value
        if self.seed is not None and self.seed > limit:
            raise ValueError(f"seed must be at most {limit}, got {self.seed}")
        return self

    @model_serializer(mode="wrap")
    def _only_its_parameters(self, handler: SerializerFunctionWrapHandler) -> Any:
        return without_unset(handler(self), *_PARAMETER_FIELDS)
