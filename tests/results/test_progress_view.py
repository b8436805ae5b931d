"""Honest progress on the pages: an experiment that ended early says where it stopped (issue 15 item 7)."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.experiments.schemas import Progress
from app.models import RunStatus
from app.reports.progress import progress_view
from tests.results.conftest import insert_experiment


def _progress(*, trained: int, planned: int, fraction: float, finished: int, total: int) -> Progress:
    return Progress(
        finished_epochs=trained,
        total_epochs=planned,
        fraction=fraction,
        runs_total=total,
        runs_finished=finished,
        runs_by_status={RunStatus.cancelled: finished} if finished else {},
    )


def test_a_cancelled_experiment_shows_the_epochs_it_trained_not_a_full_bar() -> None:
    view = progress_view(
        progress=_progress(trained=99, planned=180, fraction=1.0, finished=18, total=18), status="cancelled"
    )
    assert view.percent == 55
    assert view.epochs == "cancelled at 99 of 180 epochs"
    assert view.text == "cancelled at 99 of 180 epochs, 18 of 18 runs finished"


def test_a_running_experiment_keeps_the_settled_fraction_and_a_complete_one_reads_plainly() -> None:
    running = progress_view(
        progress=_progress(trained=40, planned=180, fraction=0.3, finished=3, total=18), status="running"
    )
    assert (running.percent, running.epochs) == (30, "40 of 180 epochs")
    done = progress_view(
        progress=_progress(trained=180, planned=180, fraction=1.0, finished=18, total=18), status="succeeded"
    )
    assert (done.percent, done.epochs) == (100, "180 of 180 epochs")
    failed = progress_view(
        progress=_progress(trained=12, planned=180, fraction=1.0, finished=18, total=18), status="failed"
    )
    assert (failed.percent, failed.epochs) == (7, "ended at 12 of 180 epochs")


def test_the_report_and_the_dashboard_say_cancelled_at_and_the_api_keeps_its_fraction(
    client: TestClient, db: Session
) -> None:
    experiment_id = insert_experiment(db, status="cancelled")
    page = client.get(f"/experiments/{experiment_id}").text
    # 4 activations x 6 seeds x 4 epochs planned (24 runs); sigmoid's diverged, failed and cancelled seeds trained 2 of 12.
    assert '<span id="progress-text">cancelled at 86 of 96 epochs, 24 of 24 runs finished</span>' in page
    bar = re.search(r'<progress id="progress" max="100" value="(\d+)"', page)
    assert bar is not None and bar.group(1) == "90"
    dashboard = client.get("/").text
    assert "cancelled at 86 of 96 epochs" in dashboard
    progress = client.get(f"/v1/experiments/{experiment_id}").json()["progress"]
    assert progress["fraction"] == 1.0
    assert (progress["finished_epochs"], progress["total_epochs"]) == (86, 96)
