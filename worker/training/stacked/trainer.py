"""Training members stacked: the driver that groups members by epoch, runs the epochs and ends each member.

``train_stacked`` builds every member as the ordinary trainer does (``prepare_arm``), resumes it from
its checkpoint, trains members that have completed the same epochs as one ``StackedRun`` with the
epoch body and outcome rule of the ordinary trainer (``run_epoch``, ``record_epoch``), and where
``can_stack`` says no trains them one after another through ``train_arm``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from app.spec import ExperimentSpec
from app.spec_factors import PER_MEMBER_PATHS, stack_key
from worker.training.datasets import DatasetSplits
from worker.training.epochs import run_epoch
from worker.training.reports import ArmOutcome, EpochReport, RunInfo
from worker.training.stacked.plan import Member, can_stack
from worker.training.stacked.run import StackedMember, StackedRun
from worker.training.trainer import (
    CheckpointClock,
    arm_outcome,
    finished_status,
    first_epoch,
    load_checkpoint,
    prepare_arm,
    record_epoch,
    save_checkpoint,
    train_arm,
    training_data,
)

OnStart = Callable[[int, RunInfo], None]
OnEpoch = Callable[[list[tuple[int, EpochReport]]], list[bool] | bool | None]


def _check_members(
    spec: ExperimentSpec, members: Sequence[Member], member_specs: Sequence[ExperimentSpec] | None
) -> tuple[list[Member], list[ExperimentSpec]]:
    """The members as ints with each one's spec (``spec`` unless ``member_specs`` gives one per member)."""
    specs = list(member_specs) if member_specs is not None else [spec] * len(members)
    if len(specs) != len(members):
        raise ValueError(f"member_specs: one per member ({len(members)}) is needed, got {len(specs)}")
    shared = stack_key(spec)
    checked: list[Member] = []
    seen: set[tuple[int, int, str]] = set()
    for position, ((activation_index, seed), member_spec) in enumerate(zip(members, specs, strict=True)):
        if not 0 <= activation_index < len(spec.activations):
            raise ValueError(
                f"members[{position}]: activation_index must be in 0..{len(spec.activations) - 1}, "
                f"got {activation_index}"
            )
        if seed < 0:
            raise ValueError(f"members[{position}]: seed must be at least 0, got {seed}")
        if member_spec is not spec and stack_key(member_spec) != shared:
            raise ValueError(
                f"member_specs[{position}]: may differ from the spec only in {', '.join(PER_MEMBER_PATHS)}"
            )
        identity = (int(activation_index), int(seed), member_spec.model_dump_json())
        if identity in seen:
            raise ValueError("members: each (activation_index, seed) pair may appear only once per member spec")
        seen.add(identity)
        checked.append((int(activation_index), int(seed)))
    return checked, specs


def _keep_going(answer: list[bool] | bool | None, count: int) -> list[bool]:
    if answer is None:
        return [True] * count
    if isinstance(answer, bool):
        return [answer] * count
    if len(answer) != count:
        raise ValueError(f"on_epoch returned {len(answer)} answers for {count} members")
    return [item is not False for item in answer]


def _train_unstacked(
    specs: list[ExperimentSpec],
    members: list[Member],
    *,
    device: torch.device,
    data: DatasetSplits,
    on_start: OnStart | None,
    on_epoch: OnEpoch | None,
    checkpoint_paths: list[Path | None],
    checkpoint_interval: float,
    reason: str,
) -> list[ArmOutcome]:
    outcomes = []
    for position, (activation_index, seed) in enumerate(members):

        def started(info: RunInfo, position: int = position) -> None:
            if on_start is not None:
                on_start(position, dataclasses.replace(info, stacking_reason=reason))

        def finished(report: EpochReport, position: int = position) -> bool | None:
            if on_epoch is None:
                return None
            return _keep_going(on_epoch([(position, report)]), 1)[0]

        outcomes.append(
            train_arm(
                specs[position],
                activation_index=activation_index,
                seed=seed,
                device=device,
                data=data,
                on_start=started,
                on_epoch=finished,
                checkpoint_path=checkpoint_paths[position],
                checkpoint_interval=checkpoint_interval,
            )
        )
    return outcomes


def _train_group(
    spec: ExperimentSpec,
    members: list[StackedMember],
    *,
    data: DatasetSplits,
    device: torch.device,
    on_epoch: OnEpoch | None,
    cuda_graphs: bool,
    checkpoints: CheckpointClock,
) -> None:
    """Train members that have completed the same epochs as one stack; sets each member's status."""
    run = StackedRun(spec, members, data, device, cuda_graphs=cuda_graphs)
    for epoch in range(first_epoch(members[0].state), spec.training.evaluations + 1):
        reports = run_epoch(run, data, epoch=epoch, training=spec.training)
        for member, report in zip(run.members, reports, strict=True):
            member.status = record_epoch(member.state, report)
        answers = [True] * len(run.members)
        if on_epoch is not None:
            by_position = sorted(range(len(run.members)), key=lambda index: run.members[index].position)
            answered = _keep_going(
                on_epoch([(run.members[index].position, reports[index]) for index in by_position]), len(by_position)
            )
            for index, answer in zip(by_position, answered, strict=True):
                answers[index] = answer
        # As train_arm: when due, and always for a member cancelled before its end (a later attempt may resume
        # it; its checkpoint stays "running"). A member's end is recorded by on_epoch, so it is saved only when due.
        due = checkpoints.due()
        exported: set[int] = set()
        for index, member in enumerate(run.members):
            cancelled = member.status is None and not answers[index]
            if member.checkpoint_path is not None and (due or cancelled):
                run.export_member(index)
                exported.add(index)
                save_checkpoint(member.checkpoint_path, member.state, status=member.status or "running")
            if cancelled:
                member.status = "cancelled"
        if due:
            checkpoints.saved()
        keep = [index for index, member in enumerate(run.members) if member.status is None]
        if len(keep) < len(run.members):
            # The leaving members' final tensors go back to their templates before the stack shrinks.
            for index, member in enumerate(run.members):
                if member.status is not None and index not in exported:
                    run.export_member(index)
            if not keep:
                return
            run.keep_members(keep)
    for index, member in enumerate(run.members):
        run.export_member(index)
        member.status = member.status or "succeeded"


def train_stacked(
    spec: ExperimentSpec,
    *,
    members: Sequence[Member] | None = None,
    device: str | torch.device | None = None,
    data: DatasetSplits | None = None,
    on_start: OnStart | None = None,
    on_epoch: OnEpoch | None = None,
    checkpoint_paths: Sequence[Path | None] | None = None,
    checkpoint_interval: float = 0.0,
    cuda_graphs: bool = True,
    member_specs: Sequence[ExperimentSpec] | None = None,
) -> list[ArmOutcome]:
    """Train members (activation_index, seed) as one stacked model, or one after another where ``can_stack`` says no.

    ``on_start(member, info)`` runs once per member before training (``member`` is the position in
    ``members``); ``on_epoch`` runs once per epoch with every live member's (member, report) and may return
    False (all) or a list of booleans (one per report) to cancel members. ``checkpoint_paths`` (one per
    member, or None) are read and written in ``train_arm``'s format, so a run resumes stacked or unstacked
    alike; they are written as ``train_arm`` writes them, at most every ``checkpoint_interval`` seconds (0:
    every epoch) and always for a member that is cancelled. Outcomes come back in ``members`` order;
    ``members`` defaults to every arm of the spec. ``member_specs`` (one per member, default ``spec``) lets
    members of cells that differ only in ``PER_MEMBER_PATHS`` (``training.init``) share the stack: each member
    is built and initialised with its own spec, and the stack trains with ``spec``'s shared settings.
    """
    chosen, specs = _check_members(
        spec,
        members if members is not None else [(arm.activation_index, arm.seed) for arm in spec.arms()],
        member_specs,
    )
    paths: list[Path | None] = list(checkpoint_paths) if checkpoint_paths is not None else [None] * len(chosen)
    if len(paths) != len(chosen):
        raise ValueError(f"checkpoint_paths: one per member ({len(chosen)}) is needed, got {len(paths)}")
    if not chosen:
        return []
    target, data = training_data(spec, device=device, data=data)
    stackable, reason = can_stack(spec)
    if not stackable:
        return _train_unstacked(
            specs,
            chosen,
            device=target,
            data=data,
            on_start=on_start,
            on_epoch=on_epoch,
            checkpoint_paths=paths,
            checkpoint_interval=checkpoint_interval,
            reason=reason,
        )
    # Members of one activation sit next to each other so parameter-free activations run once per group.
    order = sorted(range(len(chosen)), key=lambda position: (chosen[position][0], position))
    run_members: list[StackedMember] = []
    for position in order:
        activation_index, seed = chosen[position]
        state = prepare_arm(specs[position], activation_index=activation_index, seed=seed, data=data, device=target)
        state.info = dataclasses.replace(state.info, training_path="stacked")
        member = StackedMember(position, state, paths[position])
        path = paths[position]
        if path is not None and path.exists():
            member.status = finished_status(load_checkpoint(path, state))
        run_members.append(member)
    for member in sorted(run_members, key=lambda member: member.position):
        if on_start is not None:
            on_start(member.position, member.state.info)
    # Members resumed at different epochs cannot share a stack: one stack per starting epoch.
    starting: dict[int, list[StackedMember]] = {}
    for member in run_members:
        if member.status is None:
            starting.setdefault(first_epoch(member.state), []).append(member)
    for epoch in sorted(starting):
        group = starting[epoch]
        if epoch > spec.training.evaluations:
            for member in group:
                member.status = "succeeded"
            continue
        _train_group(
            spec,
            group,
            data=data,
            device=target,
            on_epoch=on_epoch,
            cuda_graphs=cuda_graphs,
            checkpoints=CheckpointClock(checkpoint_interval),
        )
    # Each member's robustness is measured through its ordinary model (its final tensors were exported into it),
    # so a stacked run reports the numbers the ordinary trainer reports.
    outcomes = {
        member.position: arm_outcome(member.state, member.status or "succeeded", data=data) for member in run_members
    }
    return [outcomes[position] for position in range(len(chosen))]
