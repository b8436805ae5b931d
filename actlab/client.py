"""The Python client of an Activation Lab service: ``Client`` and the ``Experiment`` it hands out.

    from actlab import Client

    client = Client()  # $ACTLAB_URL / $ACTLAB_API_KEY / the key `actlab serve` saved, as the CLI
    experiment = client.submit("spec.json")
    experiment.wait()  # a progress bar (tqdm.auto: a widget in Jupyter, text elsewhere)
    experiment.results()  # a pandas DataFrame

Tables come as pandas DataFrames (Parquet on the wire where the server offers it, JSON otherwise);
errors are the ``ClientError`` family of actlab/errors.py with the server's own message. The client
never checks a spec: the server does, and a 422 comes back as ``SpecError`` as it was sent.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from actlab.connection import resolve_api_key, resolve_url
from actlab.events import EVENTS_STALL_SECONDS, RECONNECT_ATTEMPTS, follow_with_bar
from actlab.http import REQUEST_TIMEOUT_SECONDS, Closing, ServiceClient

if TYPE_CHECKING:
    import pandas as pd

    from actlab.mlflow import MirrorSummary

POLL_SECONDS = 2.0
IMAGE_MEDIA_TYPES = {"png": "image/png", "svg": "image/svg+xml"}

SpecSource = Mapping[str, Any] | str | os.PathLike[str]


class Plot:
    """An image of the service (PNG or SVG bytes) that Jupyter displays inline."""

    def __init__(self, data: bytes, image_format: str) -> None:
        self.data = data
        self.format = image_format

    def __bytes__(self) -> bytes:
        return self.data

    def _repr_png_(self) -> bytes | None:
        return self.data if self.format == "png" else None

    def _repr_svg_(self) -> str | None:
        return self.data.decode("utf-8") if self.format == "svg" else None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the image to ``path``; returns the path."""
        target = Path(path)
        target.write_bytes(self.data)
        return target


def _spec_request(spec_or_path: SpecSource) -> dict[str, Any]:
    """The body options of POST /v1/experiments: a mapping as JSON, a file's or string's text as it is."""
    if isinstance(spec_or_path, Mapping):
        return {"json": dict(spec_or_path)}
    text = str(spec_or_path)
    if isinstance(spec_or_path, os.PathLike) or not text.lstrip().startswith(("{", "[")):
        # A path: read the file (the server judges its content; a missing file is an OSError here).
        text = Path(text).expanduser().read_text(encoding="utf-8")
    return {"content": text.encode("utf-8"), "headers": {"Content-Type": "application/json"}}


def _query(options: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Query parameters from keyword options: None left out, lists repeated, booleans as true/false."""
    parameters: list[tuple[str, Any]] = []
    for name, value in options.items():
        values = value if isinstance(value, list | tuple) else [value]
        for item in values:
            if item is not None:
                parameters.append((name, str(item).lower() if isinstance(item, bool) else item))
    return parameters


class Client(Closing):
    """A connection to one Activation Lab service; use it as a context manager or call ``close()``."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = REQUEST_TIMEOUT_SECONDS,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = resolve_url(url)
        self.http = ServiceClient(
            self.url, api_key=resolve_api_key(api_key, self.url), transport=transport, timeout=timeout
        )

    def submit(self, spec_or_path: SpecSource, idempotency_key: str | None = None) -> Experiment:
        """Submit a spec (a dict, a JSON string, or the path of a .json file); SpecError names each bad field."""
        options = _spec_request(spec_or_path)
        if idempotency_key is not None:
            options["headers"] = {**options.get("headers", {}), "Idempotency-Key": idempotency_key}
        detail = self.http.request("POST", "/v1/experiments", **options).json()
        return Experiment(self, str(detail["id"]), detail)

    def experiment(self, experiment_id: str) -> Experiment:
        """The experiment with this id (NotFound when this key sees none)."""
        detail = self.http.get_json(f"/v1/experiments/{experiment_id}")
        return Experiment(self, str(detail["id"]), detail)

    def experiments(
        self,
        status: str | Sequence[str] | None = None,
        name: str | None = None,
        *,
        dataset: str | None = None,
        page_size: int | None = None,
    ) -> Iterator[Experiment]:
        """The experiments, newest first, filtered by status(es), a name part and a dataset (the spec's or a level
        of a dataset.name factor); pages are fetched as needed."""
        statuses = [status] if isinstance(status, str) else list(status or [])
        offset: int | None = 0
        while offset is not None:
            page = self.http.get_json(
                "/v1/experiments",
                params=_query(
                    {"status": statuses, "name": name, "dataset": dataset, "limit": page_size, "offset": offset}
                ),
            )
            for item in page["items"]:
                yield Experiment(self, str(item["id"]), item)
            offset = page.get("next_offset")

    def close(self) -> None:
        """Close the connections."""
        self.http.close()


class Experiment:
    """One experiment of the service; ``data`` is the state last read (from submit, status() or wait())."""

    def __init__(self, client: Client, experiment_id: str, data: dict[str, Any] | None = None) -> None:
        self.client = client
        self.id = experiment_id
        self.data: dict[str, Any] = data or {}

    def __repr__(self) -> str:
        return f"Experiment(id={self.id!r}, status={self.data.get('status')!r})"

    @property
    def path(self) -> str:
        """Its API path."""
        return f"/v1/experiments/{self.id}"

    @property
    def report_url(self) -> str:
        """The address of its HTML report."""
        return f"{self.client.url}/experiments/{self.id}"

    def _remember(self, detail: dict[str, Any]) -> dict[str, Any]:
        self.data = detail
        return detail

    def status(self) -> dict[str, Any]:
        """Its state now: status, progress, runs, errors (GET /v1/experiments/ID)."""
        return self._remember(self.client.http.get_json(self.path))

    def wait(
        self,
        progress: bool = True,
        timeout: float | None = None,
        *,
        poll_seconds: float = POLL_SECONDS,
        stall_seconds: float = EVENTS_STALL_SECONDS,
        reconnect_attempts: int = RECONNECT_ATTEMPTS,
    ) -> dict[str, Any]:
        """Follow its server-sent events until it ends (a tqdm.auto bar with ``progress``); its final state.

        WaitTimeoutError when ``timeout`` seconds ran out first; the experiment goes on.
        """
        make_bar = None
        if progress:
            from tqdm.auto import tqdm

            def make_bar(total: int) -> Any:
                return tqdm(total=total, unit="epoch", leave=True)

        return self._remember(
            follow_with_bar(
                self.client.http,
                self.id,
                make_bar=make_bar,
                poll_seconds=poll_seconds,
                timeout_seconds=timeout,
                reconnect_attempts=reconnect_attempts,
                stall_seconds=stall_seconds,
            )
        )

    def cancel(self) -> dict[str, Any]:
        """Cancel it: queued runs never start, running runs stop at their next epoch; its state after."""
        return self._remember(self.client.http.request("POST", f"{self.path}/cancel").json())

    def add_seeds(self, seeds: Sequence[int]) -> dict[str, Any]:
        """Add seeds (new runs of every activation); the server's answer: the seeds, the new runs, the experiment."""
        answer: dict[str, Any] = self.client.http.request(
            "POST", f"{self.path}/seeds", json={"seeds": list(seeds)}
        ).json()
        if isinstance(answer.get("experiment"), dict):
            self._remember(answer["experiment"])
        return answer

    def retry(self) -> dict[str, Any]:
        """Queue its failed and timed-out runs again; the server's answer: the requeued runs and the experiment."""
        answer: dict[str, Any] = self.client.http.request("POST", f"{self.path}/retry").json()
        if isinstance(answer.get("experiment"), dict):
            self._remember(answer["experiment"])
        return answer

    def _json_table(self, name: str, options: Mapping[str, Any]) -> pd.DataFrame:
        import pandas as pd

        rows = self.client.http.get_json(f"{self.path}/{name}", params=_query({**options, "format": "json"}))
        return pd.DataFrame(rows)

    def _parquet_table(self, name: str, options: Mapping[str, Any]) -> pd.DataFrame:
        import pandas as pd

        response = self.client.http.request(
            "GET", f"{self.path}/{name}", params=_query({**options, "format": "parquet"})
        )
        return pd.read_parquet(io.BytesIO(response.content))

    def metrics(self, **filters: Any) -> pd.DataFrame:
        """Per-epoch metrics, one row per (run, epoch); ``filters`` are the endpoint's query parameters."""
        return self._json_table("metrics", filters)

    def layer_metrics(self, **filters: Any) -> pd.DataFrame:
        """Per-layer metrics, one row per (run, epoch, layer); ``filters`` are the endpoint's query parameters."""
        return self._json_table("layer-metrics", filters)

    def robustness(self, **filters: Any) -> pd.DataFrame:
        """Robustness rows of the trained runs (spec version 2's evaluation block), one per (run, kind, strength):
        test accuracy under input noise, FGSM or PGD; ``filters`` are the endpoint's query parameters (activation,
        seed, run_id, kind, ``**{"factor.<path>": level}``). Parquet on the wire, so the types come back typed."""
        return self._parquet_table("robustness", filters)

    def results(self, view: str = "summary", **options: Any) -> pd.DataFrame:
        """The cross-seed comparison (``view`` summary, pairs, runs, ranking, effects or robustness; options as the
        API's)."""
        return self._parquet_table("results", {"view": view, **options})

    def diagnostics(self) -> pd.DataFrame:
        """Gradient-flow diagnostics per activation (per cell and activation with factors)."""
        return self._parquet_table("diagnostics", {})

    def recommendation(self, **options: Any) -> dict[str, Any]:
        """The plain-language recommendation: sentences, best choices, what failed to train."""
        answer: dict[str, Any] = self.client.http.get_json(f"{self.path}/recommendation", params=_query(options))
        return answer

    def plot(self, kind: str, format: str = "png", **options: Any) -> Plot:
        """One plot as PNG or SVG bytes (``bytes(plot)``), shown inline by Jupyter."""
        response = self.client.http.request("GET", f"{self.path}/plots/{kind}.{format}", params=_query(options))
        return Plot(response.content, format)

    def to_mlflow(
        self, tracking_uri: str | None = None, experiment_name: str | None = None, *, artifacts: bool = True
    ) -> MirrorSummary:
        """Mirror it into MLflow (runs, params, per-epoch metrics, artifacts); again later, append what is new.

        Needs the MLflow client (``pip install 'activation-lab[mlflow]'``); see actlab/mlflow.py.
        """
        from actlab.mlflow import mirror_to_mlflow

        return mirror_to_mlflow(self, tracking_uri=tracking_uri, experiment_name=experiment_name, artifacts=artifacts)


__all__ = ["Client", "Experiment", "Plot"]
