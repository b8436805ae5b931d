"""``actlab maintain``: one maintenance pass now, against the configured database and broker.

Workers run the same pass every ACTLAB_MAINTENANCE_INTERVAL_SECONDS; this command is for an
operator (or a cron job) when no worker runs, or to repair at once after an incident: it
requeues runs whose heartbeat went stale (or fails them after their last attempt) and sends
a task for every queued run that has none (see docs/reliability.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    """Add the maintain subcommand."""
    parser = subparsers.add_parser(
        "maintain",
        help="requeue runs whose worker went silent and re-send queued runs the broker lost (one pass)",
        description="Run one maintenance pass on the database of DATABASE_URL and the broker of BROKER_URL: runs "
        "whose heartbeat is older than ACTLAB_RUN_STALE_SECONDS go back to the queue (or fail after their last "
        "attempt), and queued runs without a task in the broker get one.",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for a pass another process is running (default 30)",
    )
    parser.add_argument("--json", action="store_true", help="print the run ids as JSON instead of a summary")
    parser.set_defaults(handler=maintain)


def maintain(arguments: argparse.Namespace) -> int:
    """Run one pass and print what it did; 1 when the database or broker could not be used or the lock was busy."""
    from sqlalchemy.exc import SQLAlchemyError

    from worker.maintenance import run_maintenance

    try:
        report = run_maintenance(wait_seconds=max(0.0, arguments.wait))
    except SQLAlchemyError as error:
        first_line = str(error).splitlines()[0] if str(error) else ""
        print(
            f"error: the database did not answer ({type(error).__name__}: {first_line}); "
            "check DATABASE_URL and run `actlab migrate` first",
            file=sys.stderr,
        )
        return 1
    if arguments.json:
        print(
            json.dumps(
                {
                    "skipped": report.skipped,
                    "requeued_stale": [str(run_id) for run_id in report.requeued_stale],
                    "failed_stale": [str(run_id) for run_id in report.failed_stale],
                    "enqueued": [str(run_id) for run_id in report.enqueued],
                }
            )
        )
    else:
        print(f"maintenance: {report.summary()}")
    return 1 if report.skipped else 0
