"""Training a spec's arms on this machine the way the worker does: per cell, stacked where it pays, one process per core.

``actlab train`` uses this so that a local grid takes the engine's fast path: the arms of each cell
(of a factorial spec, or the one cell of a plain one) are planned as the worker plans them
(``stacking_recommended``: stacked where a stack trains faster on this device, one arm at a time
elsewhere), the work is shared among ``processes`` forked children with one torch thread each
(bench/RESULTS.md: processes with one thread beat threads on shared cores), and every epoch
report comes back to the caller as it happens.

Datasets are loaded once in the parent before the children are forked, so the children inherit
them (copy-on-write) instead of generating them again. The numbers do not depend on the number of
processes: stacked members train exactly as unstacked arms (the engine's equivalence tests), and
an arm's data order comes from its seed alone.

Cancelling (``LocalTraining.cancel``, e.g. on Ctrl-C) lets every child finish its current epoch and
end its arms as cancelled, so what was trained is kept.
"""

from __future__ import annotations

import math
import multiprocessing
import queue as queue_module
import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event
from typing import Any

from app.config import available_cores
from app.spec import ExperimentSpec
from app.spec_factors import Cell, expand_cells
from worker.training.reports import ArmOutcome, EpochReport

# How often the parent looks at its children while no report arrives (a child that died is noticed then).
_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class LocalArm:
    """One arm of a local grid: its cell and its (activation, seed)."""

    cell_index: int
    cell_label: str
    activation_index: int
    label: str
    seed: int

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.cell_index, self.activation_index, self.seed)


@dataclass(frozen=True)
class Job:
    """Arms of one cell that one process trains together: one stack, or one arm trained alone."""

    cell_index: int
    members: tuple[tuple[int, int], ...]
    stacked: bool
    reason: str

    @property
    def cost(self) -> int:
        return len(self.members)


@dataclass(frozen=True)
class LocalPlan:
    """The cells, the jobs and how they are shared among the processes."""

    cells: list[Cell]
    jobs: list[Job]
    processes: int
    assignments: list[list[int]]

    def arms(self) -> list[LocalArm]:
        return [
            LocalArm(cell.index, cell.label, arm.activation_index, arm.label, arm.seed)
            for cell in self.cells
            for arm in cell.spec.arms()
        ]


def _split(members: list[tuple[int, int]], parts: int) -> list[list[tuple[int, int]]]:
    size = math.ceil(len(members) / max(parts, 1))
    return [members[start : start + size] for start in range(0, len(members), max(size, 1))]


def plan_local(spec: ExperimentSpec, *, device: str, processes: int | None = None) -> LocalPlan:
    """Plan a spec's arms for ``processes`` local processes (default: one per available core) on ``device``."""
    from worker.training.stacked import stacking_recommended

    cells = expand_cells(spec)
    arm_total = sum(len(cell.spec.activations) * len(cell.spec.seeds) for cell in cells)
    wanted = processes if processes is not None else available_cores()
    count = max(1, min(wanted, arm_total)) if device == "cpu" else 1
    jobs: list[Job] = []
    for cell in cells:
        members = [(arm.activation_index, arm.seed) for arm in cell.spec.arms()]
        stacked, reason = stacking_recommended(cell.spec, device=device)
        if stacked:
            # One stack on a GPU; on a CPU one stack per process, so that they finish about together.
            for chunk in _split(members, count if device == "cpu" else 1):
                jobs.append(Job(cell.index, tuple(chunk), True, reason))
        else:
            jobs.extend(Job(cell.index, (member,), False, reason) for member in members)
    # Longest jobs first, each to the process with the least work so far.
    loads = [0] * count
    assignments: list[list[int]] = [[] for _ in range(count)]
    for position in sorted(range(len(jobs)), key=lambda index: -jobs[index].cost):
        target = loads.index(min(loads))
        assignments[target].append(position)
        loads[target] += jobs[position].cost
    return LocalPlan(cells, jobs, count, [sorted(indices) for indices in assignments])


Message = tuple[Any, ...]
Emit = Callable[[Message], None]


def _run_job(spec: ExperimentSpec, job: Job, *, device: str, emit: Emit, cancelled: Callable[[], bool]) -> None:
    """Train one job, emitting ('epoch', key, report) per member epoch and ('end', key, outcome) per member."""
    from worker.training.datasets import load_dataset
    from worker.training.stacked import train_stacked
    from worker.training.trainer import train_arm

    data = load_dataset(spec.dataset, validation_fraction=spec.training.validation_fraction, device=device)

    def key(member: tuple[int, int]) -> tuple[int, int, int]:
        return (job.cell_index, *member)

    if job.stacked:

        def on_epoch(reports: list[tuple[int, EpochReport]]) -> bool:
            for position, report in reports:
                emit(("epoch", key(job.members[position]), report))
            return not cancelled()

        outcomes = train_stacked(spec, members=list(job.members), device=device, data=data, on_epoch=on_epoch)
        for member, outcome in zip(job.members, outcomes, strict=True):
            emit(("end", key(member), outcome))
        return
    for member in job.members:
        if cancelled():
            return

        def on_arm_epoch(report: EpochReport, member: tuple[int, int] = member) -> bool:
            emit(("epoch", key(member), report))
            return not cancelled()

        activation_index, seed = member
        outcome = train_arm(
            spec, activation_index=activation_index, seed=seed, device=device, data=data, on_epoch=on_arm_epoch
        )
        emit(("end", key(member), outcome))


def _child(plan: LocalPlan, jobs: list[int], device: str, reports: multiprocessing.Queue[Message], stop: Event) -> None:
    # Ctrl-C reaches the whole process group; the parent alone decides, through ``stop``.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    # One torch thread per child: more would oversubscribe shared cores (bench/RESULTS.md), and GNU OpenMP is
    # not safe to use with several threads in a child forked after the parent used it.
    torch.set_num_threads(1)
    try:
        for position in jobs:
            job = plan.jobs[position]
            _run_job(plan.cells[job.cell_index].spec, job, device=device, emit=reports.put, cancelled=stop.is_set)
    except BaseException:
        reports.put(("error", traceback.format_exc()))
    finally:
        reports.put(("done",))


class LocalTrainingError(RuntimeError):
    """A child process failed; the message holds its traceback."""


OnEvent = Callable[[str, LocalArm, Any], None]


@dataclass
class LocalTraining:
    """A planned local grid; ``run(on_event)`` trains it, passing on ('epoch', arm, report) and ('end', arm, outcome)."""

    plan: LocalPlan
    device: str
    _stop: Event | None = None
    _cancelled: bool = False
    _children: list[multiprocessing.process.BaseProcess] = field(default_factory=list)

    def cancel(self) -> None:
        """Let every arm finish its current epoch and end as cancelled."""
        self._cancelled = True
        if self._stop is not None:
            self._stop.set()

    def _terminate(self) -> None:
        for child in self._children:
            if child.is_alive():
                child.terminate()
        for child in self._children:
            child.join()

    def run(self, on_event: OnEvent) -> bool:
        """Train every job; returns True when interrupted (Ctrl-C) after keeping what was trained.

        With several processes a first Ctrl-C lets each arm finish its epoch and end as cancelled; a
        second stops the children at once. In one process Ctrl-C stops at once, as a plain loop would.
        """
        arms = {arm.key: arm for arm in self.plan.arms()}

        def emit(message: Message) -> None:
            kind, key, value = message
            on_event(kind, arms[key], value)

        try:
            if self.plan.processes > 1:
                return self._in_children(emit)
            for job in self.plan.jobs:
                spec = self.plan.cells[job.cell_index].spec
                _run_job(spec, job, device=self.device, emit=emit, cancelled=lambda: self._cancelled)
        except KeyboardInterrupt:
            # Before the children started, or in this process: stop here with what was reported.
            self._terminate()
            return True
        return False

    def _in_children(self, emit: Emit) -> bool:
        from worker.training.datasets import load_dataset

        # Load every dataset here once, before forking: the children inherit it instead of generating it.
        for cell in self.plan.cells:
            training = cell.spec.training
            load_dataset(cell.spec.dataset, validation_fraction=training.validation_fraction, device=self.device)
        context = multiprocessing.get_context("fork")
        reports: multiprocessing.Queue[Message] = context.Queue()
        self._stop = context.Event()
        if self._cancelled:
            self._stop.set()
        for jobs in self.plan.assignments:
            child: multiprocessing.process.BaseProcess = context.Process(
                target=_child, args=(self.plan, jobs, self.device, reports, self._stop), daemon=True
            )
            child.start()
            self._children.append(child)
        running = len(self._children)
        errors: list[str] = []
        interrupted = False
        try:
            while running:
                # Ctrl-C may land anywhere in this loop: the first cancels, the second stops the children.
                try:
                    try:
                        message = reports.get(timeout=_POLL_SECONDS)
                    except queue_module.Empty:
                        dead = [child for child in self._children if child.exitcode not in (None, 0)]
                        if dead and reports.empty():
                            raise LocalTrainingError(
                                f"a training process ended with exit code {dead[0].exitcode} before it finished"
                            ) from None
                        continue
                    if message[0] == "done":
                        running -= 1
                    elif message[0] == "error":
                        errors.append(message[1])
                        self.cancel()
                    else:
                        emit(message)
                except KeyboardInterrupt:
                    if interrupted:
                        break
                    interrupted = True
                    self.cancel()
        finally:
            if running:
                self._terminate()
            for child in self._children:
                child.join()
        if errors and not interrupted:
            raise LocalTrainingError(errors[0])
        return interrupted


def start_local(spec: ExperimentSpec, *, device: str, processes: int | None = None) -> LocalTraining:
    """Plan a spec for local training; ``.run(on_event)`` of the result trains it."""
    return LocalTraining(plan_local(spec, device=device, processes=processes), device)


def train_local(
    spec: ExperimentSpec,
    *,
    device: str,
    processes: int | None = None,
    on_epoch: Callable[[LocalArm, EpochReport], None] | None = None,
) -> dict[tuple[int, int, int], ArmOutcome]:
    """Train every arm of every cell locally; outcomes by (cell_index, activation_index, seed)."""
    outcomes: dict[tuple[int, int, int], ArmOutcome] = {}

    def on_event(kind: str, arm: LocalArm, value: Any) -> None:
        if kind == "epoch" and on_epoch is not None:
            on_epoch(arm, value)
        elif kind == "end":
            outcomes[arm.key] = value

    start_local(spec, device=device, processes=processes).run(on_event)
    return outcomes
