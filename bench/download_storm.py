"""Latency of a download storm against a running service (issue 14 item 1), as ratios to an idle probe.

The tests (tests/api/test_download_storm.py) assert outcomes only; this measures what they do not:
how fast a refused download is told to come back (503 with Retry-After), how long a completed one
takes, and how much a status probe slows down while the storm lasts, each as a multiple of the idle
probe's median so that numbers from different machines compare.

    python -m bench.download_storm --url http://127.0.0.1:8000 --key al_... --experiment ID [--clients 100]

Half the clients download /metrics, half /layer-metrics, alternating CSV and JSON; every third one
reads slowly (4 KiB at a time). Nothing is written; the experiment should have some thousand rows.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass

import httpx

PATHS = [("metrics", "csv"), ("layer-metrics", "json"), ("metrics", "json"), ("layer-metrics", "csv")]


@dataclass(frozen=True)
class Sample:
    status: int | str
    seconds: float


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def _probe(client: httpx.Client, path: str) -> Sample:
    started = time.perf_counter()
    status = client.get(path).status_code
    return Sample(status, time.perf_counter() - started)


def _download(base: str, headers: dict[str, str], path: str, output: str, *, slow: bool) -> Sample:
    started = time.perf_counter()
    try:
        with (
            httpx.Client(base_url=base, headers=headers, timeout=300) as client,
            client.stream("GET", path, params={"format": output}) as response,
        ):
            for _ in response.iter_bytes(4096 if slow else 65536):
                pass
            status: int | str = response.status_code
    except httpx.HTTPError as error:
        status = type(error).__name__
    return Sample(status, time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--idle-probes", type=int, default=20)
    arguments = parser.parse_args(argv)
    headers = {"Authorization": f"Bearer {arguments.key}"}
    status_path = f"/v1/experiments/{arguments.experiment}"

    with httpx.Client(base_url=arguments.url, headers=headers, timeout=60) as client:
        idle = [_probe(client, status_path).seconds for _ in range(arguments.idle_probes)]
    idle_median = statistics.median(idle)

    downloads: list[Sample] = []
    probes: list[Sample] = []
    start = threading.Barrier(arguments.clients + 1)
    done = threading.Event()

    def download(number: int) -> None:
        table, output = PATHS[number % len(PATHS)]
        start.wait()
        downloads.append(_download(arguments.url, headers, f"{status_path}/{table}", output, slow=number % 3 == 0))

    def probe() -> None:
        with httpx.Client(base_url=arguments.url, headers=headers, timeout=300) as client:
            start.wait()
            while not done.is_set():
                probes.append(_probe(client, status_path))

    threads = [threading.Thread(target=download, args=(number,)) for number in range(arguments.clients)]
    prober = threading.Thread(target=probe)
    for thread in [*threads, prober]:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    prober.join()

    def ratios(samples: list[Sample]) -> str:
        seconds = [sample.seconds for sample in samples]
        if not seconds:
            return "none"
        p50, p99 = _percentile(seconds, 0.5), _percentile(seconds, 0.99)
        return f"n={len(seconds)} p50 {p50 / idle_median:.1f}x p99 {p99 / idle_median:.1f}x idle probe"

    print(f"idle probe median {idle_median * 1000:.1f} ms over {len(idle)}")
    print(f"downloads by status: {dict(Counter(str(sample.status) for sample in downloads))}")
    print(f"refused (503/429): {ratios([s for s in downloads if s.status in (503, 429)])}")
    print(f"completed (200):   {ratios([s for s in downloads if s.status == 200])}")
    print(f"probes during the storm by status: {dict(Counter(str(sample.status) for sample in probes))}")
    print(f"probe latency during the storm: {ratios(probes)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
