"""Server-sent progress events: one per new epoch and per status change, ending when the experiment ends."""

from __future__ import annotations

import json
import uuid

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import EpochMetric, Experiment, Run
from app.results.events import experiment_events
from tests.results.conftest import insert_experiment


def _parse(stream: str) -> list[tuple[str, dict]]:
    events = []
    for block in stream.split("\n\n"):
        lines = [line for line in block.splitlines() if line and not line.startswith(":")]
        names = [line[len("event: ") :] for line in lines if line.startswith("event: ")]
        data = [line[len("data: ") :] for line in lines if line.startswith("data: ")]
        if names:
            events.append((names[0], json.loads(data[0])))
    return events


def test_a_finished_experiment_replays_its_epochs_and_ends(
    client: TestClient, finished_experiment: uuid.UUID, db: Session
) -> None:
    with client.stream("GET", f"/v1/experiments/{finished_experiment}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _parse("".join(response.iter_text()))
    stored = db.scalars(
        select(EpochMetric.id).join(Run, EpochMetric.run_id == Run.id).where(Run.experiment_id == finished_experiment)
    ).all()
    epochs = [data for name, data in events if name == "epoch"]
    assert len(epochs) == len(stored)
    assert {"run_id", "activation", "seed", "epoch", "test_accuracy", "epochs_finished", "epochs_total"} <= set(
        epochs[0]
    )
    run_statuses = [data for name, data in events if name == "status" and data["scope"] == "run"]
    assert len(run_statuses) == 24
    assert events[-2] == ("status", events[-2][1]) and events[-2][1]["scope"] == "experiment"
    assert events[-1][0] == "end" and events[-1][1]["status"] == "partial"


def test_a_running_experiment_streams_new_epochs_and_status_changes(app: FastAPI, db: Session) -> None:
    experiment_id = insert_experiment(db, status="running")
    run = db.scalars(select(Run).where(Run.experiment_id == experiment_id, Run.activation_label == "relu")).first()
    assert run is not None
    steps = iter(range(3))

    def advance(_seconds: float) -> None:
        # Stands in for the poll interval: a worker finishes an epoch, then the experiment ends.
        step = next(steps)
        with app.state.session_factory() as session:
            if step == 0:
                session.get(Run, run.id).status = "running"  # type: ignore[union-attr]
            elif step == 1:
                session.add(EpochMetric(run_id=run.id, epoch=4, test_accuracy=0.5, train_accuracy=0.5))
            else:
                session.get(Experiment, experiment_id).status = "succeeded"  # type: ignore[union-attr]
            session.commit()

    # The stream starts after epoch 4 of this run was deleted, so the first poll sees epochs 1 to 3 only.
    with app.state.session_factory() as session:
        session.query(EpochMetric).filter(EpochMetric.run_id == run.id, EpochMetric.epoch == 4).delete()
        session.get(Run, run.id).status = "queued"  # type: ignore[union-attr]
        session.commit()
    stream = experiment_events(
        session_factory=app.state.session_factory,
        experiment_id=experiment_id,
        poll_seconds=0.0,
        heartbeat_seconds=0.0,
        sleep=advance,
    )
    events = _parse("".join(stream))
    of_run = [(name, data) for name, data in events if data.get("run_id") == str(run.id)]
    assert [name for name, _ in of_run] == ["epoch", "epoch", "epoch", "status", "status", "epoch"]
    assert [data["epoch"] for name, data in of_run if name == "epoch"] == [1, 2, 3, 4]
    assert [data["status"] for name, data in of_run if name == "status"] == ["queued", "running"]
    experiment_statuses = [
        data["status"] for name, data in events if name == "status" and data["scope"] == "experiment"
    ]
    assert experiment_statuses == ["running", "succeeded"]
    assert events[-1][0] == "end"
