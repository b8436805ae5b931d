"""The stacked run loop: one stacked model, optimizer and schedule for members at the same epoch.

``StackedRun`` is the ``EpochSteps`` (``worker.training.epochs``) of a stack: it takes each
member's tensors and optimizer state over from the member's ordinary template
(``StackedMember.state``, built by ``prepare_arm``), trains every member on its own batch order,
evaluates and diagnoses them per member, gives a member's state back to its template
(``export_member``) for checkpoints and at its end, and drops members that leave
(``keep_members``).

On CUDA the whole training step (gather, forward, backward, diagnostics, clipping, optimizer step)
is captured in a CUDA graph and replayed for every full batch (the last, smaller batch runs
eagerly); the graph is captured again when the learning rate changes or a member leaves.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional

from app.catalog import PROBE_EXAMPLES
from app.spec import ExperimentSpec
from app.spec_cost import EVALUATION_BATCH_SIZE
from worker.training.datasets import DatasetSplits
from worker.training.diagnostics import (
    ActivationStatistics,
    LayerDiagnostics,
    activation_statistics,
    gradient_probe_batch,
    layer_diagnostics,
    probe_inputs,
    probe_leaves_no_trace,
    summary_row,
)
from worker.training.reports import ArmStatus
from worker.training.stacked.layers import tensor_attribute
from worker.training.stacked.network import (
    StackedDiagnosticLayer,
    build_stacked_model,
    copy_member_into,
    member_sources,
)
from worker.training.trainer import ArmState, build_optimizer, build_scheduler, evaluation_batches

# torch.nn.utils.clip_grad_norm_ adds this to the norm before dividing; the same here, per member.
_CLIP_EPSILON = 1e-6
# Eager steps before a CUDA graph is captured: the first ones create optimizer state and library workspaces.
_GRAPH_WARMUP_STEPS = 3


@dataclass
class StackedMember:
    """One member: where it sits in the caller's list, and its ordinary template (model, optimizer, progress)."""

    position: int
    state: ArmState
    checkpoint_path: Path | None = None
    status: ArmStatus | None = None

    @property
    def activation_index(self) -> int:
        """The member's activation (an index into the spec's activations)."""
        return self.state.activation_index

    @property
    def seed(self) -> int:
        """The member's seed."""
        return self.state.seed


def _batch_norm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]


class StackedRun:
    """The stacked model, optimizer, schedule and per-member accumulators of members at the same epoch."""

    def __init__(
        self,
        spec: ExperimentSpec,
        members: list[StackedMember],
        data: DatasetSplits,
        device: torch.device,
        *,
        cuda_graphs: bool,
    ) -> None:
        self.spec = spec
        self.members = members
        self.data = data
        self.device = device
        self.model = build_stacked_model(
            [member.state.model for member in members], [member.activation_index for member in members]
        ).to(device)
        self.model.train()
        self.layers = self.model.diagnostic_layers()
        self.use_graphs = cuda_graphs and device.type == "cuda"
        self.optimizer = build_optimizer(self.model.parameters(), spec.training)
        if self.use_graphs:
            # A captured optimizer step must keep its step counters on the device.
            for group in self.optimizer.param_groups:
                if "capturable" in group:
                    group["capturable"] = True
        self.scheduler = build_scheduler(self.optimizer, spec.training)
        self._import_training_state()
        # BatchNorm's batch counter is not kept per step in the stack; the templates get it back on export.
        self.batch_norm_base = [
            [int(tensor_attribute(layer, "num_batches_tracked")) for layer in _batch_norm_layers(member.state.model)]
            for member in members
        ]
        self.total_steps = 0
        self.probe = probe_inputs(data.train_x)
        self.side_stream: Any = None
        self.graph: Any = None
        self.graph_lr: float | None = None
        self.graph_indices: Tensor | None = None
        self.eager_steps = 0
        self._allocate_accumulators()

    # Accumulators live on the device and are updated in place (a CUDA graph writes into them).
    def _allocate_accumulators(self) -> None:
        count = self.model.members
        self.loss_sums = torch.zeros(count, device=self.device)
        self.correct = torch.zeros(count, device=self.device, dtype=torch.long)
        self.gradient_sums = torch.zeros(len(self.layers), count, device=self.device)
        self.steps = 0
        # Which member each own activation parameter belongs to, made here because a captured step
        # cannot copy from the host.
        self.own_parameters = [
            parameter for member in range(count) for parameter in self.model.member_parameters(member)
        ]
        owners = [member for member in range(count) for _ in self.model.member_parameters(member)]
        self.own_owners = torch.tensor(owners, dtype=torch.long, device=self.device)

    # --- optimizer state between the templates (checkpoints) and the stack ---

    def _import_training_state(self) -> None:
        """Take over the members' optimizer and schedule state (non-empty after a resumed checkpoint)."""
        first = self.members[0].state
        if first.scheduler is not None and self.scheduler is not None:
            self.scheduler.load_state_dict(first.scheduler.state_dict())
        for key in ("lr", "initial_lr"):
            if key in first.optimizer.param_groups[0]:
                for group in self.optimizer.param_groups:
                    group[key] = first.optimizer.param_groups[0][key]
        capturable = bool(self.optimizer.param_groups[0].get("capturable", False))
        states = []
        for index, member in enumerate(self.members):
            template = dict(member.state.model.named_parameters())
            states.append((index, member.state.optimizer.state, template))
        for name, (tensor, sliced) in member_sources(self.model, 0).items():
            if not isinstance(tensor, nn.Parameter):
                continue
            if not sliced:
                continue
            per_member = [optimizer_state.get(template[name]) for _, optimizer_state, template in states]
            if any(state is None for state in per_member):
                continue
            merged: dict[str, Any] = {}
            for key, value in per_member[0].items():  # type: ignore[union-attr]
                if isinstance(value, Tensor) and value.dim() > 0:
                    merged[key] = torch.stack([state[key] for state in per_member]).to(self.device)  # type: ignore[index]
                else:
                    merged[key] = value.clone() if isinstance(value, Tensor) else value
            self.optimizer.state[tensor] = merged
        # Own activation parameters are the templates' own objects: their state carries over as it is.
        for member in self.members:
            for parameter in member.state.model.parameters():
                state = member.state.optimizer.state.get(parameter)
                if state is not None and any(parameter is own for own in self.model.parameters()):
                    self.optimizer.state[parameter] = dict(state)
        for state in self.optimizer.state.values():
            step = state.get("step")
            if capturable and isinstance(step, Tensor):
                state["step"] = step.to(device=self.device, dtype=torch.float32)

    def export_member(self, index: int) -> None:
        """Write one member's tensors, optimizer and schedule state into its template, e.g. for a checkpoint."""
        member = self.members[index]
        template = member.state
        copy_member_into(self.model, index, template.model)
        for layer, base in zip(_batch_norm_layers(template.model), self.batch_norm_base[index], strict=True):
            tensor_attribute(layer, "num_batches_tracked").fill_(base + self.total_steps)
        parameters = dict(template.model.named_parameters())
        optimizer_state = template.optimizer.state
        for name, (tensor, sliced) in member_sources(self.model, index).items():
            stacked_state = self.optimizer.state.get(tensor)
            if name not in parameters or stacked_state is None:
                continue
            if not sliced:
                optimizer_state[parameters[name]] = dict(stacked_state)
                continue
            optimizer_state[parameters[name]] = {
                key: (
                    value[index].clone()
                    if isinstance(value, Tensor) and value.dim() > 0
                    else value.clone()
                    if isinstance(value, Tensor)
                    else value
                )
                for key, value in stacked_state.items()
            }
        group = self.optimizer.param_groups[0]
        for key in ("lr", "initial_lr"):
            if key in group:
                template.optimizer.param_groups[0][key] = group[key]
        if template.scheduler is not None and self.scheduler is not None:
            template.scheduler.load_state_dict(self.scheduler.state_dict())

    # --- one training step ---

    def _record_gradient_norms(self) -> None:
        """Each member's weight-gradient norm per diagnostics layer, added to the epoch sums (before clipping)."""
        norms = []
        for layer in self.layers:
            squares = [
                torch.linalg.vector_norm(weight.grad.flatten(1), dim=1).square()
                if weight.grad is not None
                else torch.zeros(self.model.members, device=self.device)
                for weight in layer.weights
            ]
            norms.append(torch.stack(squares).sum(dim=0).sqrt())
        self.gradient_sums += torch.stack(norms)

    def _clip_per_member(self, limit: float) -> None:
        """Global-norm clipping as clip_grad_norm_ does it, with one global norm per member."""
        stacked = [parameter for parameter in self.model.stacked_parameters() if parameter.grad is not None]
        squares = torch.zeros(self.model.members, device=self.device)
        for parameter in stacked:
            assert parameter.grad is not None
            squares += torch.linalg.vector_norm(parameter.grad.flatten(1), dim=1).square()
        own = [
            parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
            for parameter in self.own_parameters
        ]
        if own:
            squares.index_add_(0, self.own_owners, torch.stack(torch._foreach_norm(own)).square())
        coefficients = (limit / (squares.sqrt() + _CLIP_EPSILON)).clamp(max=1.0)
        for parameter in stacked:
            assert parameter.grad is not None
            parameter.grad.mul_(coefficients.view(-1, *([1] * (parameter.dim() - 1))))
        if own:
            for parameter, coefficient in zip(self.own_parameters, coefficients[self.own_owners].unbind(), strict=True):
                if parameter.grad is not None:
                    parameter.grad.mul_(coefficient)

    def _backward(self, indices: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Forward and backward of every member on its own batch (indices (members, batch)): logits, labels, losses."""
        batch = indices.shape[1]
        inputs = self.data.train_x[indices]
        labels = self.data.train_y[indices]
        logits = self.model(inputs)
        members, _, classes = logits.shape
        losses = functional.cross_entropy(logits.reshape(-1, classes), labels.reshape(-1), reduction="none")
        member_losses = losses.view(members, batch).mean(dim=1)
        # The sum's gradient in each member's slices is that member's own mean-loss gradient.
        member_losses.sum().backward()
        self._record_gradient_norms()
        return logits, labels, member_losses

    def _step(self, indices: Tensor) -> None:
        """One training step of every member on its own batch; indices (members, batch)."""
        batch = indices.shape[1]
        logits, labels, member_losses = self._backward(indices)
        clip = self.spec.training.grad_clip
        if clip is not None:
            self._clip_per_member(clip)
        self.optimizer.step()
        self.loss_sums += member_losses.detach() * batch
        self.correct += (logits.detach().argmax(dim=2) == labels).sum(dim=1)

    def _eager_step(self, indices: Tensor) -> None:
        # After a capture the gradients live in the graph's memory: zero them there instead of dropping them.
        self.optimizer.zero_grad(set_to_none=self.graph is None)
        if not self.use_graphs:
            self._step(indices)
            return
        with warnings.catch_warnings():
            # Capturable optimizers warn when they step outside a graph; warm-up and last batches do so on purpose.
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            self._step(indices)

    def _graph_step(self, indices: Tensor, full_batch: int) -> None:
        """Replay the captured step for full batches; warm up, capture, or run eagerly otherwise."""
        if indices.shape[1] != full_batch:
            self._eager_step(indices)
            return
        if self.graph is None:
            if self.eager_steps < _GRAPH_WARMUP_STEPS:
                # Warm-up steps are real steps, run on a side stream as graph capture requires.
                if self.side_stream is None:
                    self.side_stream = torch.cuda.Stream(device=self.device)
                self.side_stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(self.side_stream):
                    self._eager_step(indices)
                torch.cuda.current_stream(self.device).wait_stream(self.side_stream)
                self.eager_steps += 1
                return
            self.graph_indices = indices.clone()
            self.optimizer.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._step(self.graph_indices)
            self.graph = graph
            self.graph_lr = float(self.optimizer.param_groups[0]["lr"])
            # Capturing records the step without running it: replay it for this batch.
            graph.replay()
            return
        assert self.graph_indices is not None
        self.graph_indices.copy_(indices)
        self.graph.replay()

    def _invalidate_graph(self) -> None:
        self.graph = None
        self.graph_indices = None
        self.eager_steps = 0

    def train_epoch(self, epoch: int) -> Tensor:
        """The epoch's (evaluation's) steps of every member over its own batch order (``evaluation_batches``);
        [mean loss, accuracy] over them per member (members, 2)."""
        self.model.train()
        self.loss_sums.zero_()
        self.correct.zero_()
        size = self.data.train_x.shape[0]
        batch_size = self.spec.training.batch_size
        orders: dict[int, tuple[Tensor, list[int]]] = {}
        for member in self.members:
            if member.seed not in orders:
                batches = evaluation_batches(
                    self.spec.training, seed=member.seed, evaluation=epoch, size=size, device=self.device
                )
                orders[member.seed] = (torch.cat(batches), [len(batch) for batch in batches])
        sizes = orders[self.members[0].seed][1]
        # Every member's batches have the same sizes (same data size and batch size), so step s is one
        # column block of the (members, examples) order matrix.
        order = torch.stack([orders[member.seed][0] for member in self.members])
        if self.use_graphs and self.graph is not None and self.graph_lr != self.optimizer.param_groups[0]["lr"]:
            # The learning rate is a constant inside the captured optimizer step.
            self._invalidate_graph()
        start = 0
        for batch in sizes:
            indices = order[:, start : start + batch]
            start += batch
            if self.use_graphs:
                self._graph_step(indices, batch_size)
            else:
                self._eager_step(indices)
            self.steps += 1
            self.total_steps += 1
        examples = max(sum(sizes), 1)
        return torch.stack([self.loss_sums / examples, self.correct.to(self.loss_sums.dtype) / examples], dim=1)

    # --- evaluation and diagnostics ---

    def probe_gradients(self) -> None:
        """Epoch 0's gradient norms: every member's forward and backward pass of the probe batch, no step."""
        batch = gradient_probe_batch(self.data.train_x.shape[0], self.spec.training.batch_size)
        indices = torch.arange(batch.stop, device=self.device).expand(self.model.members, -1)
        with probe_leaves_no_trace(self.model, self.device):
            self.model.train()
            self.optimizer.zero_grad(set_to_none=True)
            self._backward(indices)
            self.steps += 1

    def evaluate(self, inputs: Tensor, labels: Tensor) -> Tensor:
        """[mean cross-entropy, accuracy] per member (members, 2) over a full split, in eval mode."""
        self.model.eval()
        members = self.model.members
        loss_sums = torch.zeros(members, device=self.device, dtype=torch.float64)
        correct = torch.zeros(members, device=self.device, dtype=torch.long)
        with torch.no_grad():
            for start in range(0, inputs.shape[0], EVALUATION_BATCH_SIZE):
                batch_inputs = inputs[start : start + EVALUATION_BATCH_SIZE]
                batch_labels = labels[start : start + EVALUATION_BATCH_SIZE]
                logits = self.model(batch_inputs, shared=True)
                classes = logits.shape[2]
                losses = functional.cross_entropy(
                    logits.reshape(-1, classes), batch_labels.repeat(members), reduction="none"
                )
                loss_sums += losses.view(members, -1).sum(dim=1).double()
                correct += (logits.argmax(dim=2) == batch_labels).sum(dim=1)
        self.model.train()
        examples = max(inputs.shape[0], 1)
        return torch.stack([loss_sums / examples, correct.double() / examples], dim=1)

    def diagnose(self) -> list[LayerDiagnostics]:
        """Every member's layer reports, gradient-norm ratio and flag for this epoch; resets the gradient sums."""
        members = self.model.members
        collectors: dict[tuple[int, int], ActivationStatistics | None] = {}
        for layer in self.layers:
            if layer.site is None:
                continue
            site = self.model.site(layer.site)
            for member in range(members):
                collectors[(layer.site, member)] = activation_statistics(
                    site.member(member), self.members[member].state.activation
                )

        def record(site: int, outputs: Tensor, axis: int) -> None:
            for member, piece in enumerate(outputs.unbind(axis)):
                collector = collectors[(site, member)]
                if collector is not None:
                    collector.add(piece)

        self.model.eval()
        with torch.no_grad():
            for start in range(0, self.probe.shape[0], PROBE_EXAMPLES):
                self.model(self.probe[start : start + PROBE_EXAMPLES], shared=True, record=record)
        self.model.train()

        def statistics(layer: StackedDiagnosticLayer, member: int) -> ActivationStatistics | None:
            return collectors[(layer.site, member)] if layer.site is not None else None

        rows = []
        with torch.no_grad():
            for layer in self.layers:
                weight_norms = torch.stack(
                    [torch.linalg.vector_norm(weight.detach().double().flatten(1), dim=1) for weight in layer.weights]
                )
                weight_norm = torch.linalg.vector_norm(weight_norms, dim=0)
                summaries = torch.stack(
                    [summary_row(statistics(layer, member), self.device) for member in range(members)]
                )
                rows.append(torch.cat([weight_norm.unsqueeze(1), summaries], dim=1))
        gradient_means = (self.gradient_sums / max(self.steps, 1)).double()
        # (layers, members, 6) read in one host transfer.
        table = torch.cat([torch.stack(rows), gradient_means.unsqueeze(2)], dim=2).tolist()
        self.gradient_sums.zero_()
        self.steps = 0
        names = [layer.name for layer in self.layers]
        return [
            layer_diagnostics(
                names,
                [table[index][member] for index in range(len(self.layers))],
                [statistics(layer, member) for layer in self.layers],
                [
                    self.model.site(layer.site).member(member) if layer.site is not None else None
                    for layer in self.layers
                ],
            )
            for member in range(members)
        ]

    # --- membership ---

    def keep_members(self, keep: list[int]) -> None:
        """Remove every member not in ``keep`` (positions in the current stack) with its optimizer state."""
        removed = [index for index in range(len(self.members)) if index not in keep]
        dropped = {id(parameter) for index in removed for parameter in self.model.member_parameters(index)}
        stacked = self.model.stacked_parameters()
        positions = torch.tensor(keep, dtype=torch.long, device=self.device)
        saved_state = {id(parameter): self.optimizer.state.pop(parameter, None) for parameter in stacked}
        for group in self.optimizer.param_groups:
            group["params"] = [parameter for parameter in group["params"] if id(parameter) not in dropped]
        for parameter in list(self.optimizer.state):
            if id(parameter) in dropped:
                del self.optimizer.state[parameter]
        self.model.keep_members(keep)
        for parameter in stacked:
            state = saved_state[id(parameter)]
            if state is None:
                continue
            for key, value in state.items():
                # Moments have the parameter's shape; step counters are scalars shared by every member.
                if isinstance(value, Tensor) and value.dim() > 0:
                    state[key] = value.index_select(0, positions)
            self.optimizer.state[parameter] = state
        self.members = [self.members[index] for index in keep]
        self.batch_norm_base = [self.batch_norm_base[index] for index in keep]
        self.layers = self.model.diagnostic_layers()
        self._allocate_accumulators()
        self._invalidate_graph()
