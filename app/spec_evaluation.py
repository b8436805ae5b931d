"""The ``evaluation`` block of spec version 2: robustness of each trained run under input noise and attacks.

After a run's last epoch the worker measures its test accuracy under additive Gaussian noise of each
``noise_std``, under FGSM at each ``fgsm_epsilon`` and under L-infinity PGD (``pgd_steps`` steps of
epsilon / 4, from the clean input) at each ``pgd_epsilon`` (``worker.training.robustness``). Every strength
is in standardised input units (the datasets are standardised with the training split's statistics).
The lists are bounded by ``ACTLAB_MAX_EVALUATION_STRENGTHS``, each strength by
``ACTLAB_MAX_EVALUATION_STRENGTH`` and the steps by ``ACTLAB_MAX_PGD_STEPS``. No torch.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from app.spec_cost import TRAINING_MACS_PER_FORWARD
from app.spec_fields import Integer, Number, StrictModel, limits_in_force

RobustnessKind = Literal["noise", "fgsm", "pgd"]
ROBUSTNESS_KINDS: dict[str, str] = {
    "noise": "Test accuracy under additive Gaussian input noise of standard deviation `strength` (fixed per run "
    "seed and strength).",
    "fgsm": "Test accuracy under the fast gradient sign method (Goodfellow et al. 2015), one step of size `strength`.",
    "pgd": "Test accuracy under L-infinity projected gradient descent (Madry et al. 2018), pgd_steps steps of "
    "strength / 4 from the clean input, projected onto the `strength` ball.",
}
"""Each kind of robustness row, the list of the evaluation block that configures it, and what it measures."""
KIND_FIELDS: dict[str, str] = {"noise": "noise_std", "fgsm": "fgsm_epsilon", "pgd": "pgd_epsilon"}
DEFAULT_PGD_STEPS = 10
PGD_STEP_FRACTION = 0.25
"""PGD's step size as a fraction of epsilon."""


class EvaluationSpec(StrictModel):
    """Robustness measured on the test set after training, in standardised input units."""

    noise_std: list[Number] = Field(
        default_factory=list, description="Standard deviations of additive Gaussian input noise."
    )
    fgsm_epsilon: list[Number] = Field(default_factory=list, description="Epsilons of FGSM (one signed-gradient step).")
    pgd_epsilon: list[Number] = Field(default_factory=list, description="Epsilons of L-infinity PGD.")
    pgd_steps: Integer = Field(DEFAULT_PGD_STEPS, ge=1, description="PGD steps, each of size epsilon / 4.")

    @field_validator("noise_std", "fgsm_epsilon", "pgd_epsilon")
    @classmethod
    def _bounded_strengths(cls, value: list[float], info: ValidationInfo) -> list[float]:
        limits = limits_in_force(info)
        name = info.field_name
        if len(value) > limits.max_evaluation_strengths:
            raise ValueError(
                f"{name} may have at most {limits.max_evaluation_strengths} entries (setting "
                f"ACTLAB_MAX_EVALUATION_STRENGTHS), got {len(value)}"
            )
        if len(set(value)) != len(value):
            raise ValueError(f"{name} must not repeat a strength")
        for strength in value:
            if not math.isfinite(strength) or strength < 0 or strength > limits.max_evaluation_strength:
                raise ValueError(
                    f"each entry of {name} must be between 0 and {limits.max_evaluation_strength:g} (setting "
                    f"ACTLAB_MAX_EVALUATION_STRENGTH, standardised input units), got {strength!r}"
                )
        return value

    @field_validator("pgd_steps")
    @classmethod
    def _bounded_steps(cls, value: int, info: ValidationInfo) -> int:
        limit = limits_in_force(info).max_pgd_steps
        if value > limit:
            raise ValueError(f"pgd_steps must be at most {limit} (setting ACTLAB_MAX_PGD_STEPS), got {value}")
        return value

    @model_validator(mode="after")
    def _asks_for_something(self) -> EvaluationSpec:
        if not (self.noise_std or self.fgsm_epsilon or self.pgd_epsilon):
            raise ValueError("evaluation needs at least one strength in noise_std, fgsm_epsilon or pgd_epsilon")
        return self

    def strengths(self) -> list[tuple[RobustnessKind, float]]:
        """Every (kind, strength) the block asks for, in the order noise, fgsm, pgd and each list's order."""
        kinds: tuple[RobustnessKind, ...] = ("noise", "fgsm", "pgd")
        return [(kind, float(strength)) for kind in kinds for strength in getattr(self, KIND_FIELDS[kind])]

    def forward_passes(self) -> int:
        """Forward-pass equivalents over the test set that the block costs: a scored pass per strength, plus a
        forward and backward per gradient step of FGSM (one) and PGD (pgd_steps)."""
        gradient_step = TRAINING_MACS_PER_FORWARD
        return (
            len(self.noise_std)
            + len(self.fgsm_epsilon) * (gradient_step + 1)
            + len(self.pgd_epsilon) * (gradient_step * self.pgd_steps + 1)
        )
