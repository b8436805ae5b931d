"""Robustness of a trained network: test accuracy under input noise and under FGSM and PGD attacks.

Every strength is in standardised input units (the datasets are standardised with the training
split's mean and standard deviation, ``worker.training.datasets``), so one epsilon means the same
thing for every dataset and activation.

- ``noise``: additive Gaussian noise of standard deviation ``strength`` on every input value. The
  noise comes from a CPU generator seeded from the run's seed and the strength alone
  (``noise_seed``), so the same run gets the same noisy test set on every device and every
  activation of one seed sees the same noise.
- ``fgsm``: one signed-gradient step of size epsilon on the cross-entropy (Goodfellow et al. 2015).
- ``pgd``: L-infinity projected gradient descent (Madry et al. 2018) with ``steps`` signed-gradient
  steps of size epsilon / 4, projected back onto the epsilon ball after each step. It starts at the
  clean input (no random start), so the attack is deterministic and epsilon 0 is the clean accuracy.

Gradients are taken with ``torch.autograd.grad`` with respect to the inputs only, with the model in
eval mode (batch norm on its running statistics, dropout off); the model's parameters and their
``.grad`` are left untouched. Inputs are not clipped to a range: standardised inputs have none.

The stacked trainer evaluates each member through its ordinary model (``copy_member_into``), so a
stacked run reports the same numbers as the unstacked run.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional

from app.spec import ExperimentSpec
from app.spec_cost import EVALUATION_BATCH_SIZE
from app.spec_evaluation import DEFAULT_PGD_STEPS, PGD_STEP_FRACTION, RobustnessKind
from worker.training.reports import RobustnessPoint


def noise_seed(seed: int, strength: float) -> int:
    """The noise generator's seed of one (run seed, std) pair, independent of everything else."""
    digest = hashlib.sha256(f"robustness-noise:{seed}:{float(strength)!r}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


Perturb = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(inputs, labels) -> the perturbed inputs of one batch."""


def _unchanged(inputs: torch.Tensor, _labels: torch.Tensor) -> torch.Tensor:
    return inputs


def _scored(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, perturb: Perturb, batch_size: int
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of the model on every batch after ``perturb``, in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=inputs.device, dtype=torch.float64)
    correct = torch.zeros((), device=inputs.device, dtype=torch.long)
    try:
        for start in range(0, inputs.shape[0], batch_size):
            batch = inputs[start : start + batch_size]
            batch_labels = labels[start : start + batch_size]
            perturbed = perturb(batch, batch_labels)
            with torch.no_grad():
                logits = model(perturbed)
                loss_sum += functional.cross_entropy(logits, batch_labels, reduction="sum").double()
                correct += (logits.argmax(dim=1) == batch_labels).sum()
    finally:
        model.train(was_training)
    examples = max(inputs.shape[0], 1)
    return float(correct.double() / examples), float(loss_sum / examples)


def _input_gradient_sign(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """sign of d(cross-entropy)/d(inputs), leaving the parameters' gradients alone."""
    leaf = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = functional.cross_entropy(model(leaf), labels, reduction="sum")
        (gradient,) = torch.autograd.grad(loss, [leaf])
    return gradient.sign()


def fgsm(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *, epsilon: float) -> torch.Tensor:
    """FGSM adversarial inputs: one step of size epsilon along the sign of the input gradient."""
    if epsilon == 0:
        return inputs
    return (inputs + epsilon * _input_gradient_sign(model, inputs, labels)).detach()


def pgd(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *, epsilon: float, steps: int = DEFAULT_PGD_STEPS
) -> torch.Tensor:
    """L-infinity PGD adversarial inputs from the clean input, steps of epsilon / 4, projected after each step."""
    if epsilon == 0 or steps == 0:
        return inputs
    step = epsilon * PGD_STEP_FRACTION
    clean = inputs.detach()
    adversarial = clean
    for _ in range(steps):
        moved = adversarial + step * _input_gradient_sign(model, adversarial, labels)
        adversarial = (clean + (moved - clean).clamp(-epsilon, epsilon)).detach()
    return adversarial


def gaussian_noise(inputs: torch.Tensor, *, std: float, generator: torch.Generator) -> torch.Tensor:
    """``inputs`` plus Gaussian noise of ``std``, drawn on the CPU from ``generator`` (device-independent)."""
    if std == 0:
        return inputs
    noise = torch.randn(inputs.shape, generator=generator, dtype=inputs.dtype)
    return inputs + std * noise.to(inputs.device)


def evaluate_robustness(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int,
    noise_std: Sequence[float] = (),
    fgsm_epsilon: Sequence[float] = (),
    pgd_epsilon: Sequence[float] = (),
    pgd_steps: int = DEFAULT_PGD_STEPS,
    batch_size: int = EVALUATION_BATCH_SIZE,
) -> list[RobustnessPoint]:
    """One point per configured strength, in the order noise, fgsm, pgd and each list's own order."""
    points: list[RobustnessPoint] = []
    for std in noise_std:
        # The whole split's noise at once: the noisy test set does not depend on batch_size.
        noisy = gaussian_noise(inputs, std=std, generator=torch.Generator().manual_seed(noise_seed(seed, std)))
        accuracy, loss = _scored(model, noisy, labels, _unchanged, batch_size)
        points.append(RobustnessPoint("noise", float(std), accuracy, loss))
    attacks: list[tuple[RobustnessKind, float, Perturb]] = [
        ("fgsm", epsilon, functools.partial(fgsm, model, epsilon=epsilon)) for epsilon in fgsm_epsilon
    ]
    attacks += [
        ("pgd", epsilon, functools.partial(pgd, model, epsilon=epsilon, steps=pgd_steps)) for epsilon in pgd_epsilon
    ]
    for kind, epsilon, attack in attacks:
        accuracy, loss = _scored(model, inputs, labels, attack, batch_size)
        points.append(RobustnessPoint(kind, float(epsilon), accuracy, loss))
    return points


def spec_robustness(
    spec: ExperimentSpec, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *, seed: int
) -> list[RobustnessPoint]:
    """The points the spec's evaluation block asks for on this split (none without the block)."""
    block = spec.evaluation
    if block is None:
        return []
    return evaluate_robustness(
        model,
        inputs,
        labels,
        seed=seed,
        noise_std=block.noise_std,
        fgsm_epsilon=block.fgsm_epsilon,
        pgd_epsilon=block.pgd_epsilon,
        pgd_steps=block.pgd_steps,
    )
