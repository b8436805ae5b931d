"""A command whose reader goes away (`actlab status ID | head`) stops quietly: no traceback (issue 15 item 6)."""

from __future__ import annotations

import os
import subprocess
import sys

# The real entry point, app.cli.main, with a parser whose one command prints more than a pipe buffer holds.
LONG_OUTPUT_COMMAND = """
import argparse, sys
import app.cli

def build_parser():
    parser = argparse.ArgumentParser(prog="actlab")
    parser.set_defaults(handler=lambda _arguments: print("a row of a long table\\n" * 100_000))
    return parser

app.cli.build_parser = build_parser
sys.exit(app.cli.main([]))
"""


def test_output_into_a_closed_pipe_ends_without_a_traceback() -> None:
    reading, writing = os.pipe()
    os.close(reading)  # the reader (head) has already gone
    try:
        finished = subprocess.run(
            [sys.executable, "-c", LONG_OUTPUT_COMMAND], stdout=writing, stderr=subprocess.PIPE, text=True, check=False
        )
    finally:
        os.close(writing)
    assert finished.stderr == ""
    assert finished.returncode == 1
