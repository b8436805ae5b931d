"""The status response (GET /v1/experiments/{id}) serialised once, straight from lean rows.

The experiment is polled, so its view is built without ORM objects or a validation round-trip: the
experiment, run and seed-extension columns are read as plain rows (app.experiments.repository
``experiment_detail_rows``), the canonical spec is the JSON text it is stored as (it was validated when it
was stored, and is never parsed and re-validated here), and the body is encoded in one pass. It is the
content of ``ExperimentDetail`` (app.experiments.schemas), field for field and in its order; the test
tests/api/test_experiment_detail.py holds the two together.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.auth.schemas import Principal
from app.auth.service import owner_filter_for
from app.experiments import repository
from app.experiments.schemas import experiment_links
from app.experiments.service import counts_of_runs, progress_from_counts
from app.schemas import as_utc
from app.service_errors import NotFoundError


def _timestamp(value: datetime | None) -> str | None:
    """ISO 8601 in UTC as the response models write it (``Z``, microseconds only when there are any)."""
    moment = as_utc(value)
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


def experiment_detail_json(*, session: Session, experiment_id: uuid.UUID, viewer: Principal | None = None) -> bytes:
    """The ExperimentDetail of an experiment as JSON bytes; NotFoundError for an unknown or another owner's."""
    found = repository.experiment_detail_rows(
        session=session, experiment_id=experiment_id, owner_id=owner_filter_for(viewer)
    )
    if found is None:
        raise NotFoundError(f"experiment {experiment_id} not found")
    experiment, runs, extensions = found
    # The rows have the Run attributes counts_of_runs reads (status, epochs_completed).
    counts = counts_of_runs(runs)
    body: dict[str, Any] = {
        "id": str(experiment.id),
        "name": experiment.name,
        "status": str(experiment.status),
        "spec_hash": experiment.spec_hash,
        "device": experiment.device,
        "queue": experiment.queue,
        "created_at": _timestamp(experiment.created_at),
        "started_at": _timestamp(experiment.started_at),
        "finished_at": _timestamp(experiment.finished_at),
        "cancel_requested_at": _timestamp(experiment.cancel_requested_at),
        "progress": progress_from_counts(counts=counts, total_epochs=experiment.total_epochs).model_dump(mode="json"),
        "links": experiment_links(experiment.id).model_dump(mode="json"),
        "spec_version": experiment.spec_version,
        "error": experiment.error,
        "spec": None,
        "runs": [
            {
                "id": str(run.id),
                "activation": run.activation_label,
                "activation_name": run.activation_name,
                "seed": run.seed,
                "cell": run.cell_label,
                "cell_levels": run.cell_levels,
                "status": str(run.status),
                "attempt": run.attempt,
                "epochs_completed": run.epochs_completed,
                "error": run.error,
                "seed_extension_id": str(run.seed_extension_id) if run.seed_extension_id is not None else None,
            }
            for run in runs
        ],
        "seed_extensions": [
            {"id": str(extension.id), "seeds": list(extension.seeds), "created_at": _timestamp(extension.created_at)}
            for extension in extensions
        ],
    }
    encoded = json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    # The spec's JSON text as stored, spliced in whole: "spec":null is the only null that key can hold.
    encoded = encoded.replace('"spec":null', '"spec":' + experiment.spec_json, 1)
    return encoded.encode()


def experiment_detail_bytes(
    session_factory: sessionmaker[Session], experiment_id: uuid.UUID, viewer: Principal | None = None
) -> bytes:
    """experiment_detail_json on a session of its own, opened and closed here."""
    with session_factory() as session:
        return experiment_detail_json(session=session, experiment_id=experiment_id, viewer=viewer)
