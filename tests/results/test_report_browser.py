"""The report of a finished experiment in a real headless Chromium, served by a real uvicorn.

Chromium comes from the Debian package (``apt-get install -y chromium``); without it the test is
skipped with that hint. The page must work without JavaScript, so the checks are JavaScript-free:
the DOM Chromium renders holds the results table and one <img> per plot (the static image each
interactive plot replaces, tests/results/test_report_interactive.py), the server's access log
shows Chromium fetching every image successfully, and the screenshot is not blank.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import matplotlib.image
import pytest
from sqlalchemy.orm import Session

from app.auth.service import create_api_key
from app.db import make_engine, session_factory
from app.migrate import upgrade_database
from app.reports.service import PLOT_CAPTIONS
from tests.fixtures import uvicorn_server
from tests.results.conftest import insert_experiment

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium: apt-get install -y chromium")
BROWSER_SECONDS = 120


@pytest.fixture(params=["auth-off", "api-key"])
def served_report(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, uuid.UUID, Path]]:
    """A uvicorn process serving a SQLite database with one finished experiment; yields (page url base, id, log).

    With "api-key" the server requires keys, and the browser sends one as the Basic password in the URL,
    answering the server's Basic challenge the way a person would in the browser's login prompt.
    """
    with_key = request.param == "api-key"
    database_url = f"sqlite:///{tmp_path / 'browser.db'}"
    upgrade_database(database_url)
    engine = make_engine(database_url)
    with session_factory(engine)() as session:
        assert isinstance(session, Session)
        experiment_id = insert_experiment(session)
        key = create_api_key(session=session, name="browser", is_admin=True).key if with_key else None
    engine.dispose()
    log_path = tmp_path / "uvicorn.log"
    # The server listens on 127.0.0.1 only; the browser opens the report as the local admin.
    environment = {
        **os.environ,
        "DATABASE_URL": database_url,
        "BROKER_URL": "filesystem://",
        "ACTLAB_AUTH_REQUIRED": "true" if with_key else "false",
    }
    with uvicorn_server(environment=environment, log_path=log_path, options=("--workers", "1")) as url:
        if with_key:
            assert httpx.get(f"{url}/experiments/{experiment_id}").status_code == 401
            yield url.replace("http://", f"http://reader:{key}@"), experiment_id, log_path
        else:
            yield url, experiment_id, log_path


def _chromium(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    profile = tmp_path / f"profile-{uuid.uuid4().hex}"
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *arguments,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=BROWSER_SECONDS, check=False)


def test_report_renders_in_chromium_with_table_and_loaded_images(
    served_report: tuple[str, uuid.UUID, Path], tmp_path: Path
) -> None:
    url, experiment_id, log_path = served_report
    page = f"{url}/experiments/{experiment_id}"
    dumped = _chromium(tmp_path, "--virtual-time-budget=30000", "--dump-dom", page)
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = dumped.stdout
    table = re.search(r'<table id="results-table">(.*?)</table>', dom, re.DOTALL)
    assert table is not None, dom[:2000]
    rows = re.findall(r"<tr>(.*?)</tr>", table.group(1), re.DOTALL)
    assert len(rows) == 1 + 4
    assert any("sigmoid" in row and "worse" in row for row in rows)
    images = re.findall(r'<img [^>]*src="([^"]+)"', dom)
    assert len(images) == len(PLOT_CAPTIONS)
    assert "sigmoid failed to train" in dom

    screenshot = tmp_path / "report.png"
    shot = _chromium(tmp_path, "--window-size=1280,5000", f"--screenshot={screenshot}", page)
    assert shot.returncode == 0, shot.stderr[-2000:]
    pixels = matplotlib.image.imread(io.BytesIO(screenshot.read_bytes()), format="png")
    assert pixels.shape[0] >= 1000 and float(pixels[..., :3].std()) > 0.02

    access_log = log_path.read_text()
    for source in images:
        path = source.replace("&amp;", "&")
        fetched = [line for line in access_log.splitlines() if f'"GET {path} HTTP/1.1" 200' in line]
        assert fetched, f"Chromium never loaded {path}:\n{access_log[-3000:]}"
