"""The ``actlab`` console script: one subcommand module per job.

Each module in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its
subcommand(s) and sets ``handler`` on the parser defaults. Modules import heavy
dependencies (torch, uvicorn, celery) inside their handlers so ``actlab --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

COMMAND_MODULES = (
    "app.cli.train",
    "app.cli.service",
    "app.cli.experiments",
    "app.cli.results",
    "app.cli.keys",
    "app.cli.maintain",
    "app.cli.interop",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available subcommand."""
    parser = argparse.ArgumentParser(prog="actlab", description="Activation Lab: compare activation functions.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = build_parser()
    try:
        try:
            arguments = parser.parse_args(argv)
            status = arguments.handler(arguments)
        finally:
            sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`actlab status ID | head`): stop without a traceback. As the Python docs advise
        # (signal module, "Note on SIGPIPE"), stdout now writes to devnull so the flush at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
