"""Train an experiment's runs stacked: a worker process claims a chunk of them and trains the chunk as one model.

The API still sends one task per run. When a worker process executes the task of a run whose
experiment the engine recommends stacking for (``worker.training.stacked.stacking_recommended``),
it claims that run and other queued runs of the same experiment, up to a chunk size, the others
in one statement (``claim_queued_runs``: each one attempt more, this task's id, its own heartbeat),
and trains them with ``train_stacked``. The tasks of the runs claimed this way are delivered
later and find their run running under this task (or finished): ``claim_run`` returns None and
they end at once.

Why claim at execution time rather than send chunks of run ids at dispatch time: the API never
imports torch, so it cannot tell whether a spec stacks or how many members fit a device's memory,
and it does not know how many worker processes will share the experiment; a worker knows all
three. Every reliability rule of one run per task stays as it was:

- redelivery: runs are claimed under the claiming task's id, and a delivery of a task takes back
  the runs an earlier delivery of the same task left running (``runs_left_by_task``), so a task
  redelivered after a SIGKILL, or retried after a transient error, resumes its whole chunk from the
  per-run checkpoints; a task that is never delivered again leaves runs whose heartbeat goes
  stale, which the reaper requeues (worker/maintenance.py);
- fencing: every write is fenced by each run's own attempt; a member taken over by a newer attempt
  stops (its answer to the engine is False) while the others go on;
- cancel: checked once per epoch for the experiment; every member stops at the epoch boundary and
  keeps its finished epochs.

Each epoch is one transaction: every live member's metric rows, progress and heartbeat, a diverged
member's end, the experiment's status once, and the cancel check. A member that diverges is
finished as diverged in that transaction; the engine drops it from the stack and the others go on.

Specs the engine does not recommend stacking for (conv nets and larger MLPs on a CPU, RNNs,
dropout), and chunks of one run, train through the ordinary path (``worker.runner``). The steps
both paths share (claim, heartbeat thread, database retry, the error ladder, the time-limit texts)
live in worker/lifecycle.py.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine

from app.config import Settings, get_settings
from app.db import get_engine, session_scope
from app.experiments.repository import bump_results_version
from app.experiments.service import refresh_experiment_status
from app.logging_config import log_context
from app.metrics.write_repository import replace_robustness, upsert_epoch_metrics_of_runs
from app.models import RunStatus
from app.runs.stack_repository import (
    experiment_of_run,
    queued_runs_to_stack,
    recorded_training_seconds,
    run_count,
    runs_left_by_task,
)
from app.runs.state_repository import (
    ClaimedRun,
    StaleAttemptError,
    cancel_requested,
    claim_queued_runs,
    finish_run,
    lock_experiment_of_run,
    record_epoch_progress_of_runs,
    record_run_start,
)
from app.spec import ExperimentSpec
from app.spec_factors import PER_MEMBER_PATHS, cell_label, run_spec, stacking_cells
from worker.lifecycle import (
    BatchOutcome,
    PeriodicRunHeartbeat,
    RunOutcome,
    checkpoint_path,
    claim_or_end,
    configure_torch,
    drop_checkpoint_after,
    end_after_error,
    end_before_training,
    is_transient_error,
    max_attempts,
    not_started_message,
    shutdown_behind,
    status_of_outcome,
    training_device,
    with_database_retry,
)
from worker.pool import stack_memory_budget_bytes, worker_processes
from worker.runner import execute_claimed

if TYPE_CHECKING:
    from worker.training.reports import ArmOutcome, EpochReport, RobustnessPoint, RunInfo

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StackPlan:
    """How a claimed run's experiment trains here: its spec, the device asked for, and the members that fit memory."""

    spec: ExperimentSpec
    device: str
    on_gpu: bool
    members_in_memory: int
    # Why stacking pays for this spec on this device (the engine's stacking_recommended), kept on each stacked run.
    reason: str = ""

    def chunk_size(self, *, settings: Settings, experiment_runs: int) -> int:
        """Runs one process trains as one stack: the setting, else all on a GPU or a process's share on a CPU."""
        if settings.stack_chunk_runs > 0:
            chunk = settings.stack_chunk_runs
        elif self.on_gpu:
            # One stack fills a GPU that one small model leaves idle; splitting it would only add stacks.
            chunk = experiment_runs
        else:
            processes = settings.stack_worker_processes or worker_processes(settings)
            # The experiment is split into one stack per process, so that they all finish about together.
            chunk = math.ceil(experiment_runs / max(processes, 1))
        return max(1, min(chunk, self.members_in_memory))


# Why a run trained alone, where the worker (not the engine) decided it; runs.stacking_reason.
STACKING_OFF = "stacking is off on this worker (ACTLAB_STACK_RUNS=false)"


def no_companions_reason(plan: StackPlan) -> str:
    """Why a run whose spec stacks trained alone: no other queued run of its cell was free to join it here."""
    return (
        "no other queued run of its cell was free to stack with on this worker (a stack takes the runs of its cell "
        f"and of the cells differing from it only in {', '.join(PER_MEMBER_PATHS)}: its members share one "
        f"architecture and optimiser); it would have stacked: {plan.reason}"
    )


def stack_reason(plan: StackPlan, group: Sequence[ClaimedRun]) -> str:
    """Why the group trained stacked (the plan's reason), and the cells it spans where it holds runs of several."""
    cells = {claimed.cell_index: claimed.cell_levels or {} for claimed in group}
    if len(cells) < 2:
        return plan.reason
    labels = "; ".join(cell_label(cells[index]) for index in sorted(cells))
    return (
        f"{plan.reason}; the stack spans {len(cells)} cells ({labels}), which differ only in "
        f"{', '.join(PER_MEMBER_PATHS)}, given to each member at initialisation"
    )


def plan_stack(*, claimed: ClaimedRun, settings: Settings) -> tuple[StackPlan | None, str]:
    """The stack plan for a claimed run's experiment, or None when its runs train one at a time; the reason either way.

    Deterministic problems (a spec that no longer parses, CUDA asked for where there is none) give
    None: the ordinary path meets them again and records them on the run.
    """
    if not settings.stack_runs:
        return None, STACKING_OFF
    try:
        from worker.training.stacked import member_memory_bytes, stacking_recommended
        from worker.training.trainer import resolve_device

        spec = run_spec(claimed.spec, claimed.cell_levels)
        device = training_device(spec_device=spec.device, queue=claimed.queue)
        recommended, reason = stacking_recommended(spec, device=device)
        if not recommended:
            logger.info("run %s: trained alone: %s", claimed.run_id, reason)
            return None, f"stacking not recommended: {reason}"
        target = resolve_device(device)
        # The engine's own estimate (the one group_members splits a grid by) of what one member needs.
        budget = stack_memory_budget_bytes(settings=settings, device=target)
        fit = max(1, budget // max(member_memory_bytes(spec), 1))
        plan = StackPlan(spec=spec, device=device, on_gpu=target.type == "cuda", members_in_memory=fit, reason=reason)
        return plan, reason
    except Exception as error:
        if is_transient_error(error) or shutdown_behind(error) is not None:
            raise
        logger.warning("run %s: cannot plan a stack (%s); training it alone", claimed.run_id, error)
        return None, f"no stack could be planned ({error})"


@dataclass
class _Member:
    """One claimed run in a stack and what this attempt learned about it while training."""

    claimed: ClaimedRun
    checkpoint: Path
    # A newer attempt owns the run: write nothing more for it.
    stale: bool = False
    # The end already recorded while the others trained (diverged).
    recorded: RunStatus | None = None

    @property
    def live(self) -> bool:
        return not self.stale and self.recorded is None


class StackHeartbeat(PeriodicRunHeartbeat):
    """The heartbeat of a stack's runs: refreshes every live member's heartbeat between epochs, one short
    transaction per run (one row lock each)."""

    def __init__(self, *, engine: Engine, members: list[_Member], interval: float) -> None:
        super().__init__(engine=engine, interval=interval, name="stack-heartbeat")
        self._members = members

    def beat(self) -> bool:
        for member in self._members:
            if not member.live or self.stopping:
                continue
            if not self.fence(member.claimed.run_id, member.claimed.attempt) and member.recorded is None:
                member.stale = True
        return True


class _StackWriter:
    """The engine's callbacks for a stack: record each member's placement, write each epoch, answer 'keep going?'."""

    def __init__(self, *, engine: Engine, members: list[_Member], retry_seconds: float, reason: str = "") -> None:
        self._engine = engine
        self._members = members
        self._retry_seconds = retry_seconds
        self._experiment_id = members[0].claimed.experiment_id
        self._starts: dict[int, RunInfo] = {}
        # One id for the runs this delivery trains together (members resumed at different epochs included).
        self._stack_id = str(uuid.uuid4())
        self._reason = reason

    def _lock(self, session: Any) -> None:
        """The experiment's lock (PostgreSQL) or the write lock (SQLite), first in every transaction."""
        anchor = next((member for member in self._members if member.live), self._members[0])
        lock_experiment_of_run(session=session, run_id=anchor.claimed.run_id)

    def on_start(self, position: int, info: RunInfo) -> None:
        """Keep the member's placement; the engine announces every member before training, written together."""
        self._starts[position] = info
        if len(self._starts) == len(self._members):
            self.flush_starts()

    def flush_starts(self) -> None:
        """Write the placements announced so far in one transaction."""
        if not self._starts:
            return
        starts = dict(self._starts)
        stale = with_database_retry(
            lambda: self._write_starts(starts),
            what=f"experiment {self._experiment_id}: recording starts",
            seconds=self._retry_seconds,
        )
        self._starts.clear()
        for position in stale:
            self._members[position].stale = True

    def _write_starts(self, starts: dict[int, RunInfo]) -> list[int]:
        stale: list[int] = []
        with session_scope(self._engine) as session:
            self._lock(session)
            for position, info in starts.items():
                member = self._members[position]
                if not member.live:
                    continue
                stacked = info.training_path == "stacked"
                try:
                    record_run_start(
                        session=session,
                        run_id=member.claimed.run_id,
                        attempt=member.claimed.attempt,
                        device=info.device,
                        init_scheme=info.init_scheme,
                        parameter_count=info.parameter_count,
                        activation_placement=info.activation_placement,
                        training_path=info.training_path,
                        time_gradients=info.time_gradients,
                        stack_id=self._stack_id if stacked else None,
                        stack_size=len(self._members) if stacked else None,
                        # The engine's own reason where it trained a member alone after all (no stacked form).
                        stacking_reason=self._reason if stacked else info.stacking_reason or self._reason,
                    )
                except StaleAttemptError:
                    stale.append(position)
        return stale

    def on_epoch(self, reports: list[tuple[int, EpochReport]]) -> list[bool]:
        """Write the epoch of every live member in one transaction; False for members that must stop."""
        self.flush_starts()
        live = [(position, report) for position, report in reports if self._members[position].live]
        stale: list[int] = []
        cancel = False
        if live:
            epoch = live[0][1].epoch
            stale, cancel = with_database_retry(
                lambda: self._write_epoch(live),
                what=f"experiment {self._experiment_id}: writing epoch {epoch} of a stack",
                seconds=self._retry_seconds,
            )
        for position in stale:
            self._members[position].stale = True
            claimed = self._members[position].claimed
            logger.warning(
                "run %s: attempt %d was taken over by a newer attempt; stopping", claimed.run_id, claimed.attempt
            )
        for position, report in live:
            if position not in stale and report.diverged:
                self._members[position].recorded = RunStatus.diverged
        return [self._members[position].live and not cancel for position, _ in reports]

    def _write_epoch(self, live: list[tuple[int, EpochReport]]) -> tuple[list[int], bool]:
        stale: list[int] = []
        fenced: list[tuple[int, EpochReport]] = []
        with session_scope(self._engine) as session:
            self._lock(session)
            # The runs' fence first (progress and heartbeat, each with its own attempt, in one statement): a member
            # taken over writes nothing, and the others' rows stay locked for this transaction.
            taken_over = set(
                record_epoch_progress_of_runs(
                    session=session,
                    runs=[
                        (self._members[position].claimed.run_id, self._members[position].claimed.attempt)
                        for position, _ in live
                    ],
                    epochs_completed=live[0][1].epoch,
                )
            )
            for position, report in live:
                if self._members[position].claimed.run_id in taken_over:
                    stale.append(position)
                else:
                    fenced.append((position, report))
            upsert_epoch_metrics_of_runs(
                session=session,
                writes=[
                    (self._members[position].claimed.run_id, self._members[position].claimed.attempt, report)
                    for position, report in fenced
                ],
            )
            for position, report in fenced:
                if report.diverged:
                    claimed = self._members[position].claimed
                    finish_run(
                        session=session,
                        run_id=claimed.run_id,
                        attempt=claimed.attempt,
                        status=RunStatus.diverged,
                        epochs_completed=report.epoch,
                        diverged_epoch=report.epoch,
                        training_seconds=recorded_training_seconds(session=session, run_id=claimed.run_id),
                    )
            if any(report.diverged for _, report in fenced):
                # A run ended; otherwise every run is still running and the experiment's status stands.
                refresh_experiment_status(session=session, experiment_id=self._experiment_id)
            cancel = cancel_requested(session=session, experiment_id=self._experiment_id)
        return stale, cancel

    def finish(
        self,
        ends: dict[int, tuple[RunStatus, dict[str, Any]]],
        robustness: Mapping[int, Sequence[RobustnessPoint]] | None = None,
    ) -> list[int]:
        """Record the ends of members (position -> status, finish_run fields) in one transaction, with the robustness
        rows of those that have them; returns those stale."""
        if not ends:
            return []
        statuses = sorted({status.value for status, _ in ends.values()})
        points = robustness or {}
        return with_database_retry(
            lambda: self._write_ends(ends, points),
            what=f"experiment {self._experiment_id}: recording ends ({', '.join(statuses)})",
            seconds=self._retry_seconds,
        )

    def _write_ends(
        self, ends: dict[int, tuple[RunStatus, dict[str, Any]]], robustness: Mapping[int, Sequence[RobustnessPoint]]
    ) -> list[int]:
        stale: list[int] = []
        with session_scope(self._engine) as session:
            self._lock(session)
            for position, (status, fields) in ends.items():
                claimed = self._members[position].claimed
                try:
                    finish_run(session=session, run_id=claimed.run_id, attempt=claimed.attempt, status=status, **fields)
                except StaleAttemptError:
                    stale.append(position)
                    continue
                if robustness.get(position):
                    replace_robustness(
                        session=session,
                        run_id=claimed.run_id,
                        attempt=claimed.attempt,
                        points=robustness[position],
                    )
            refresh_experiment_status(session=session, experiment_id=self._experiment_id)
        return stale


def _claim_leftovers(
    *, engine: Engine, run_id: uuid.UUID, task_id: str, worker_host: str, settings: Settings, exclude: set[uuid.UUID]
) -> list[tuple[ClaimedRun, bool]]:
    """Claim again the runs an earlier delivery of this task left running; (claim, ended) as ``claim_or_end`` gives."""
    with session_scope(engine) as session:
        experiment_id = experiment_of_run(session=session, run_id=run_id)
        if experiment_id is None:
            return []
        leftovers = runs_left_by_task(session=session, experiment_id=experiment_id, task_id=task_id, exclude=exclude)
    claims: list[tuple[ClaimedRun, bool]] = []
    for leftover in leftovers:
        claimed, ended = claim_or_end(
            engine=engine, run_id=leftover, worker_host=worker_host, task_id=task_id, settings=settings
        )
        if claimed is not None:
            claims.append((claimed, ended))
    if claims:
        logger.info("task %s: took back %d run(s) an earlier delivery of it left running", task_id, len(claims))
    return claims


def _claim_companions(
    *,
    engine: Engine,
    group: list[ClaimedRun],
    plan: StackPlan,
    worker_host: str,
    task_id: str | None,
    settings: Settings,
) -> list[ClaimedRun]:
    """Claim queued runs of the group's experiment until the group has the chunk size; one transaction.

    The runs come from the first run's cell and the cells that differ from it only in ``PER_MEMBER_PATHS``
    (``stacking_cells``): they share one architecture and optimiser, and each member gets its own cell's spec.
    """
    first = group[0]
    # Read apart from the claim's transaction: runs are only ever added, so a count read a moment early can only give
    # a smaller chunk; a group that is full already (a one-run experiment) takes no write lock at all.
    with session_scope(engine) as session:
        runs = run_count(session=session, experiment_id=first.experiment_id)
    wanted = plan.chunk_size(settings=settings, experiment_runs=runs) - len(group)
    if wanted <= 0:
        return []
    with session_scope(engine) as session:
        lock_experiment_of_run(session=session, run_id=first.run_id)
        if cancel_requested(session=session, experiment_id=first.experiment_id):
            return []
        candidates = queued_runs_to_stack(
            session=session,
            experiment_id=first.experiment_id,
            queue=first.queue,
            attempt_limit=max_attempts(settings),
            limit=wanted,
            cell_indices=stacking_cells(first.spec, first.cell_index),
        )
        # One statement: the other worker processes wait for this transaction before their own claims.
        claims = claim_queued_runs(session=session, run_ids=candidates, worker_host=worker_host, task_id=task_id)
        if claims:
            # The experiment is running already (its first run is claimed, in this group): its status stands, but
            # cached results show the runs' statuses.
            bump_results_version(session=session, experiment_id=first.experiment_id)
    return claims


def _train(*, members: list[_Member], plan: StackPlan, writer: _StackWriter, settings: Settings) -> list[ArmOutcome]:
    from worker.training.stacked import train_stacked

    configure_torch(settings)
    return train_stacked(
        plan.spec,
        members=[(member.claimed.activation_index, member.claimed.seed) for member in members],
        member_specs=[run_spec(member.claimed.spec, member.claimed.cell_levels) for member in members],
        device=plan.device,
        on_start=writer.on_start,
        on_epoch=writer.on_epoch,
        checkpoint_paths=[member.checkpoint for member in members],
        checkpoint_interval=settings.checkpoint_interval_seconds,
    )


def _outcomes(members: list[_Member], ended: dict[int, RunStatus]) -> list[RunOutcome]:
    """One outcome per member: the status this delivery recorded, None for a member taken over."""
    outcomes = []
    for position, member in enumerate(members):
        claimed = member.claimed
        status = member.recorded or ended.get(position)
        if status is not None:
            drop_checkpoint_after(status, member.checkpoint)
        outcomes.append(RunOutcome(claimed.run_id, status, claimed.attempt))
    return outcomes


def _end_live(*, members: list[_Member], writer: _StackWriter, status: RunStatus, error: str) -> list[RunOutcome]:
    """Record a failure-like end on every member still training (time limit, a deterministic error)."""
    positions = [position for position, member in enumerate(members) if member.live]
    stale = set(writer.finish({position: (status, {"error": error}) for position in positions}))
    ended = {position: status for position in positions if position not in stale}
    return _outcomes(members, ended)


def train_claimed_stack(
    *, group: list[ClaimedRun], plan: StackPlan, engine: Engine, settings: Settings
) -> list[RunOutcome]:
    """Train claimed runs of one experiment as one stack and record how each ended."""
    members = [
        _Member(claimed=claimed, checkpoint=checkpoint_path(run_id=claimed.run_id, settings=settings))
        for claimed in group
    ]
    writer = _StackWriter(
        engine=engine, members=members, retry_seconds=settings.database_retry_seconds, reason=stack_reason(plan, group)
    )
    logger.info(
        "experiment %s: training %d runs stacked (attempts %s)",
        group[0].experiment_id,
        len(group),
        ", ".join(f"{claimed.run_id}#{claimed.attempt}" for claimed in group),
    )
    try:
        with StackHeartbeat(engine=engine, members=members, interval=settings.run_heartbeat_seconds):
            results = _train(members=members, plan=plan, writer=writer, settings=settings)
    except Exception as error:
        # The time limit and deterministic errors end every live member; a shutdown or a transient error is raised,
        # and the task, redelivered or retried under the same id, takes its runs back from their checkpoints.
        subject = f"experiment {group[0].experiment_id}: a stack of {len(group)} runs"
        status, message = end_after_error(error, settings=settings, subject=subject, log=logger)
        return _end_live(members=members, writer=writer, status=status, error=message)
    ends: dict[int, tuple[RunStatus, dict[str, Any]]] = {}
    for position, (member, result) in enumerate(zip(members, results, strict=True)):
        if not member.live:
            continue
        ends[position] = (
            status_of_outcome(result.status),
            {
                "epochs_completed": result.epochs_completed,
                "diverged_epoch": result.diverged_epoch,
                "training_seconds": result.training_seconds,
            },
        )
    robustness = {position: results[position].robustness for position in ends}
    stale = set(writer.finish(ends, robustness))
    ended = {position: status for position, (status, _) in ends.items() if position not in stale}
    outcomes = _outcomes(members, ended)
    logger.info(
        "experiment %s: stack of %d runs ended: %s",
        group[0].experiment_id,
        len(group),
        ", ".join(outcome.status.value if outcome.status else "taken over" for outcome in outcomes),
    )
    return outcomes


def _train_one_by_one(
    *, group: list[ClaimedRun], worker_host: str, engine: Engine, settings: Settings, reason: str
) -> list[RunOutcome]:
    """The ordinary path for each claimed run (``reason``: why alone); after a time-out the rest end timed out too."""
    outcomes: list[RunOutcome] = []
    for index, claimed in enumerate(group):
        with log_context(run_id=claimed.run_id):
            outcome = execute_claimed(
                claimed=claimed, worker_host=worker_host, engine=engine, settings=settings, stacking_reason=reason
            )
        outcomes.append(outcome)
        if outcome.status == RunStatus.timed_out and index + 1 < len(group):
            members = [
                _Member(claimed=rest, checkpoint=checkpoint_path(run_id=rest.run_id, settings=settings))
                for rest in group[index + 1 :]
            ]
            writer = _StackWriter(engine=engine, members=members, retry_seconds=settings.database_retry_seconds)
            message = not_started_message(settings)
            outcomes.extend(_end_live(members=members, writer=writer, status=RunStatus.timed_out, error=message))
            break
    return outcomes


def execute_run_stacked(
    *,
    run_id: uuid.UUID,
    worker_host: str,
    task_id: str | None = None,
    engine: Engine | None = None,
    settings: Settings | None = None,
) -> list[RunOutcome]:
    """Claim the run and, where its experiment stacks, a chunk of its queued siblings; train them; the outcomes.

    The run's own outcome comes first (status None when it was not ours), then those of the other
    runs this delivery claimed. Transient errors propagate (the task retries and takes its runs back).
    """
    settings = settings or get_settings()
    engine = engine or get_engine()
    outcomes: list[RunOutcome] = []
    group: list[ClaimedRun] = []
    with log_context(run_id=run_id):
        claimed, ended = claim_or_end(
            engine=engine, run_id=run_id, worker_host=worker_host, task_id=task_id, settings=settings
        )
        claims: list[tuple[ClaimedRun, bool]] = [] if claimed is None else [(claimed, ended)]
        if claimed is None:
            outcomes.append(RunOutcome(run_id, None))
        if task_id is not None:
            claims += _claim_leftovers(
                engine=engine,
                run_id=run_id,
                task_id=task_id,
                worker_host=worker_host,
                settings=settings,
                exclude={run_id},
            )
        for claim, claim_ended in claims:
            if claim_ended:
                with log_context(run_id=claim.run_id, experiment_id=claim.experiment_id):
                    outcomes.append(end_before_training(claimed=claim, settings=settings, log=logger))
            else:
                group.append(claim)
        if not group:
            if claimed is None:
                logger.info("run %s: not claimed (finished, or running elsewhere)", run_id)
            return outcomes
    with log_context(run_id=group[0].run_id, experiment_id=group[0].experiment_id):
        plan, reason = plan_stack(claimed=group[0], settings=settings)
        if plan is not None and len(group) < plan.members_in_memory:
            companions = _claim_companions(
                engine=engine,
                group=group,
                plan=plan,
                worker_host=worker_host,
                task_id=task_id,
                settings=settings,
            )
            group += companions
            try:
                # Importing worker.maintenance builds the Celery app: only where a stack took runs.
                from worker.maintenance import discard_tasks_of_runs

                discard_tasks_of_runs(run_ids={claim.run_id for claim in companions}, settings=settings)
            except Exception:
                # Only a shortcut: a task left behind is delivered and skipped.
                logger.warning("could not discard the tasks of the runs stacked here", exc_info=True)
        if plan is None or len(group) == 1:
            alone = reason if plan is None else no_companions_reason(plan)
            return outcomes + _train_one_by_one(
                group=group, worker_host=worker_host, engine=engine, settings=settings, reason=alone
            )
        return outcomes + train_claimed_stack(group=group, plan=plan, engine=engine, settings=settings)


def execute_runs(
    *,
    run_ids: list[uuid.UUID],
    worker_host: str,
    task_id: str | None = None,
    engine: Engine | None = None,
    settings: Settings | None = None,
) -> BatchOutcome:
    """Execute a task's runs, each with the runs it stacks with; after a time-out the rest are returned unstarted."""
    batch = BatchOutcome()
    seen: set[uuid.UUID] = set()
    for index, run_id in enumerate(run_ids):
        if run_id in seen:
            # Trained already, stacked with an earlier run of this task.
            continue
        outcomes = execute_run_stacked(
            run_id=run_id, worker_host=worker_host, task_id=task_id, engine=engine, settings=settings
        )
        batch.outcomes.extend(outcome for outcome in outcomes if outcome.run_id not in seen)
        seen.update(outcome.run_id for outcome in outcomes)
        if any(outcome.status == RunStatus.timed_out for outcome in outcomes):
            batch.not_started = [rest for rest in run_ids[index + 1 :] if rest not in seen]
            break
    return batch
