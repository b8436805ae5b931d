"""Schemas of the catalog and the health checks, and how the catalog is built from app.catalog."""

from __future__ import annotations

import typing
from typing import Any, Literal

from pydantic import BaseModel, Field

from app import catalog, catalog_datasets, spec_cost
from app.catalog import ParameterValue
from app.config import Settings, SpecLimits
from app.expressions import BINARY_OPERATORS, MAX_NODES, UNARY_OPERATORS
from app.spec import TrainingSpec
from app.spec_evaluation import ROBUSTNESS_KINDS, EvaluationSpec
from app.spec_fields import is_version_2
from app.spec_models import ModelSpec


class ParameterEntry(BaseModel):
    """A tunable parameter of an activation or dataset."""

    name: str
    kind: Literal["float", "int", "choice", "bool"]
    default: ParameterValue
    description: str
    minimum: float | None = Field(description="Smallest allowed value (exclusive when exclusive_minimum).")
    maximum: float | None
    exclusive_minimum: bool
    choices: list[str] = Field(description="Allowed values of a choice parameter.")


class ActivationEntry(BaseModel):
    """An activation a spec may name."""

    name: str
    family: Literal["classic", "modern", "learnable", "custom"]
    description: str
    formula: str
    auto_init: str = Field(description="The initialisation init='auto' picks for it.")
    auto_init_description: str
    parameters: list[ParameterEntry]
    aliases: list[str]
    learnable: bool
    input_conditioned: bool = Field(
        False,
        description="Whether a hyper-network computes its coefficients from the layer input (dyrelu, meta_acon); "
        "its formula is then the function at the fixed context it states.",
    )
    can_die: bool = Field(description="Whether dead units (never positive, zero gradient) are reported for it.")
    saturation: str | None
    reference: str


class DatasetEntry(BaseModel):
    """A dataset a spec may name."""

    name: str
    description: str
    input_shape: list[int]
    classes: int
    train_size: int
    test_size: int
    source: Literal["offline", "torchvision", "synthetic"]
    parameters: list[ParameterEntry]


class TransformEntry(BaseModel):
    """An input transform a version-2 spec may list in dataset.transforms."""

    kind: str
    description: str
    parameters: list[ParameterEntry]


class NamedEntry(BaseModel):
    """A name and what it means."""

    name: str
    description: str


class EvaluationEntry(BaseModel):
    """The evaluation block of a version-2 spec: robustness measured on the test set after training."""

    description: str
    fields: list[SpecFieldEntry]
    kinds: list[NamedEntry] = Field(description="The kinds of robustness rows (GET /v1/experiments/{id}/robustness).")


class OptimizerEntry(BaseModel):
    """An optimizer a spec may name, and the optimiser settings of ``training`` that apply to it."""

    name: str
    description: str
    settings: list[str] = Field(
        description="The version-2 training fields that apply to it (betas, eps, alpha, dampening); another "
        "optimizer's setting is a 422."
    )


class SpecFieldEntry(BaseModel):
    """One field of a spec block: its JSON schema, default and the spec version it needs."""

    name: str
    description: str
    default: Any = Field(description="The value an omitted field takes (null: unset, today's behaviour).")
    version: Literal[1, 2] = Field(
        description="The spec version the field needs; a version-1 spec naming a 2 is a 422."
    )
    json_schema: dict[str, Any] = Field(description="The field's JSON schema: its type, bounds and allowed values.")


class ModelKindEntry(BaseModel):
    """A model kind a spec may name, and the fields of its model block."""

    name: str
    description: str
    fields: list[SpecFieldEntry]


class FactorPathEntry(BaseModel):
    """A spec path a version-2 spec may vary as a factor."""

    path: str = Field(description="Dotted spec path; dataset.params.* stands for each dataset parameter.")
    description: str
    model_kinds: list[str] = Field(description="Model kinds the field exists on (empty: every kind).")
    changes_data: bool = Field(description="Whether a level changes the data, so seeds pair within a cell only.")


class LimitEntry(BaseModel):
    """A limit in force and the environment variable that changes it."""

    name: str
    value: int | float
    description: str
    environment_variable: str


class RunCostModel(BaseModel):
    """How one run's compute and memory are estimated for ACTLAB_MAX_RUN_MACS and ACTLAB_MAX_RUN_MEMORY_MB."""

    macs: str = Field(spec_cost.RUN_MACS_RULE, description="What one run's multiply-accumulates count.")
    training_macs_per_forward: int = Field(
        spec_cost.TRAINING_MACS_PER_FORWARD, description="Forward + backward of a trained example, in forward MACs."
    )
    memory: str = Field(spec_cost.RUN_MEMORY_RULE, description="What one run's activation memory counts.")
    autograd_copies: int = Field(
        spec_cost.AUTOGRAD_COPIES, description="Tensors of each layer's output size kept in a training step."
    )
    evaluation_batch_size: int = Field(
        spec_cost.EVALUATION_BATCH_SIZE, description="Examples per evaluation batch (no gradients)."
    )


class ExpressionLanguage(BaseModel):
    """What a custom activation formula may use."""

    variable: str
    functions: dict[str, int] = Field(description="Function name to number of arguments.")
    constants: dict[str, float]
    operators: list[str]
    unary_operators: list[str]
    max_nodes: int = Field(description="Largest formula, counted in syntax tree nodes.")


class DiagnosticThresholds(BaseModel):
    """The thresholds behind the gradient and saturation flags."""

    vanishing_ratio: float
    exploding_ratio: float
    sigmoid_saturation_bounds: list[float]
    tanh_saturation_level: float
    saturated_share: float
    probe_examples: int


class Catalog(BaseModel):
    """Everything a spec may name, and the limits it must stay within."""

    activations: list[ActivationEntry]
    datasets: list[DatasetEntry]
    transforms: list[TransformEntry] = Field(description="Input transforms of dataset.transforms (version 2).")
    evaluation: EvaluationEntry = Field(description="The evaluation block (version 2): robustness after training.")
    model_kinds: list[ModelKindEntry]
    optimizers: list[OptimizerEntry]
    training_fields: list[SpecFieldEntry] = Field(description="The fields of the spec's training block.")
    schedules: list[NamedEntry]
    init_schemes: list[NamedEntry]
    devices: list[str]
    factor_paths: list[FactorPathEntry] = Field(description="Paths a version-2 spec's factors may vary.")
    expression: ExpressionLanguage
    diagnostics: DiagnosticThresholds
    run_cost: RunCostModel = Field(description="The estimate the per-run limits apply to (app/spec_cost.py).")
    limits: list[LimitEntry]


class CheckResult(BaseModel):
    """One readiness check."""

    ok: bool
    detail: str


class Readiness(BaseModel):
    """Whether the service can take work."""

    status: Literal["ready", "unavailable"]
    checks: dict[str, CheckResult]


class Liveness(BaseModel):
    """The process answers."""

    status: Literal["ok"]


def _parameter(info: catalog.ParameterInfo) -> ParameterEntry:
    return ParameterEntry(
        name=info.name,
        kind=info.kind,
        default=info.default,
        description=info.description,
        minimum=info.minimum,
        maximum=info.maximum,
        exclusive_minimum=info.exclusive_minimum,
        choices=list(info.choices),
    )


def spec_field_entries(block: type[BaseModel]) -> list[SpecFieldEntry]:
    """Every field of a spec block (``app.spec``'s classes) as the catalog lists it."""
    properties = block.model_json_schema()["properties"]
    return [
        SpecFieldEntry(
            name=name,
            description=info.description or "",
            default=info.get_default(call_default_factory=True),
            version=2 if is_version_2(info) else 1,
            json_schema={key: value for key, value in properties[name].items() if key != "x-spec-version"},
        )
        for name, info in block.model_fields.items()
    ]


def _model_blocks() -> dict[str, type[BaseModel]]:
    """The spec class of each model kind, by kind."""
    (union, _) = typing.get_args(ModelSpec)
    return {block.model_fields["kind"].default: block for block in typing.get_args(union)}


def _limits(settings: Settings) -> list[LimitEntry]:
    entries = []
    request_limits = (
        "max_body_bytes",
        "max_import_bytes",
        "page_size_limit",
        "max_active_arms_per_owner",
        "max_submissions_per_minute",
    )
    for name in (*SpecLimits.model_fields, *request_limits):
        field = Settings.model_fields[name]
        entries.append(
            LimitEntry(
                name=name,
                value=getattr(settings, name),
                description=field.description or "",
                environment_variable=f"ACTLAB_{name.upper()}",
            )
        )
    return entries


def build_catalog(settings: Settings) -> Catalog:
    """The catalog with the limits of these settings."""
    return Catalog(
        activations=[
            ActivationEntry(
                name=info.name,
                family=info.family,
                description=info.description,
                formula=info.formula,
                auto_init=info.auto_init,
                auto_init_description=catalog.AUTO_INIT_DESCRIPTIONS.get(info.auto_init, info.auto_init),
                parameters=[_parameter(parameter) for parameter in info.parameters],
                aliases=list(info.aliases),
                learnable=info.learnable,
                input_conditioned=info.input_conditioned,
                can_die=info.can_die,
                saturation=info.saturation,
                reference=info.reference,
            )
            for info in catalog.ACTIVATIONS.values()
        ],
        datasets=[
            DatasetEntry(
                name=info.name,
                description=info.description,
                input_shape=list(info.input_shape),
                classes=info.classes,
                train_size=info.train_size,
                test_size=info.test_size,
                source=info.source,
                parameters=[_parameter(parameter) for parameter in info.parameters],
            )
            for info in catalog_datasets.DATASETS.values()
        ],
        transforms=[
            TransformEntry(
                kind=info.name,
                description=info.description,
                parameters=[_parameter(parameter) for parameter in info.parameters],
            )
            for info in catalog_datasets.TRANSFORMS.values()
        ],
        evaluation=EvaluationEntry(
            description="Version 2 only. After its last epoch each run's test accuracy is measured under every "
            "strength of the block, in standardised input units (the datasets are standardised with the training "
            "split's mean and standard deviation).",
            fields=spec_field_entries(EvaluationSpec),
            kinds=[NamedEntry(name=name, description=text) for name, text in ROBUSTNESS_KINDS.items()],
        ),
        model_kinds=[
            ModelKindEntry(
                name=info.name, description=info.description, fields=spec_field_entries(_model_blocks()[info.name])
            )
            for info in catalog.MODEL_KINDS.values()
        ],
        optimizers=[
            OptimizerEntry(name=name, description=text, settings=list(catalog.optimizer_settings(name)))
            for name, text in catalog.OPTIMIZERS.items()
        ],
        training_fields=spec_field_entries(TrainingSpec),
        schedules=[NamedEntry(name=name, description=text) for name, text in catalog.SCHEDULES.items()],
        init_schemes=[NamedEntry(name=name, description=text) for name, text in catalog.INIT_SCHEMES.items()],
        devices=list(catalog.DEVICES),
        factor_paths=[
            FactorPathEntry(
                path=info.path,
                description=info.description,
                model_kinds=list(info.model_kinds),
                changes_data=info.changes_data,
            )
            for info in catalog.FACTOR_PATHS.values()
        ],
        expression=ExpressionLanguage(
            variable="x",
            functions=dict(catalog.EXPRESSION_FUNCTIONS),
            constants=dict(catalog.EXPRESSION_CONSTANTS),
            operators=list(BINARY_OPERATORS.values()),
            unary_operators=list(UNARY_OPERATORS.values()),
            max_nodes=MAX_NODES,
        ),
        diagnostics=DiagnosticThresholds(
            vanishing_ratio=catalog.VANISHING_RATIO,
            exploding_ratio=catalog.EXPLODING_RATIO,
            sigmoid_saturation_bounds=list(catalog.SIGMOID_SATURATION_BOUNDS),
            tanh_saturation_level=catalog.TANH_SATURATION_LEVEL,
            saturated_share=catalog.SATURATED_SHARE,
            probe_examples=catalog.PROBE_EXAMPLES,
        ),
        run_cost=RunCostModel(),
        limits=_limits(settings),
    )
