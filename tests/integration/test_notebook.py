"""examples/classic_five.ipynb executed with nbclient on a real kernel against a real embedded service."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.integration.test_embedded import EmbeddedService, embedded

pytestmark = pytest.mark.integration

__all__ = ["embedded"]  # the embedded service fixture of test_embedded.py, used as it is

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "classic_five.ipynb"
CLASSIC_FIVE = ("sigmoid", "tanh", "relu", "leaky_relu", "elu")
# A hang guard per cell (the wait cell trains 15 small runs), not a timing margin.
CELL_GUARD_SECONDS = 600


def _text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        parts.append(output.get("data", {}).get("text/plain", ""))
        parts.append(output.get("data", {}).get("text/html", ""))
    return "".join(parts)


def test_the_notebook_submits_the_classic_five_waits_and_draws_the_comparison(
    embedded: EmbeddedService, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    embedded.start()
    with embedded.client() as api:
        key = api.headers["Authorization"].removeprefix("Bearer ")
    # The kernel inherits this environment: the client reads the service and key as a user's shell gives them.
    monkeypatch.setenv("ACTLAB_URL", embedded.url)
    monkeypatch.setenv("ACTLAB_API_KEY", key)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend, as in Jupyter
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=CELL_GUARD_SECONDS, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    errors = [output for cell in code for output in cell.get("outputs", []) if output.get("output_type") == "error"]
    assert not errors, errors
    by_source = {cell.source.splitlines()[0]: cell for cell in code}
    waited = next(cell for source, cell in by_source.items() if source.startswith("spec = {"))
    assert "'succeeded'" in _text(waited)
    results = next(cell for source, cell in by_source.items() if source.startswith("results ="))
    assert all(name in _text(results) for name in CLASSIC_FIVE), _text(results)
    images = [output for cell in code for output in cell.get("outputs", []) if "image/png" in output.get("data", {})]
    # The notebook's own matplotlib figure and the service's learning-curves plot, both inline.
    assert len(images) >= 2
    assert os.environ["ACTLAB_URL"] in _text(code[-1])
