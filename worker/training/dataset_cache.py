"""The on-disk cache of datasets' source arrays, shared by every process that trains (``actlab train``, the workers).

Generating MNIST-1D takes seconds, and every fresh process (a worker's pool process, each ``actlab train``)
would otherwise generate it again. An entry holds a dataset's examples before the validation split and
standardisation (``train_x``, ``train_y``, ``test_x``, ``test_y``) as one uncompressed ``.npz`` file.

- Key: the dataset's name, all its resolved generation parameters, the version of the library that
  generates it and ``CACHE_FORMAT``; the key document is stored in the file and checked on every read,
  so a changed parameter, library or format never reads an old entry.
- Writes are atomic (a temporary file in the same folder, then ``os.replace``), so a reader sees a whole
  entry or none. Processes building the same entry at once take an exclusive ``flock`` on the entry's lock
  file: the first builds it, the others wait and read it.
- Past ``dataset_cache_max_mb`` the least recently used entries (by modification time, refreshed on each
  hit) are removed. An unreadable entry is rebuilt; a cache folder that cannot be written only costs the
  generation time, never a run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

CACHE_FORMAT = 1
ARRAY_NAMES = ("train_x", "train_y", "test_x", "test_y")
_KEY_ARRAY = "key"

Arrays = dict[str, npt.NDArray[Any]]

logger = logging.getLogger(__name__)


def key_document(name: str, parameters: Mapping[str, Any], generator: str) -> str:
    """The canonical text an entry is keyed by and stores: format, dataset, parameters and generator."""
    document = {"format": CACHE_FORMAT, "dataset": name, "params": dict(parameters), "generator": generator}
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


class DatasetCache:
    """One cache folder bounded to ``max_bytes``."""

    def __init__(self, folder: Path, *, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes

    def entry_path(self, document: str) -> Path:
        """The file of the entry keyed by ``document``."""
        name = json.loads(document)["dataset"]
        return self.folder / f"{name}-{hashlib.sha256(document.encode()).hexdigest()[:32]}.npz"

    @staticmethod
    def lock_path(entry: Path) -> Path:
        """The lock file that builders of ``entry`` hold (flock) while one of them builds it."""
        return entry.with_suffix(".lock")

    def load_or_build(self, document: str, build: Callable[[], Arrays]) -> Arrays:
        """The entry's arrays, read from disk, else built by ``build`` (once across processes) and stored."""
        path = self.entry_path(document)
        cached = self._read(path, document)
        if cached is not None:
            return cached
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            logger.warning("dataset cache %s cannot be created (%s); generating without it", self.folder, error)
            return build()
        with self._locked(path):
            cached = self._read(path, document)  # another process may have built it while this one waited
            if cached is not None:
                return cached
            arrays = build()
            self._write(path, document, arrays)
        self._prune(keep=path)
        return arrays

    def _read(self, path: Path, document: str) -> Arrays | None:
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                if str(stored[_KEY_ARRAY]) != document:
                    logger.warning("dataset cache entry %s holds another key; rebuilding it", path)
                    return None
                arrays = {name: np.array(stored[name]) for name in ARRAY_NAMES}
        except (OSError, ValueError, KeyError, EOFError) as error:
            logger.warning("dataset cache entry %s is unreadable (%s); rebuilding it", path, error)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # most recently used
        return arrays

    def _write(self, path: Path, document: str, arrays: Arrays) -> None:
        temporary: Path | None = None
        try:
            with tempfile.NamedTemporaryFile(
                dir=self.folder, prefix=f".{path.stem}.", suffix=".tmp", delete=False
            ) as handle:
                temporary = Path(handle.name)
                members: dict[str, Any] = {
                    _KEY_ARRAY: np.array(document),
                    **{name: arrays[name] for name in ARRAY_NAMES},
                }
                np.savez(handle, **members)
                handle.flush()
                os.fsync(handle.fileno())
            # mkstemp makes the file private; the CLI and the workers may run as different users.
            temporary.chmod(0o644)
            os.replace(temporary, path)
        except OSError as error:
            logger.warning("dataset cache entry %s could not be written (%s)", path, error)
            if temporary is not None:
                with contextlib.suppress(OSError):
                    temporary.unlink()

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): concurrent builders each build; the rename keeps entries whole
            yield
            return
        try:
            handle = open(self.lock_path(path), "a+b")  # noqa: SIM115 - held for the block below
        except OSError:
            yield
            return
        with handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _prune(self, *, keep: Path) -> None:
        """Remove the least recently used entries until the folder is within ``max_bytes`` (never ``keep``)."""
        entries = []
        for entry in self.folder.glob("*.npz"):
            with contextlib.suppress(OSError):
                status = entry.stat()
                entries.append((status.st_mtime, status.st_size, entry))
        total = sum(size for _, size, _ in entries)
        for _, size, entry in sorted(entries):
            if total <= self.max_bytes:
                break
            if entry == keep:
                continue
            with contextlib.suppress(OSError):
                entry.unlink()  # its lock file stays: another process may hold it
                total -= size
