"""Datasets as the engine sees them: shapes, fixed splits, standardisation, determinism, torchvision files.

The torchvision datasets are exercised on small files in their genuine on-disk formats, written here into
a temporary data directory; nothing touches the network.
"""

from __future__ import annotations

import hashlib
import pickle
import random
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
import torchvision.datasets.mnist
import torchvision.datasets.utils

from app.catalog_datasets import DATASETS
from app.config import Settings
from app.spec import DatasetSpec
from worker.training.datasets import (
    DatasetSplits,
    DatasetUnavailableError,
    clear_dataset_cache,
    load_dataset,
)

# Every catalog dataset that needs no files loads in the parametrized tests below; each torchvision
# dataset needs a row here (where its files live) and a test writing them in their genuine format.
OFFLINE = [name for name, info in DATASETS.items() if info.source != "torchvision"]
TORCHVISION_FOLDERS = {"mnist": "MNIST/raw", "fashion_mnist": "FashionMNIST/raw", "cifar10": "cifar-10-batches-py"}
MNIST_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
CIFAR_FILES = [*(f"data_batch_{index}" for index in range(1, 6)), "test_batch", "batches.meta"]


def settings_for(data_dir: Path, *, allow_download: bool = False) -> Settings:
    return Settings(data_dir=data_dir, allow_download=allow_download)


def channel_statistics(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (axis 1) mean and population standard deviation, in float64."""
    flat = inputs.double().transpose(0, 1).reshape(inputs.shape[1], -1)
    return flat.mean(dim=1), flat.std(dim=1, unbiased=False)


def digest(splits: DatasetSplits) -> str:
    hasher = hashlib.sha256()
    for tensor in (splits.train_x, splits.train_y, splits.test_x, splits.test_y, splits.val_x, splits.val_y):
        if tensor is not None:
            hasher.update(tensor.numpy().tobytes())
    return hasher.hexdigest()


# ---------------------------------------------------------------------------------------------- offline


def test_every_catalog_dataset_has_a_loader_test() -> None:
    # Each row loads through the dataset's loader, so a dataset without one fails ("unknown dataset").
    assert {name for name, info in DATASETS.items() if info.source == "torchvision"} == set(TORCHVISION_FOLDERS)


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_dataset_matches_catalog_and_is_standardised(name: str, tmp_path: Path) -> None:
    splits = load_dataset(DatasetSpec(name=name), settings=settings_for(tmp_path))
    info = DATASETS[name]

    assert splits.name == name
    assert splits.input_shape == info.input_shape
    assert splits.classes == info.classes
    assert splits.train_x.shape == (info.train_size, *info.input_shape)
    assert splits.test_x.shape == (info.test_size, *info.input_shape)
    assert splits.train_x.dtype == torch.float32 and splits.test_x.dtype == torch.float32
    assert splits.train_y.dtype == torch.int64 and splits.test_y.dtype == torch.int64
    assert splits.train_y.shape == (info.train_size,) and splits.test_y.shape == (info.test_size,)
    assert splits.val_x is None and splits.val_y is None
    assert splits.train_x.device.type == "cpu"
    assert set(splits.train_y.tolist()) == set(range(info.classes))
    assert set(splits.test_y.tolist()) == set(range(info.classes))
    assert torch.isfinite(splits.train_x).all() and torch.isfinite(splits.test_x).all()

    mean, std = channel_statistics(splits.train_x)
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-4)
    assert torch.allclose(std, torch.ones_like(std), atol=1e-4)
    # The test set is standardised with the training statistics, so it is close to but not exactly (0, 1).
    test_mean, test_std = channel_statistics(splits.test_x)
    assert test_mean.abs().max() < 0.2 and (test_std - 1).abs().max() < 0.2


def test_digits_and_mnist_5k_test_splits_are_stratified(tmp_path: Path) -> None:
    for name in ("digits", "mnist_5k"):
        splits = load_dataset(DatasetSpec(name=name), settings=settings_for(tmp_path))
        train_counts = torch.bincount(splits.train_y, minlength=10).double()
        test_counts = torch.bincount(splits.test_y, minlength=10).double()
        share = test_counts / (train_counts + test_counts)
        assert (share - 0.2).abs().max() < 0.01, (name, share)


def test_validation_split_is_a_stratified_disjoint_slice_of_train(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    full = load_dataset(DatasetSpec(name="digits"), settings=settings)
    part = load_dataset(DatasetSpec(name="digits"), validation_fraction=0.2, settings=settings)

    assert part.val_x is not None and part.val_y is not None
    assert len(part.val_y) == 287  # round(0.2 * 1437)
    assert len(part.train_y) + len(part.val_y) == len(full.train_y) == 1437
    assert part.val_x.shape[1:] == part.train_x.shape[1:] == (1, 8, 8)
    assert torch.equal(part.test_y, full.test_y)
    assert set(part.val_y.tolist()) == set(range(10))
    per_class_train = torch.bincount(full.train_y, minlength=10).double()
    per_class_val = torch.bincount(part.val_y, minlength=10).double()
    assert ((per_class_val - 0.2 * per_class_train).abs() <= 1).all()

    # Train (without validation) is standardised on its own statistics.
    mean, std = channel_statistics(part.train_x)
    assert abs(mean.item()) < 1e-4 and abs(std.item() - 1) < 1e-4

    # Train + validation is exactly the full training set: re-standardised, the same rows with the same labels.
    union_x = torch.cat([part.train_x, part.val_x]).double()
    union_x = (union_x - union_x.mean()) / union_x.std(unbiased=False)
    union_y = torch.cat([part.train_y, part.val_y])

    def sorted_rows(inputs: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
        rows = np.concatenate([labels.numpy()[:, None], inputs.reshape(len(inputs), -1).numpy()], axis=1)
        order = np.lexsort(np.round(rows, 3).T[::-1])
        return rows[order]

    assert np.allclose(sorted_rows(union_x, union_y), sorted_rows(full.train_x.double(), full.train_y), atol=1e-4)


def test_validation_rows_do_not_appear_in_train(tmp_path: Path) -> None:
    # Spiral points carry continuous noise, so two distinct examples never coincide.
    splits = load_dataset(DatasetSpec(name="spirals"), validation_fraction=0.25, settings=settings_for(tmp_path))
    assert splits.val_x is not None
    assert len(splits.val_x) == 400 and len(splits.train_x) == 1200
    assert torch.cdist(splits.val_x, splits.train_x).min() > 0
    assert torch.cdist(splits.val_x, splits.test_x).min() > 0


def test_bad_validation_fraction_is_rejected_with_the_field_name(tmp_path: Path) -> None:
    for fraction in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="validation_fraction"):
            load_dataset(DatasetSpec(name="digits"), validation_fraction=fraction, settings=settings_for(tmp_path))


@pytest.mark.parametrize("classes", [2, 3])
def test_spirals_with_custom_samples_and_classes(classes: int, tmp_path: Path) -> None:
    spec = DatasetSpec(name="spirals", params={"samples": 301, "classes": classes, "noise": 0.1, "turns": 2.0})
    splits = load_dataset(spec, settings=settings_for(tmp_path))
    assert splits.classes == classes
    assert splits.input_shape == (2,)
    assert splits.train_x.shape == (301 - 60, 2) and splits.test_x.shape == (60, 2)
    assert len(splits.train_y) == spec.train_size
    counts = torch.bincount(torch.cat([splits.train_y, splits.test_y]), minlength=classes)
    assert counts.max() - counts.min() <= 1 and len(counts) == classes
    assert set(splits.test_y.tolist()) == set(range(classes))


def test_mnist1d_default_params_generate_exactly_what_the_package_does(tmp_path: Path) -> None:
    from mnist1d.data import get_dataset_args, make_dataset

    catalog_defaults = {parameter.name: parameter.default for parameter in DATASETS["mnist1d"].parameters}
    package_defaults = get_dataset_args(as_dict=True)
    assert {name: package_defaults[name] for name in catalog_defaults} == catalog_defaults

    reference = make_dataset()
    explicit = DatasetSpec(name="mnist1d", params=dict(catalog_defaults))
    splits = load_dataset(explicit, settings=settings_for(tmp_path))
    assert torch.equal(splits.train_y, torch.from_numpy(reference["y"]).long())
    assert torch.equal(splits.test_y, torch.from_numpy(reference["y_test"]).long())
    # Same examples, so the standardised inputs equal those of the spec without params, bit for bit.
    assert digest(splits) == digest(load_dataset(DatasetSpec(name="mnist1d"), settings=settings_for(tmp_path)))


def test_mnist1d_params_change_the_data_and_the_split_sizes(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    base = {"num_samples": 1000}
    small = load_dataset(DatasetSpec(name="mnist1d", params=base), settings=settings)
    assert small.train_x.shape == (800, 1, 40) and small.test_x.shape == (200, 1, 40)

    spec = DatasetSpec(name="mnist1d", params={"num_samples": 997, "train_split": 0.7})
    split = load_dataset(spec, settings=settings)
    # 99 per class (990 in all), of which int(990 * 0.7) train: the catalog's size rule is the generator's.
    assert (len(split.train_y), len(split.test_y)) == (spec.train_size, spec.test_size) == (693, 297)
    assert torch.bincount(torch.cat([split.train_y, split.test_y])).tolist() == [99] * 10

    for changed in ({"seed": 7}, {"iid_noise_scale": 0.5}, {"shear_scale": 0.0}, {"max_translation": 10}):
        other = load_dataset(DatasetSpec(name="mnist1d", params={**base, **changed}), settings=settings)
        assert other.train_x.shape == small.train_x.shape, changed
        assert not torch.equal(other.train_x, small.train_x), changed


def nearest_neighbour_accuracy(splits: DatasetSplits) -> float:
    nearest = torch.cdist(splits.test_x, splits.train_x).argmin(dim=1)
    return (splits.train_y[nearest] == splits.test_y).double().mean().item()


def test_spirals_noise_controls_how_separable_the_arms_are(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    clean = load_dataset(DatasetSpec(name="spirals", params={"samples": 600, "noise": 0.0}), settings=settings)
    noisy = load_dataset(DatasetSpec(name="spirals", params={"samples": 600, "noise": 5.0}), settings=settings)
    assert nearest_neighbour_accuracy(clean) > 0.95
    assert nearest_neighbour_accuracy(noisy) < 0.6
    assert not torch.equal(clean.train_x, noisy.train_x)


def test_loads_are_bit_identical_whatever_the_global_random_state(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    specs = [DatasetSpec(name="digits"), DatasetSpec(name="mnist1d"), DatasetSpec(name="spirals")]
    first = []
    for spec in specs:
        first.append(digest(load_dataset(spec, validation_fraction=0.1, settings=settings)))

    clear_dataset_cache()
    torch.manual_seed(123)
    np.random.seed(456)
    random.seed(789)
    second = [digest(load_dataset(spec, validation_fraction=0.1, settings=settings)) for spec in specs]

    assert first == second
    # mnist1d seeds the global generators while it generates; the caller's streams carry on untouched.
    assert np.array_equal(np.random.random_sample(3), np.random.RandomState(456).random_sample(3))
    assert random.random() == random.Random(789).random()


def test_another_process_gets_the_same_bits(tmp_path: Path) -> None:
    script = (
        "import hashlib, sys\n"
        "from pathlib import Path\n"
        "from app.config import Settings\n"
        "from app.spec import DatasetSpec\n"
        "from worker.training.datasets import load_dataset\n"
        "settings = Settings(data_dir=Path(sys.argv[1]), allow_download=False)\n"
        "for name in ('digits', 'spirals'):\n"
        "    splits = load_dataset(DatasetSpec(name=name), validation_fraction=0.1, settings=settings)\n"
        "    hasher = hashlib.sha256()\n"
        "    for tensor in (splits.train_x, splits.train_y, splits.test_x, splits.test_y, splits.val_x, splits.val_y):\n"
        "        hasher.update(tensor.numpy().tobytes())\n"
        "    print(hasher.hexdigest())\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], cwd=root, capture_output=True, text=True, check=True
    )
    settings = settings_for(tmp_path)
    expected = [
        digest(load_dataset(DatasetSpec(name=name), validation_fraction=0.1, settings=settings))
        for name in ("digits", "spirals")
    ]
    assert result.stdout.split() == expected


def test_repeated_loads_share_the_cached_tensors(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    first = load_dataset(DatasetSpec(name="digits"), settings=settings)
    second = load_dataset(DatasetSpec(name="digits"), settings=settings)
    assert second.train_x.data_ptr() == first.train_x.data_ptr()


def test_to_moves_every_split_to_the_device(tmp_path: Path) -> None:
    splits = load_dataset(DatasetSpec(name="digits"), validation_fraction=0.1, settings=settings_for(tmp_path))
    moved = splits.to("meta")
    for tensor in (moved.train_x, moved.train_y, moved.test_x, moved.test_y, moved.val_x, moved.val_y):
        assert tensor is not None and tensor.device.type == "meta"
    assert moved.train_x.shape == splits.train_x.shape and moved.val_x is not None
    on_device = load_dataset(DatasetSpec(name="digits"), device="meta", settings=settings_for(tmp_path))
    assert on_device.test_x.device.type == "meta"
    assert splits.train_x.device.type == "cpu"


# ------------------------------------------------------------------------------------------ torchvision


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file as MNIST ships it: magic 0x0000080N (unsigned bytes, N dims), big-endian sizes, then data."""
    assert array.dtype == np.uint8
    header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(struct.pack(">I", size) for size in array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + array.tobytes())


def small_labelled_images(shape: tuple[int, ...], per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    generator = np.random.default_rng(seed)
    labels = generator.permutation(np.repeat(np.arange(10, dtype=np.uint8), per_class))
    images = generator.integers(0, 256, size=(len(labels), *shape), dtype=np.uint8)
    return images, labels


def mnist_arrays() -> dict[str, np.ndarray]:
    train_images, train_labels = small_labelled_images((28, 28), per_class=3, seed=1)
    test_images, test_labels = small_labelled_images((28, 28), per_class=2, seed=2)
    return {
        "train-images-idx3-ubyte": train_images,
        "train-labels-idx1-ubyte": train_labels,
        "t10k-images-idx3-ubyte": test_images,
        "t10k-labels-idx1-ubyte": test_labels,
    }


def write_mnist(data_dir: Path, folder: str, arrays: dict[str, np.ndarray]) -> None:
    for file, array in arrays.items():
        write_idx(data_dir / folder / "raw" / file, array)


def python2_string(text: str) -> bytes:
    """A Python 2 ``str`` in pickle protocol 2 (SHORT_BINSTRING / BINSTRING), as in the real CIFAR batches."""
    encoded = text.encode("latin1")
    if len(encoded) < 256:
        return b"U" + bytes([len(encoded)]) + encoded
    return b"T" + struct.pack("<i", len(encoded)) + encoded


def python2_value(value: Any) -> bytes:
    if isinstance(value, str):
        return python2_string(value)
    if isinstance(value, int):
        return b"J" + struct.pack("<i", value)
    if isinstance(value, list):
        return b"](" + b"".join(python2_value(item) for item in value) + b"e"
    # A numpy array as pickled by numpy itself, without its PROTO header and STOP.
    return pickle.dumps(value, protocol=2)[2:-1]


def python2_pickle(mapping: dict[str, Any]) -> bytes:
    """A dict pickled the way Python 2 wrote the CIFAR-10 batches: protocol 2 with byte-string keys."""
    body = b"".join(python2_string(key) + python2_value(value) for key, value in mapping.items())
    return b"\x80\x02}(" + body + b"u."


def write_cifar(data_dir: Path) -> dict[str, np.ndarray]:
    """Five training batches of 4 images, a test batch of 10, and batches.meta; returns the raw rows."""
    folder = data_dir / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_rows, train_labels = small_labelled_images((3072,), per_class=2, seed=3)
    test_rows, test_labels = small_labelled_images((3072,), per_class=1, seed=4)
    batches = [(f"data_batch_{index + 1}", slice(4 * index, 4 * index + 4)) for index in range(5)]
    for file, rows in batches:
        batch = {
            "batch_label": f"training batch {file[-1]} of 5",
            "labels": [int(label) for label in train_labels[rows]],
            "data": train_rows[rows],
            "filenames": [f"image_{number}.png" for number in range(4)],
        }
        (folder / file).write_bytes(python2_pickle(batch))
    test_batch = {
        "batch_label": "testing batch 1 of 1",
        "labels": [int(label) for label in test_labels],
        "data": test_rows,
        "filenames": [f"test_{number}.png" for number in range(len(test_labels))],
    }
    (folder / "test_batch").write_bytes(python2_pickle(test_batch))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    meta = {"num_cases_per_batch": 4, "label_names": names, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(python2_pickle(meta))
    return {"train_rows": train_rows, "train_labels": train_labels, "test_rows": test_rows, "test_labels": test_labels}


@pytest.fixture
def download_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every download path and socket connection fail loudly, recording what was attempted."""
    calls: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        calls.append(str(args[0]) if args else str(kwargs))
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", refuse)
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", refuse)
    monkeypatch.setattr(torchvision.datasets.utils, "download_url", refuse)
    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return calls


def expected_standardised(raw: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``raw`` (N, C, ...) standardised per channel with the statistics of ``reference``."""
    axes = (0, *range(2, reference.ndim))
    mean = reference.astype(np.float64).mean(axis=axes, keepdims=True)
    std = reference.astype(np.float64).std(axis=axes, keepdims=True)
    return (raw.astype(np.float64) - mean) / std


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_mnist_family_reads_idx_files_from_the_data_dir(name: str, tmp_path: Path, download_calls: list[str]) -> None:
    arrays = mnist_arrays()
    write_mnist(tmp_path, MNIST_FOLDERS[name], arrays)

    splits = load_dataset(DatasetSpec(name=name), settings=settings_for(tmp_path))

    assert download_calls == []
    assert splits.input_shape == DATASETS[name].input_shape == (1, 28, 28)
    assert splits.classes == 10
    assert splits.train_x.shape == (30, 1, 28, 28) and splits.test_x.shape == (20, 1, 28, 28)
    assert splits.train_x.dtype == torch.float32 and splits.train_y.dtype == torch.int64
    assert splits.train_y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert splits.test_y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    train_raw = arrays["train-images-idx3-ubyte"][:, None]
    test_raw = arrays["t10k-images-idx3-ubyte"][:, None]
    assert np.allclose(splits.train_x.numpy(), expected_standardised(train_raw, train_raw), atol=1e-5)
    assert np.allclose(splits.test_x.numpy(), expected_standardised(test_raw, train_raw), atol=1e-5)


def test_mnist_validation_split_from_files(tmp_path: Path, download_calls: list[str]) -> None:
    write_mnist(tmp_path, "MNIST", mnist_arrays())
    splits = load_dataset(DatasetSpec(name="mnist"), validation_fraction=1 / 3, settings=settings_for(tmp_path))
    assert splits.val_y is not None
    assert len(splits.val_y) == 10 and len(splits.train_y) == 20
    assert sorted(splits.val_y.tolist()) == list(range(10))  # three of each class, one held out per class


def test_cifar10_reads_the_pickled_batches(tmp_path: Path, download_calls: list[str]) -> None:
    raw = write_cifar(tmp_path)
    with (tmp_path / "cifar-10-batches-py" / "data_batch_1").open("rb") as handle:
        # Read the way the CIFAR-10 page shows, the written batch has the genuine keys.
        assert set(pickle.load(handle, encoding="bytes")) == {b"batch_label", b"labels", b"data", b"filenames"}

    splits = load_dataset(DatasetSpec(name="cifar10"), settings=settings_for(tmp_path))

    assert download_calls == []
    assert splits.input_shape == DATASETS["cifar10"].input_shape == (3, 32, 32)
    assert splits.train_x.shape == (20, 3, 32, 32) and splits.test_x.shape == (10, 3, 32, 32)
    assert splits.train_y.tolist() == raw["train_labels"].tolist()
    assert splits.test_y.tolist() == raw["test_labels"].tolist()
    # A row holds the red plane, then green, then blue, each 32 x 32 row-major.
    train_planes = raw["train_rows"].reshape(-1, 3, 32, 32)
    test_planes = raw["test_rows"].reshape(-1, 3, 32, 32)
    assert np.allclose(splits.train_x.numpy(), expected_standardised(train_planes, train_planes), atol=1e-5)
    assert np.allclose(splits.test_x.numpy(), expected_standardised(test_planes, train_planes), atol=1e-5)
    mean, std = channel_statistics(splits.train_x)
    assert torch.allclose(mean, torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(std, torch.ones(3, dtype=torch.float64), atol=1e-5)


@pytest.mark.parametrize(("name", "folder"), list(TORCHVISION_FOLDERS.items()))
def test_missing_dataset_without_download_names_the_folder_and_the_setting(
    name: str, folder: str, tmp_path: Path, download_calls: list[str]
) -> None:
    with pytest.raises(DatasetUnavailableError) as caught:
        load_dataset(DatasetSpec(name=name), settings=settings_for(tmp_path))

    message = str(caught.value)
    assert f"'{name}'" in message
    assert str(tmp_path / folder) in message
    assert "ACTLAB_ALLOW_DOWNLOAD=true" in message
    assert isinstance(caught.value, ValueError)
    assert download_calls == []
    assert list(tmp_path.iterdir()) == []  # not even an empty folder was created


def test_partly_missing_files_are_listed(tmp_path: Path, download_calls: list[str]) -> None:
    arrays = mnist_arrays()
    del arrays["t10k-labels-idx1-ubyte"]
    write_mnist(tmp_path, "MNIST", arrays)
    with pytest.raises(DatasetUnavailableError, match="t10k-labels-idx1-ubyte not found"):
        load_dataset(DatasetSpec(name="mnist"), settings=settings_for(tmp_path))
    assert download_calls == []


def test_corrupt_idx_file_gives_a_clear_error(tmp_path: Path, download_calls: list[str]) -> None:
    write_mnist(tmp_path, "FashionMNIST", mnist_arrays())
    (tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"not an idx file at all")
    with pytest.raises(DatasetUnavailableError, match=r"'fashion_mnist' .* could not be read"):
        load_dataset(DatasetSpec(name="fashion_mnist"), settings=settings_for(tmp_path))


def test_labels_outside_the_classes_are_rejected(tmp_path: Path, download_calls: list[str]) -> None:
    arrays = mnist_arrays()
    arrays["train-labels-idx1-ubyte"] = arrays["train-labels-idx1-ubyte"] + 10
    write_mnist(tmp_path, "MNIST", arrays)
    with pytest.raises(DatasetUnavailableError, match="labels must be 0 to 9"):
        load_dataset(DatasetSpec(name="mnist"), settings=settings_for(tmp_path))


def test_allowed_download_fetches_only_the_missing_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = mnist_arrays()
    fetched: list[str] = []

    def fake_download(url: str, download_root: str, filename: str | None = None, **kwargs: Any) -> None:
        # Stands in for the network: "downloads and extracts" the archive into the raw folder.
        assert filename is not None and kwargs.get("md5")
        fetched.append(url)
        write_idx(Path(download_root) / Path(filename).stem, arrays[Path(filename).stem])

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", fake_download)
    splits = load_dataset(DatasetSpec(name="mnist"), settings=settings_for(tmp_path, allow_download=True))

    assert [Path(url).name for url in fetched] == [f"{file}.gz" for file in MNIST_FILES]
    assert splits.train_x.shape == (30, 1, 28, 28)
    assert sorted(path.name for path in (tmp_path / "MNIST" / "raw").iterdir()) == sorted(MNIST_FILES)

    # With the files present, allowing downloads downloads nothing.
    fetched.clear()
    clear_dataset_cache()
    load_dataset(DatasetSpec(name="mnist"), settings=settings_for(tmp_path, allow_download=True))
    assert fetched == []


def test_present_cifar10_is_not_downloaded_even_when_allowed(tmp_path: Path, download_calls: list[str]) -> None:
    write_cifar(tmp_path)
    splits = load_dataset(DatasetSpec(name="cifar10"), settings=settings_for(tmp_path, allow_download=True))
    assert download_calls == []
    assert len(splits.train_y) == 20


def test_failed_download_becomes_a_dataset_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", unreachable)
    with pytest.raises(
        DatasetUnavailableError, match=r"'cifar10' .* could not be downloaded .* network is unreachable"
    ):
        load_dataset(DatasetSpec(name="cifar10"), settings=settings_for(tmp_path, allow_download=True))


# ---------------------------------------------------------------------------------------------- disk cache


def cache_settings(tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", dataset_cache_dir=tmp_path / "cache", **overrides)


def test_a_second_process_reads_the_disk_cache_bit_identically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import worker.training.datasets as datasets

    settings = cache_settings(tmp_path)
    spec = DatasetSpec(name="mnist1d", params={"num_samples": 500})
    clear_dataset_cache()
    generated = load_dataset(spec, validation_fraction=0.1, settings=settings)
    entries = list((tmp_path / "cache").glob("*.npz"))
    assert len(entries) == 1 and entries[0].name.startswith("mnist1d-")

    # As a fresh process would: nothing in memory, and generating is not possible.
    clear_dataset_cache()

    def no_generation(request: Any) -> Any:
        raise AssertionError("generated again despite the cache")

    monkeypatch.setitem(datasets._LOADERS, "mnist1d", no_generation)
    cached = load_dataset(spec, validation_fraction=0.1, settings=settings)
    assert digest(cached) == digest(generated)

    # A parameter change is another key: another entry, other data.
    monkeypatch.undo()
    other = load_dataset(DatasetSpec(name="mnist1d", params={"num_samples": 500, "seed": 1}), settings=settings)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    assert not torch.equal(other.train_x, load_dataset(spec, settings=settings).train_x)
    assert list((tmp_path / "cache").glob("*.tmp")) == []


def test_the_cache_key_covers_name_every_parameter_the_generator_and_the_format() -> None:
    from worker.training.dataset_cache import CACHE_FORMAT, key_document

    base = key_document("mnist1d", {"num_samples": 500, "seed": 42}, "mnist1d==1.0")
    assert key_document("mnist1d", {"seed": 42, "num_samples": 500}, "mnist1d==1.0") == base
    assert key_document("mnist1d", {"num_samples": 500, "seed": 43}, "mnist1d==1.0") != base
    assert key_document("mnist1d", {"num_samples": 500, "seed": 42}, "mnist1d==1.1") != base
    assert key_document("spirals", {"num_samples": 500, "seed": 42}, "mnist1d==1.0") != base
    assert f'"format":{CACHE_FORMAT}' in base


def test_an_unreadable_entry_is_rebuilt_and_a_zero_size_turns_the_cache_off(tmp_path: Path) -> None:
    spec = DatasetSpec(name="spirals", params={"samples": 300})
    settings = cache_settings(tmp_path)
    clear_dataset_cache()
    expected = digest(load_dataset(spec, settings=settings))
    (entry,) = (tmp_path / "cache").glob("*.npz")
    entry.write_bytes(b"not a numpy archive")
    clear_dataset_cache()
    assert digest(load_dataset(spec, settings=settings)) == expected
    assert entry.read_bytes().startswith(b"PK")  # written again as a whole archive

    off = Settings(data_dir=tmp_path / "data", dataset_cache_dir=tmp_path / "off", dataset_cache_max_mb=0)
    clear_dataset_cache()
    assert digest(load_dataset(spec, settings=off)) == expected
    assert not (tmp_path / "off").exists()


def test_the_least_recently_used_entries_go_past_the_size_setting(tmp_path: Path) -> None:
    settings = cache_settings(tmp_path, dataset_cache_max_mb=1)
    clear_dataset_cache()
    # 2,000 signals of 40 float64 values are 640 KiB: two entries exceed 1 MiB, so the older one goes.
    load_dataset(DatasetSpec(name="mnist1d", params={"num_samples": 2000}), settings=settings)
    (first,) = (tmp_path / "cache").glob("*.npz")
    load_dataset(DatasetSpec(name="mnist1d", params={"num_samples": 2000, "seed": 1}), settings=settings)
    remaining = list((tmp_path / "cache").glob("*.npz"))
    assert len(remaining) == 1 and remaining[0] != first


def test_processes_building_one_entry_at_once_all_get_the_same_bits(tmp_path: Path) -> None:
    script = (
        "import hashlib, sys\n"
        "from app.config import Settings\n"
        "from app.spec import DatasetSpec\n"
        "from worker.training.datasets import load_dataset\n"
        "settings = Settings(data_dir=sys.argv[1], dataset_cache_dir=sys.argv[2])\n"
        "splits = load_dataset(DatasetSpec(name='mnist1d', params={'num_samples': 400}), settings=settings)\n"
        "print(hashlib.sha256(splits.train_x.numpy().tobytes() + splits.test_x.numpy().tobytes()).hexdigest())\n"
    )
    command = [sys.executable, "-c", script, str(tmp_path / "data"), str(tmp_path / "cache")]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [process.communicate(timeout=300)[0].strip() for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0]
    assert len(set(outputs)) == 1 and len(outputs[0]) == 64
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    assert list((tmp_path / "cache").glob("*.tmp")) == []
