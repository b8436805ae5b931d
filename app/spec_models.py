"""The model blocks of a spec: ``model`` is one of ``MlpSpec``, ``CnnSpec``, ``RnnSpec`` by its ``kind``.

Split from ``app.spec`` (the experiment spec and its other blocks) to keep each module readable in
one sitting. Each class is a model kind of ``app.catalog.MODEL_KINDS``; the worker's builders in
``worker/training/models.py`` are keyed by the same kinds (guard test). Limits are the settings
``ACTLAB_MAX_WIDTH`` and ``ACTLAB_MAX_DEPTH``, read through the validation context.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from app.spec_cost import cnn_layer_shapes
from app.spec_fields import (
    Integer,
    Number,
    PositiveInt,
    StrictModel,
    VersionedModel,
    limits_in_force,
    not_boolean,
    version_2_field,
)


def _check_width(value: int, info: ValidationInfo, what: str) -> int:
    limit = limits_in_force(info).max_width
    if value > limit:
        raise ValueError(f"{what} must be at most {limit} (setting ACTLAB_MAX_WIDTH), got {value}")
    return value


def _check_depth(values: list[int], info: ValidationInfo, what: str) -> list[int]:
    limit = limits_in_force(info).max_depth
    if len(values) > limit:
        raise ValueError(f"{what} may have at most {limit} entries (setting ACTLAB_MAX_DEPTH), got {len(values)}")
    for value in values:
        _check_width(value, info, f"each entry of {what}")
    return values


class MlpSpec(StrictModel):
    """A multilayer perceptron; the input is flattened."""

    kind: Literal["mlp"] = "mlp"
    hidden: list[PositiveInt] = Field(default_factory=lambda: [128, 128], description="Hidden layer widths.")
    norm: Literal["none", "batch", "layer"] = "none"
    dropout: Number = Field(0.0, ge=0.0, lt=1.0)
    residual: bool = Field(False, description="Add skip connections between hidden layers of equal width.")

    @field_validator("hidden")
    @classmethod
    def _bounded(cls, value: list[int], info: ValidationInfo) -> list[int]:
        return _check_depth(value, info, "hidden")


MAX_KERNEL_SIZE = 11
MAX_STRIDE = 11
ConvKernel = Annotated[int, Field(ge=1, le=MAX_KERNEL_SIZE), BeforeValidator(not_boolean)]
ConvStride = Annotated[int, Field(ge=1, le=MAX_STRIDE), BeforeValidator(not_boolean)]
ConvPadding = Annotated[int, Field(ge=0), BeforeValidator(not_boolean)] | Literal["same"]


class CnnSpec(VersionedModel):
    """A small conv net: Conv2d for images, Conv1d for 1-D signals."""

    kind: Literal["cnn"] = "cnn"
    channels: list[PositiveInt] = Field(
        default_factory=lambda: [16, 32], min_length=1, description="Channels per conv block."
    )
    kernel_size: Integer = Field(3, ge=1, le=MAX_KERNEL_SIZE, description="Kernel size of every conv block.")
    kernel_sizes: list[ConvKernel] | None = version_2_field(
        None,
        description="Kernel size per conv block, one per entry of channels; overrides kernel_size.",
    )
    strides: list[ConvStride] | None = version_2_field(
        None, description="Stride per conv block, one per entry of channels (default: 1 each)."
    )
    padding: list[ConvPadding] | None = version_2_field(
        None,
        description="Zero padding per conv block, one per entry of channels: an integer below the block's kernel "
        "size, or 'same' (stride 1 only; the default). A block outputs floor((L + 2 x padding - kernel) / stride) + 1 "
        "positions per side.",
    )
    pooling: Literal["max", "avg", "none"] = Field(
        "max", description="Pooling after each conv block (halves each side)."
    )
    norm: Literal["none", "batch", "layer"] = "none"
    dropout: Number = Field(0.0, ge=0.0, lt=1.0)
    hidden: list[PositiveInt] = Field(
        default_factory=list, description="Widths of fully connected layers before the output."
    )

    @field_validator("channels")
    @classmethod
    def _bounded_channels(cls, value: list[int], info: ValidationInfo) -> list[int]:
        return _check_depth(value, info, "channels")

    @field_validator("hidden")
    @classmethod
    def _bounded_hidden(cls, value: list[int], info: ValidationInfo) -> list[int]:
        return _check_depth(value, info, "hidden")

    @field_validator("kernel_sizes", "strides", "padding")
    @classmethod
    def _one_per_block(cls, value: list[Any] | None, info: ValidationInfo) -> list[Any] | None:
        channels = info.data.get("channels")
        if value is None or channels is None:
            return value
        if len(value) != len(channels):
            raise ValueError(
                f"{info.field_name} needs one entry per conv block: channels has {len(channels)}, "
                f"{info.field_name} has {len(value)}"
            )
        if info.field_name != "padding":
            return value
        kernels = info.data.get("kernel_sizes") or [info.data.get("kernel_size", 3)] * len(value)
        strides = info.data.get("strides") or [1] * len(value)
        for index, (padding, kernel, stride) in enumerate(zip(value, kernels, strides, strict=False)):
            if padding == "same" and stride != 1:
                raise ValueError(
                    f"entry {index} is 'same', which needs stride 1 (strides has {stride}); give an integer"
                )
            if padding != "same" and padding >= kernel:
                raise ValueError(
                    f"entry {index} must be below its block's kernel size {kernel} (0 to {kernel - 1}), got {padding}"
                )
        return value

    @model_validator(mode="after")
    def _strides_need_padding(self) -> CnnSpec:
        if self.padding is None and self.strides is not None and any(stride != 1 for stride in self.strides):
            # The default padding is 'same', which torch (and the spec) allow at stride 1 only.
            raise ValueError(
                "strides above 1 need integer padding: padding defaults to 'same' (stride 1 only); give padding, "
                "e.g. [1, 1] for kernels of 3"
            )
        return self

    def conv_layers(self) -> list[tuple[int, int, int | str]]:
        """(kernel, stride, padding) of every conv block, first to last, defaults filled in."""
        blocks = len(self.channels)
        kernels = self.kernel_sizes or [self.kernel_size] * blocks
        strides = self.strides or [1] * blocks
        padding: list[int | str] = list(self.padding) if self.padding is not None else ["same"] * blocks
        return list(zip(kernels, strides, padding, strict=True))


class RnnSpec(VersionedModel):
    """A recurrent net reading image rows or the 1-D signal as a sequence."""

    kind: Literal["rnn"] = "rnn"
    cell: Literal["rnn", "gru", "lstm"] = Field(
        "rnn",
        description="rnn: the activation is the recurrence's nonlinearity; gru/lstm: gates kept, activation in the head.",
    )
    hidden_size: Integer = Field(64, ge=1)
    layers: Integer = Field(1, ge=1)
    head_hidden: Integer = Field(
        64, ge=1, description="Width of the head layer that applies the activation (gru/lstm)."
    )
    bidirectional: bool = version_2_field(
        False,
        description="Run each gru/lstm layer in both directions; the head reads the last state of each direction "
        "(2 x hidden_size features). Not for cell rnn.",
    )

    @model_validator(mode="after")
    def _bidirectional_needs_gates(self) -> RnnSpec:
        if self.bidirectional and self.cell == "rnn":
            raise ValueError(
                "bidirectional needs cell 'gru' or 'lstm'; the Elman cell 'rnn' runs forward only (its activation "
                "sits in the recurrence)"
            )
        return self

    @field_validator("hidden_size", "head_hidden")
    @classmethod
    def _bounded_width(cls, value: int, info: ValidationInfo) -> int:
        return _check_width(value, info, info.field_name or "width")

    @field_validator("layers")
    @classmethod
    def _bounded_layers(cls, value: int, info: ValidationInfo) -> int:
        limit = limits_in_force(info).max_depth
        if value > limit:
            raise ValueError(f"layers must be at most {limit} (setting ACTLAB_MAX_DEPTH), got {value}")
        return value


ModelSpec = Annotated[MlpSpec | CnnSpec | RnnSpec, Field(discriminator="kind")]


def check_conv_shapes(model: CnnSpec, dataset: str, input_shape: tuple[int, ...]) -> None:
    """Every conv block must output, and keep after pooling, at least one position per side."""
    layers = cnn_layer_shapes(model, input_shape)
    if model.conv_layers() == [(model.kernel_size, 1, "same")] * len(layers):
        # Today's geometry: only pooling shrinks the input.
        spatial = min(input_shape[1:])
        if min(layers[-1].pooled_size) < 1:
            raise ValueError(
                f"model.channels: {len(layers)} pooling blocks shrink the {spatial}-wide input of {dataset} "
                "below one; use fewer blocks or pooling 'none'"
            )
        return
    for index, layer in enumerate(layers):
        size = min(layer.input_size)
        if min(layer.output_size) < 1:
            raise ValueError(
                f"model: conv block {index + 1} (kernel {layer.kernel}, stride {layer.stride}, padding "
                f"{layer.padding}) gets {size} positions per side and would output {min(layer.output_size)}: "
                "floor((L + 2 x padding - kernel) / stride) + 1 must be at least 1; use a smaller kernel or stride, "
                "more padding or fewer blocks"
            )
        if min(layer.pooled_size) < 1:
            raise ValueError(
                f"model: the pooling after conv block {index + 1} shrinks its {min(layer.output_size)} positions per "
                "side below one; use fewer blocks, smaller strides or pooling 'none'"
            )
