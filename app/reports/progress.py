"""How the pages state an experiment's progress: the bar and its sentence, one home for the dashboard and the report."""

from __future__ import annotations

from dataclasses import dataclass

from app.experiments.schemas import Progress
from app.experiments.service import FINISHED_EXPERIMENT_STATUSES
from app.models import ExperimentStatus

_ENDED = frozenset(str(status) for status in FINISHED_EXPERIMENT_STATUSES)


@dataclass(frozen=True)
class ProgressView:
    """The bar's percent, the epochs it counts ("cancelled at 99 of 180 epochs") and the runs finished."""

    percent: int
    epochs: str
    runs: str = ""

    @property
    def text(self) -> str:
        """The sentence beside the bar on the report."""
        return f"{self.epochs}, {self.runs}" if self.runs else self.epochs


def progress_view(*, progress: Progress, status: str) -> ProgressView:
    """The bar shows settled epochs while the experiment runs and trained epochs once it ended.

    The API's `fraction` counts an early-ended run as settled, so a cancelled experiment reaches 1;
    the pages show what was trained instead: "cancelled at 99 of 180 epochs".
    """
    trained, planned = progress.finished_epochs, progress.total_epochs
    runs = f"{progress.runs_finished} of {progress.runs_total} runs finished"
    if status not in _ENDED:
        return ProgressView(percent=round(100 * progress.fraction), epochs=f"{trained} of {planned} epochs", runs=runs)
    percent = min(100, round(100 * trained / planned)) if planned else 0
    if planned and trained >= planned:
        return ProgressView(percent=percent, epochs=f"{trained} of {planned} epochs", runs=runs)
    verb = "cancelled" if status == ExperimentStatus.cancelled else "ended"
    return ProgressView(percent=percent, epochs=f"{verb} at {trained} of {planned} epochs", runs=runs)
