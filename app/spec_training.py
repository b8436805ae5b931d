"""The training block of the experiment spec (``TrainingSpec``): hyperparameters shared by every arm.

Epochs or a step budget (``steps``, ``eval_every``; which steps each evaluation trains is ``app.spec_steps``),
the optimizer and its internals, the schedule, the initialisation and how train metrics are measured. Its
``evaluations`` are a run's trained metrics rows, the one number every reader of the row count uses;
eval_every's default needs the dataset, so ``app.spec.ExperimentSpec`` sets it. No torch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import (
    BeforeValidator,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from app.catalog import INIT_SCHEMES, OPTIMIZER_SETTINGS, OPTIMIZERS, SCHEDULES
from app.spec_fields import (
    Integer,
    Number,
    PositiveInt,
    VersionedModel,
    limits_in_force,
    not_boolean,
    version_2_field,
)

# Names from the catalog, as in app.spec: a Literal validates them and documents them as the OpenAPI enum.
if TYPE_CHECKING:
    OptimizerName = str
    ScheduleName = str
    InitSchemeName = str
else:
    OptimizerName = Literal[tuple(OPTIMIZERS)]
    ScheduleName = Literal[tuple(SCHEDULES)]
    InitSchemeName = Literal[tuple(INIT_SCHEMES)]


Fraction = Annotated[float, Field(ge=0.0, lt=1.0), BeforeValidator(not_boolean)]
"""A number in [0, 1): a coefficient of a running average."""
TrainMetrics = Literal["running", "after_epoch"]
"""How an epoch's train loss and accuracy are measured (``TrainingSpec.train_metrics``, the metrics rows' column)."""


class TrainingSpec(VersionedModel):
    """Hyperparameters shared by every arm."""

    epochs: Integer = Field(
        10, ge=1, description="Passes over the training data, one metrics row after each; leave it out with steps."
    )
    batch_size: Integer = Field(128, ge=1)
    optimizer: OptimizerName = "adam"
    lr: Number = Field(0.001, gt=0.0, le=10.0, description="Learning rate.")
    momentum: Number = Field(0.9, ge=0.0, lt=1.0, description="Momentum of sgd and rmsprop (rmsprop default use: 0).")
    nesterov: bool = Field(False, description="Nesterov momentum (sgd).")
    weight_decay: Number = Field(0.0, ge=0.0, le=1.0)
    grad_clip: Annotated[float, Field(gt=0.0, le=1e6), BeforeValidator(not_boolean)] | None = Field(
        None, description="Clip the global gradient norm to this value."
    )
    schedule: ScheduleName = "none"
    step_size: Integer = Field(
        10, ge=1, description="Epochs between decays (schedule step); evaluations with a step budget (steps)."
    )
    gamma: Number = Field(0.1, gt=0.0, le=1.0, description="Decay factor (schedule step).")
    init: InitSchemeName = "auto"
    validation_fraction: Number = Field(0.0, ge=0.0, le=0.5, description="Share of train held out for validation.")
    # Optimiser internals (app.catalog.OPTIMIZER_SETTINGS says which optimizers each applies to); torch's defaults.
    betas: list[Fraction] = version_2_field(
        [0.9, 0.999],
        description="[beta1, beta2]: decay rates of the running averages of the gradient and its square, each in "
        "[0, 1) (adam and adamw only).",
        min_length=2,
        max_length=2,
    )
    eps: Number = version_2_field(
        1e-8,
        description="Added to the denominator for numerical stability (adam, adamw and rmsprop only).",
        gt=0.0,
        le=1.0,
    )
    alpha: Number = version_2_field(
        0.99,
        description="Smoothing constant of the running average of the squared gradient (rmsprop only).",
        ge=0.0,
        lt=1.0,
    )
    dampening: Number = version_2_field(
        0.0, description="Dampening of the momentum (sgd only; not with nesterov).", ge=0.0, le=1.0
    )
    train_metrics: TrainMetrics = version_2_field(
        "running",
        description="How an epoch's train_loss and train_accuracy are measured: running (the mean over the epoch's "
        "batches as they trained, in training mode) or after_epoch (the whole training split in eval mode after the "
        "epoch's last step). Each metrics row echoes it in its train_metrics column.",
    )
    steps: PositiveInt | None = version_2_field(
        None,
        description="A step budget instead of epochs: train this many optimiser steps over the concatenation of the "
        "data epochs' batches, evaluating every eval_every steps (one metrics row each, epoch 1, 2, ... counting the "
        "evaluations, step the steps taken). Not with epochs. Schedules then count evaluations: step_size and "
        "cosine's length are in evaluations, stepped after each.",
    )
    eval_every: PositiveInt | None = version_2_field(
        None,
        description="Optimiser steps between evaluations with a step budget (steps only); default: the steps of one "
        "pass over the training data (its batches), at most steps. The last evaluation comes at steps.",
    )
    # The steps of one pass over the training data, set by ExperimentSpec (it knows the dataset): eval_every's default.
    _pass_steps: int | None = PrivateAttr(None)

    def _omitted_fields(self) -> tuple[str, ...]:
        # epochs' default means nothing with a step budget, and a stored spec with it would read back as both.
        return ("epochs",) if self.steps is not None else ()

    @property
    def evaluation_interval(self) -> int:
        """Optimiser steps between evaluations with a step budget: eval_every, else one pass capped at steps."""
        if self.steps is None:
            raise ValueError("evaluation_interval is for a step budget (training.steps)")
        if self.eval_every is not None:
            return self.eval_every
        if self._pass_steps is None:
            raise ValueError("eval_every's default needs the dataset: validate the training block in an ExperimentSpec")
        return min(self._pass_steps, self.steps)

    @property
    def evaluations(self) -> int:
        """The trained metrics rows of a run (epoch 1 .. evaluations): epochs, or ceil(steps / eval_every)."""
        if self.steps is None:
            return self.epochs
        return math.ceil(self.steps / self.evaluation_interval)

    def budget_text(self) -> str:
        """How long a run trains, for people: "10 epochs", or "6000 steps, 15 evaluations (every 400 steps)"."""
        if self.steps is None:
            return f"{self.epochs} epochs"
        return f"{self.steps} steps, {self.evaluations} evaluations (every {self.evaluation_interval} steps)"

    @field_validator("steps")
    @classmethod
    def _bounded_steps(cls, value: int | None, info: ValidationInfo) -> int | None:
        limit = limits_in_force(info).max_steps
        if value is not None and value > limit:
            raise ValueError(f"steps must be at most {limit} (setting ACTLAB_MAX_STEPS), got {value}")
        return value

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> TrainingSpec:
        errors: list[InitErrorDetails] = []

        def error(name: str, text: str) -> None:
            details = PydanticCustomError("step_budget", "{message}", {"message": text})
            errors.append(InitErrorDetails(type=details, loc=(name,), input=getattr(self, name)))

        if self.steps is not None and "epochs" in self.model_fields_set:
            error("steps", "training.steps and training.epochs exclude each other: give one (steps is a step budget)")
        if self.eval_every is not None and self.steps is None:
            error("eval_every", "training.eval_every needs training.steps (with epochs, every epoch is evaluated)")
        if self.eval_every is not None and self.steps is not None and self.eval_every > self.steps:
            error(
                "eval_every",
                f"training.eval_every must be at most training.steps ({self.steps}), got {self.eval_every}",
            )
        if errors:
            raise ValidationError.from_exception_data("TrainingSpec", errors)
        return self

    @field_validator("epochs")
    @classmethod
    def _bounded_epochs(cls, value: int, info: ValidationInfo) -> int:
        limit = limits_in_force(info).max_epochs
        if value > limit:
            raise ValueError(f"epochs must be at most {limit} (setting ACTLAB_MAX_EPOCHS), got {value}")
        return value

    @field_validator("batch_size")
    @classmethod
    def _bounded_batch(cls, value: int, info: ValidationInfo) -> int:
        limit = limits_in_force(info).max_batch_size
        if value > limit:
            raise ValueError(f"batch_size must be at most {limit} (setting ACTLAB_MAX_BATCH_SIZE), got {value}")
        return value

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> TrainingSpec:
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0.0):
            raise ValueError("nesterov needs optimizer 'sgd' with momentum > 0")
        return self

    @model_validator(mode="after")
    def _settings_of_the_optimizer(self) -> TrainingSpec:
        errors: list[InitErrorDetails] = []
        for name, optimizers in OPTIMIZER_SETTINGS.items():
            if name in self.model_fields_set and self.optimizer not in optimizers:
                text = (
                    f"training.{name} applies to optimizer {', '.join(optimizers)} only; this spec's optimizer is "
                    f"{self.optimizer!r}: leave {name} out or choose {' or '.join(repr(o) for o in optimizers)}"
                )
                details = PydanticCustomError("optimizer_setting", "{message}", {"message": text})
                errors.append(InitErrorDetails(type=details, loc=(name,), input=getattr(self, name)))
        if self.nesterov and self.dampening != 0.0:
            text = "training.dampening must be 0 with nesterov (torch's Nesterov momentum has no dampening)"
            details = PydanticCustomError("optimizer_setting", "{message}", {"message": text})
            errors.append(InitErrorDetails(type=details, loc=("dampening",), input=self.dampening))
        if errors:
            raise ValidationError.from_exception_data("TrainingSpec", errors)
        return self
