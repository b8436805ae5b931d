"""Input transforms of dataset.transforms: each changes what it should and nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from app.config import Settings
from app.spec import DatasetSpec
from worker.training.datasets import DatasetSplits, clear_dataset_cache, load_dataset

BASE = {"num_samples": 1000}


def load(tmp_path: Path, *transforms: dict[str, Any], validation_fraction: float = 0.0) -> DatasetSplits:
    spec = DatasetSpec(name="mnist1d", params=BASE, transforms=list(transforms) or None)
    return load_dataset(spec, validation_fraction=validation_fraction, settings=Settings(data_dir=tmp_path))


def position_map(base: torch.Tensor, moved: torch.Tensor) -> list[int]:
    """For each position of ``moved``, the position of ``base`` holding the same values in every example."""
    columns = base.reshape(base.shape[0], -1)
    found = []
    for column in moved.reshape(moved.shape[0], -1).T:
        matches = [index for index in range(columns.shape[1]) if torch.equal(columns[:, index], column)]
        assert len(matches) == 1
        found.append(matches[0])
    return found


def test_permute_is_one_fixed_permutation_for_train_validation_and_test(tmp_path: Path) -> None:
    base = load(tmp_path, validation_fraction=0.1)
    permuted = load(tmp_path, {"kind": "permute", "seed": 3}, validation_fraction=0.1)
    order = position_map(base.train_x, permuted.train_x)
    assert sorted(order) == list(range(40)) and order != list(range(40))
    assert base.test_x is not None and base.val_x is not None and permuted.val_x is not None
    assert position_map(base.test_x, permuted.test_x) == order
    assert position_map(base.val_x, permuted.val_x) == order
    for name in ("train_y", "test_y", "val_y"):
        assert torch.equal(getattr(base, name), getattr(permuted, name))

    clear_dataset_cache()
    assert torch.equal(load(tmp_path, {"kind": "permute", "seed": 3}, validation_fraction=0.1).test_x, permuted.test_x)
    other = load(tmp_path, {"kind": "permute", "seed": 4}, validation_fraction=0.1)
    assert position_map(base.train_x, other.train_x) != order


def test_gaussian_noise_is_a_fixed_noisy_dataset_of_the_given_std(tmp_path: Path) -> None:
    base = load(tmp_path)
    noisy = load(tmp_path, {"kind": "gaussian_noise", "std": 0.3, "seed": 0})
    for clean, changed in ((base.train_x, noisy.train_x), (base.test_x, noisy.test_x)):
        difference = (changed.double() - clean.double()).flatten()
        assert abs(difference.std().item() - 0.3) < 0.01 and abs(difference.mean().item()) < 0.01
    assert torch.equal(base.train_y, noisy.train_y) and torch.equal(base.test_y, noisy.test_y)

    clear_dataset_cache()
    assert torch.equal(load(tmp_path, {"kind": "gaussian_noise", "std": 0.3, "seed": 0}).train_x, noisy.train_x)
    assert not torch.equal(load(tmp_path, {"kind": "gaussian_noise", "std": 0.3, "seed": 1}).train_x, noisy.train_x)


def test_subset_is_stratified_of_its_size_and_leaves_the_test_set_alone(tmp_path: Path) -> None:
    base = load(tmp_path)
    subset = load(tmp_path, {"kind": "subset", "size": 250, "seed": 0})
    assert subset.train_x.shape == (250, 1, 40)
    shares = torch.bincount(base.train_y, minlength=10).double() * 250 / len(base.train_y)
    counts = torch.bincount(subset.train_y, minlength=10).double()
    assert int(counts.sum()) == 250 and bool(((counts - shares).abs() < 1).all())
    # Whole examples of the training split, with their labels; test inputs bit-identical.
    rows = {tuple(row.tolist()): int(label) for row, label in zip(base.train_x.flatten(1), base.train_y, strict=True)}
    assert all(
        rows[tuple(row.tolist())] == int(label)
        for row, label in zip(subset.train_x.flatten(1), subset.train_y, strict=True)
    )
    assert torch.equal(base.test_x, subset.test_x) and torch.equal(base.test_y, subset.test_y)
    assert not torch.equal(load(tmp_path, {"kind": "subset", "size": 250, "seed": 1}).train_y, subset.train_y)

    # Noise drawn before the subset: the kept examples carry the same noise as in the full noisy set.
    noise = {"kind": "gaussian_noise", "std": 0.3, "seed": 0}
    noisy = load(tmp_path, noise)
    noisy_subset = load(tmp_path, noise, {"kind": "subset", "size": 250, "seed": 0})
    noisy_rows = {tuple(row.tolist()) for row in noisy.train_x.flatten(1)}
    assert all(tuple(row.tolist()) in noisy_rows for row in noisy_subset.train_x.flatten(1))
