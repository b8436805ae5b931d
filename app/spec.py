"""The experiment spec (versions 1 and 2), shared by the API, the worker and the CLI.

Pydantic only, no torch. Unknown fields are rejected and every number and list is
bounded by a setting (``app.config.SpecLimits``); the limits are read at validation time
so an operator's environment override applies without a code change. Every name a spec
may use, and every rule that differs between names, comes from ``app.catalog``; the
parameter count and cost the limits apply to are estimated in ``app.spec_cost``. Version 2
adds ``factors`` (a factorial design over spec paths); their rules and cells are ``app.spec_factors``; and
``evaluation`` (robustness after training, ``app.spec_evaluation``). The training block is ``app.spec_training``
(re-exported here); its step budget's default interval is set here, where the dataset is known.
The field types and checks all the models share (strict models, numbers that are never booleans,
one catalog parameter value) are ``app.spec_fields``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from app.catalog import (
    ACTIVATIONS,
    DEVICES,
    MODEL_KINDS,
    ParameterValue,
    activation_names,
    canonical_activation_name,
)
from app.catalog_datasets import DATASETS
from app.config import SpecLimits
from app.expressions import ExpressionError, parse_expression
from app.spec_cost import (
    RunEstimate,
    estimate_cost,
    estimate_parameters,
    estimate_run,
    format_amount,
)
from app.spec_evaluation import EvaluationSpec
from app.spec_fields import (
    Seed,
    StrictModel,
    VersionedModel,
    check_parameter,
    format_value,
    limits_in_force,
    version_2_field,
    version_2_fields_set,
    without_unset,
)
from app.spec_models import CnnSpec, ModelSpec, check_conv_shapes
from app.spec_steps import batch_sizes, training_examples
from app.spec_training import TrainingSpec as TrainingSpec
from app.spec_training import TrainMetrics as TrainMetrics
from app.spec_transforms import TransformSpec

SPEC_VERSION = 1
STEP_BUDGET_FACTOR = "training.steps"
"""The factor path whose levels are each cell's step budget (the base spec then has no epochs)."""

# Names a spec may use are the catalog's: a Literal built from it validates them, documents them
# as the OpenAPI enum and words the error ("Input should be 'digits', 'mnist1d', ..."). To the
# type checker they are plain strings.
if TYPE_CHECKING:
    DatasetName = str
    DeviceName = str
else:
    DatasetName = Literal[tuple(DATASETS)]
    DeviceName = Literal[DEVICES]


class ActivationSpec(StrictModel):
    """One activation of the grid: a catalog name with parameters, or a custom formula."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"name": "leaky_relu", "params": {"negative_slope": 0.1}},
                {
                    "name": "custom",
                    "expression": "x * sigmoid(beta * x)",
                    "learnable": {"beta": 1.0},
                    "label": "swish_b",
                },
            ]
        },
    )

    name: str = Field(description="Catalog name (see GET /v1/catalog) or 'custom'.", max_length=64)
    params: dict[str, ParameterValue] = Field(
        default_factory=dict, description="Parameters; omitted ones take their defaults."
    )
    label: str | None = Field(
        None, min_length=1, description="Unique label; default: the name plus non-default params."
    )
    learnable: dict[str, float] | None = Field(
        None, description="Learnable scalars of the formula with initial values (custom only)."
    )
    expression: str | None = Field(None, description="Formula over x (custom only).")

    @field_validator("expression")
    @classmethod
    def _parse_expression(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        limit = limits_in_force(info).max_expression_length
        if len(value) > limit:
            raise ValueError(f"expression is longer than {limit} characters")
        try:
            parse_expression(value, (info.data.get("learnable") or {}).keys())
        except ExpressionError as error:
            raise PydanticCustomError(
                "invalid_expression", "invalid expression: {reason}", {"reason": str(error)}
            ) from None
        return value

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"name": data}
        return data

    @field_validator("name")
    @classmethod
    def _known_name(cls, value: str) -> str:
        if canonical_activation_name(value) is None:
            raise PydanticCustomError(
                "unknown_activation",
                "unknown activation '{name}'; allowed: {allowed}",
                {"name": value, "allowed": ", ".join(activation_names())},
            )
        return value

    @field_validator("label")
    @classmethod
    def _label_length(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and len(value) > limits_in_force(info).max_name_length:
            raise ValueError(f"label is longer than {limits_in_force(info).max_name_length} characters")
        return value

    @model_validator(mode="after")
    def _check_params(self, info: ValidationInfo) -> ActivationSpec:
        limits = limits_in_force(info)
        canonical = self.canonical_name
        catalog_entry = ACTIVATIONS[canonical]
        if canonical == "custom":
            if not self.expression:
                raise ValueError("custom activation needs an 'expression' over x, e.g. 'x * sigmoid(1.702 * x)'")
            learnable = self.learnable or {}
            if len(learnable) > limits.max_learnable_scalars:
                raise ValueError(f"at most {limits.max_learnable_scalars} learnable scalars are allowed")
            for scalar, initial in learnable.items():
                if not math.isfinite(initial) or abs(initial) > 1e6:
                    raise ValueError(f"learnable scalar {scalar!r} needs a finite initial value within 1e6")
            if self.params:
                raise ValueError("custom activations take no 'params'; use 'learnable' for trainable scalars")
            return self
        if self.expression is not None or self.learnable is not None:
            raise ValueError("'expression' and 'learnable' are only allowed with name 'custom'")
        known = {parameter.name: parameter for parameter in catalog_entry.parameters}
        checked: dict[str, ParameterValue] = {}
        for key, value in self.params.items():
            if key not in known:
                allowed = ", ".join(known) or "none"
                raise ValueError(f"unknown parameter {key!r} for {canonical}; allowed: {allowed}")
            checked[key] = check_parameter(known[key], value, f"params.{key}")
        if catalog_entry.bounds is not None:
            low, high = catalog_entry.bounds
            if float(checked.get(low, known[low].default)) >= float(checked.get(high, known[high].default)):
                raise ValueError(f"params.{low} must be below params.{high}")
        self.params = checked
        return self

    @property
    def canonical_name(self) -> str:
        """The catalog name (aliases resolved)."""
        name = canonical_activation_name(self.name)
        assert name is not None
        return name

    def resolved_params(self) -> dict[str, ParameterValue]:
        """All catalog parameters, defaults filled in."""
        entry = ACTIVATIONS[self.canonical_name]
        return {parameter.name: self.params.get(parameter.name, parameter.default) for parameter in entry.parameters}

    def default_label(self) -> str:
        """The name plus its parameters where they differ from the defaults."""
        if self.canonical_name == "custom":
            return f"custom({self.expression})"
        entry = ACTIVATIONS[self.canonical_name]
        changed = [
            f"{parameter.name}={format_value(self.params[parameter.name])}"
            for parameter in entry.parameters
            if parameter.name in self.params and self.params[parameter.name] != parameter.default
        ]
        return f"{self.name}({', '.join(changed)})" if changed else self.name

    @property
    def display_label(self) -> str:
        """The label used in tables and plots."""
        return self.label or self.default_label()


class DatasetSpec(VersionedModel):
    """Which dataset to train on."""

    name: DatasetName = Field(description="Dataset name (see GET /v1/catalog).")
    params: dict[str, ParameterValue] = Field(
        default_factory=dict,
        description=f"Dataset parameters ({', '.join(name for name, info in DATASETS.items() if info.parameters)} only).",
    )

    transforms: list[TransformSpec] | None = version_2_field(
        None, description="Input transforms applied in order to every split (see transforms in GET /v1/catalog)."
    )

    @field_validator("transforms")
    @classmethod
    def _bounded_transforms(cls, value: list[TransformSpec] | None, info: ValidationInfo) -> list[TransformSpec] | None:
        limit = limits_in_force(info).max_dataset_transforms
        if value is not None and len(value) > limit:
            raise ValueError(f"at most {limit} transforms (setting ACTLAB_MAX_DATASET_TRANSFORMS), got {len(value)}")
        return value

    @model_validator(mode="after")
    def _check_params(self, info: ValidationInfo) -> DatasetSpec:
        entry = DATASETS[self.name]
        known = {parameter.name: parameter for parameter in entry.parameters}
        checked: dict[str, ParameterValue] = {}
        for key, value in self.params.items():
            if key not in known:
                allowed = ", ".join(known) or "none"
                raise ValueError(f"unknown parameter {key!r} for dataset {self.name}; allowed: {allowed}")
            checked[key] = check_parameter(known[key], value, f"params.{key}")
        samples, limit = entry.samples_parameter, limits_in_force(info).max_dataset_samples
        if samples is not None and int(checked.get(samples, known[samples].default)) > limit:
            raise ValueError(f"params.{samples} must be at most {limit}")
        self.params = checked
        return self

    def resolved_params(self) -> dict[str, ParameterValue]:
        """All dataset parameters, defaults filled in."""
        entry = DATASETS[self.name]
        return {parameter.name: self.params.get(parameter.name, parameter.default) for parameter in entry.parameters}

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example."""
        return DATASETS[self.name].input_shape

    @property
    def classes(self) -> int:
        """Number of classes."""
        return DATASETS[self.name].classes_with(self.resolved_params())

    @property
    def train_size(self) -> int:
        """Training examples before any validation split."""
        return DATASETS[self.name].train_size_with(self.resolved_params())

    @property
    def test_size(self) -> int:
        """Test examples."""
        return DATASETS[self.name].test_size_with(self.resolved_params())


def _check_run(run: RunEstimate, limits: SpecLimits, *, step_budget: bool) -> None:
    """One run's compute and memory against ACTLAB_MAX_RUN_MACS and ACTLAB_MAX_RUN_MEMORY_MB (each cell's spec)."""
    if run.macs > limits.max_run_macs:
        work = (
            "(3 x steps x batch_size + evaluations x evaluated examples)"
            if step_budget
            else "epochs x (3 x training + evaluated examples)"
        )
        raise ValueError(
            f"model and training.{'steps' if step_budget else 'epochs'}: one run is estimated "
            f"{format_amount(run.macs)} MACs, limit {format_amount(limits.max_run_macs)} (setting "
            f"ACTLAB_MAX_RUN_MACS): {work} x {format_amount(run.forward_macs)} MACs per example, plus the evaluation "
            f"block's passes over the test set; use a smaller model, pooling, fewer {'steps' if step_budget else 'epochs'}"
            " or fewer strengths"
        )
    if run.memory_mb > limits.max_run_memory_mb:
        raise ValueError(
            f"model and training.batch_size: one run's activations are estimated {run.memory_mb:,.0f} MiB, "
            f"limit {limits.max_run_memory_mb:,} MiB (setting ACTLAB_MAX_RUN_MEMORY_MB); use a smaller "
            "batch_size, a smaller model or pooling"
        )


def _check_transforms(spec: ExperimentSpec) -> None:
    """Each subset of ``dataset.transforms`` must fit the training examples and hold every class (version 2 is
    checked with every version-2 field)."""
    transforms = spec.dataset.transforms
    if transforms is None:
        return
    errors: list[InitErrorDetails] = []

    def error(loc: tuple[str | int, ...], message: str, value: Any) -> None:
        context = {"message": message}
        details = PydanticCustomError("transforms", "{message}", context)
        errors.append(InitErrorDetails(type=details, loc=loc, input=value, ctx=context))

    train = spec.dataset.train_size
    fraction = spec.training.validation_fraction
    available = train - (max(1, math.floor(fraction * train + 0.5)) if fraction > 0 else 0)
    classes = spec.dataset.classes
    for index, transform in enumerate(transforms):
        if transform.kind == "subset" and transform.size is not None:
            if transform.size > available:
                message = f"size must be at most the {available} training examples of {spec.dataset.name}"
                error(("dataset", "transforms", index, "size"), message, transform.size)
            elif transform.size < classes:
                message = f"size must be at least the {classes} classes, so that every class is drawn"
                error(("dataset", "transforms", index, "size"), message, transform.size)
            available = min(available, transform.size)
    if errors:
        raise ValidationError.from_exception_data("ExperimentSpec", errors)


@dataclass(frozen=True)
class Arm:
    """One (activation, seed) pair of an experiment."""

    activation_index: int
    label: str
    seed: int


EXAMPLE_SPEC: dict[str, Any] = {
    "name": "classic five on mnist1d",
    "dataset": {"name": "mnist1d"},
    "model": {"kind": "mlp", "hidden": [128, 128], "norm": "none", "dropout": 0.0},
    "activations": [
        "sigmoid",
        "tanh",
        "relu",
        {"name": "leaky_relu", "params": {"negative_slope": 0.1}},
        "elu",
        {"name": "custom", "expression": "x * sigmoid(1.702 * x)", "label": "gelu_approx"},
    ],
    "seeds": [0, 1, 2],
    "training": {
        "epochs": 10,
        "batch_size": 128,
        "optimizer": "adam",
        "lr": 0.001,
        "weight_decay": 0.0,
        "grad_clip": None,
        "schedule": "none",
        "init": "auto",
        "validation_fraction": 0.0,
    },
    "device": "auto",
}


class ExperimentSpec(StrictModel):
    """An experiment: one dataset, one model, a grid of activations x seeds, shared training."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE_SPEC]})

    version: Literal[1, 2] = Field(1, description="2 is required for factors; 1 means no factors.")
    name: str = Field("experiment", min_length=1, description="A name for people.")
    dataset: DatasetSpec
    model: ModelSpec
    activations: list[ActivationSpec] = Field(min_length=1)
    seeds: list[Seed] = Field(min_length=1)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    device: DeviceName = "auto"
    factors: dict[str, list[Any]] | None = Field(
        None,
        description="Version 2: spec path (see factor_paths in GET /v1/catalog) to its levels; every combination "
        "of levels is a cell, and each cell trains every activation and seed.",
    )
    evaluation: EvaluationSpec | None = version_2_field(
        None,
        description="Robustness of every trained run on the test set: accuracy under input noise, FGSM and PGD at "
        "these strengths in standardised input units (see evaluation in GET /v1/catalog); served by GET "
        "/v1/experiments/{id}/robustness.",
    )

    @model_serializer(mode="wrap")
    def _without_absent_blocks(self, handler: SerializerFunctionWrapHandler) -> Any:
        dumped = without_unset(handler(self), "factors", "evaluation")
        if STEP_BUDGET_FACTOR in (self.factors or {}) and isinstance(dumped.get("training"), dict):
            # The budget of each cell is its steps level: a stored spec (and each cell's) reads back without epochs.
            dumped["training"].pop("epochs", None)
        return dumped

    @field_validator("name")
    @classmethod
    def _bounded_name(cls, value: str, info: ValidationInfo) -> str:
        limit = limits_in_force(info).max_name_length
        if len(value) > limit:
            raise ValueError(f"name must be at most {limit} characters")
        return value

    @field_validator("activations")
    @classmethod
    def _bounded_activations(cls, value: list[ActivationSpec], info: ValidationInfo) -> list[ActivationSpec]:
        limit = limits_in_force(info).max_activations
        if len(value) > limit:
            raise ValueError(f"at most {limit} activations (setting ACTLAB_MAX_ACTIVATIONS), got {len(value)}")
        seen: dict[str, int] = {}
        for index, activation in enumerate(value):
            label = activation.display_label
            if label in seen:
                raise PydanticCustomError(
                    "duplicate_label",
                    "activations[{index}] has the label '{label}' of activations[{first}]; give one a unique 'label'",
                    {"index": index, "label": label, "first": seen[label]},
                )
            seen[label] = index
        return value

    @field_validator("seeds")
    @classmethod
    def _bounded_seeds(cls, value: list[int], info: ValidationInfo) -> list[int]:
        limits = limits_in_force(info)
        if len(value) > limits.max_seeds:
            raise ValueError(f"at most {limits.max_seeds} seeds (setting ACTLAB_MAX_SEEDS), got {len(value)}")
        if len(set(value)) != len(value):
            raise ValueError("seeds must be unique")
        for seed in value:
            if seed > limits.max_seed_value:
                raise ValueError(f"seeds must be at most {limits.max_seed_value}, got {seed}")
        return value

    @model_validator(mode="after")
    def _version_2_fields(self) -> ExperimentSpec:
        # Runs before _check_grid (pydantic runs after-validators in definition order).
        if self.version == 1:
            named = version_2_fields_set(self)
            if named:
                from app.errors import clean_location

                message = 'only in spec version 2; add "version": 2 (a version-1 spec keeps today\'s fields)'
                errors = []
                for location in named:
                    path = ".".join(str(part) for part in clean_location(location, ExperimentSpec))
                    text = f"{path} is {message}"
                    errors.append(
                        InitErrorDetails(
                            type=PydanticCustomError("version_2_field", "{message}", {"message": text}),
                            loc=location,
                            input=None,
                        )
                    )
                raise ValidationError.from_exception_data("ExperimentSpec", errors)
        return self

    @model_validator(mode="after")
    def _step_budget(self, info: ValidationInfo) -> ExperimentSpec:
        # Before _check_grid, whose cost reads the evaluations: eval_every's default is one pass over this dataset.
        if STEP_BUDGET_FACTOR in (self.factors or {}) and "epochs" in self.training.model_fields_set:
            text = "training.epochs and the factor training.steps exclude each other: each cell's budget is its steps"
            details = PydanticCustomError("step_budget", "{message}", {"message": text})
            epochs_error = InitErrorDetails(type=details, loc=("training", "epochs"), input=self.training.epochs)
            raise ValidationError.from_exception_data("ExperimentSpec", [epochs_error])
        pass_steps = len(batch_sizes(training_examples(self), self.training.batch_size))
        if self.training._pass_steps not in (None, pass_steps):
            self.training = self.training.model_copy()  # a block shared with another spec keeps its own pass
        self.training._pass_steps = pass_steps
        limit = limits_in_force(info).max_epochs
        if self.training.steps is not None and self.training.evaluations > limit:
            text = (
                f"training.steps / training.eval_every: {self.training.evaluations} evaluations (ceil({self.training.steps}"
                f" / {self.training.evaluation_interval})) exceed {limit}, the rows a run may have (setting "
                "ACTLAB_MAX_EPOCHS); use a larger eval_every or fewer steps"
            )
            details = PydanticCustomError("step_budget", "{message}", {"message": text})
            location = "eval_every" if self.training.eval_every is not None else "steps"
            error = InitErrorDetails(type=details, loc=("training", location), input=getattr(self.training, location))
            raise ValidationError.from_exception_data("ExperimentSpec", [error])
        return self

    @model_validator(mode="after")
    def _check_grid(self, info: ValidationInfo) -> ExperimentSpec:
        limits = limits_in_force(info)
        _check_transforms(self)
        if self.factors is not None:
            from app.spec_factors import check_factors  # it builds cells with this class

            return check_factors(self, limits)
        dataset = DATASETS[self.dataset.name]
        if MODEL_KINDS[self.model.kind].needs_image_or_sequence and len(dataset.input_shape) < 2:
            raise PydanticCustomError(
                "model_dataset_mismatch",
                "model kind '{kind}' needs image or sequence data; dataset '{dataset}' has flat features: use 'mlp'",
                {"kind": self.model.kind, "dataset": self.dataset.name},
            )
        if isinstance(self.model, CnnSpec):
            check_conv_shapes(self.model, self.dataset.name, dataset.input_shape)
        arms = len(self.activations) * len(self.seeds)
        if arms > limits.max_arms:
            raise ValueError(
                f"{arms} arms (activations x seeds) exceed the limit of {limits.max_arms} (setting ACTLAB_MAX_ARMS)"
            )
        parameters = estimate_parameters(self)
        if parameters > limits.max_parameters:
            raise ValueError(
                f"model: the estimated {parameters:,} parameters exceed the limit of {limits.max_parameters:,} "
                "(setting ACTLAB_MAX_PARAMETERS)"
            )
        cost = estimate_cost(self)
        if cost > limits.max_cost:
            raise ValueError(
                f"the estimated cost {cost:.3g} (arms x (epochs x training examples + evaluation passes) x parameters) exceeds "
                f"the limit of {limits.max_cost:.3g} (setting ACTLAB_MAX_COST)"
            )
        _check_run(estimate_run(self), limits, step_budget=self.training.steps is not None)
        return self

    def arms(self) -> list[Arm]:
        """Every (activation, seed) pair, activation-major."""
        return [
            Arm(index, activation.display_label, seed)
            for index, activation in enumerate(self.activations)
            for seed in self.seeds
        ]

    def canonical_json(self) -> str:
        """The spec with defaults filled in, as sorted compact JSON."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def spec_hash(self) -> str:
        """SHA-256 of the canonical JSON: equal specs hash equal whatever their spelling."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def stored_speclimits_in_force() -> SpecLimits:
    """Limits that accept any stored spec: it was validated at submission, and a later, lower limit must not fail it."""
    unbounded: dict[str, Any] = {}
    for name, info in SpecLimits.model_fields.items():
        unbounded[name] = math.inf if info.annotation is float else 2**62
    return SpecLimits.model_construct(**unbounded)


def load_stored_spec(spec: dict[str, Any]) -> ExperimentSpec:
    """A spec as the service stored it, read back under ``stored_spec_limits`` (ValidationError if it no longer parses)."""
    return ExperimentSpec.model_validate(spec, context={"limits": stored_speclimits_in_force()})
