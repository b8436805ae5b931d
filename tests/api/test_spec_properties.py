"""Properties of the spec validator: what it accepts is within every limit, and each rejection names a field.

Specs come from a strategy that mixes valid and invalid values for every part (unknown names,
widths, depths, grid sizes and epochs on both sides of tight limits, bad numbers, stray fields),
checked through the same entry point the API uses (``parse_spec``).
"""

from __future__ import annotations

import typing
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from app.catalog import ACTIVATIONS
from app.catalog_datasets import DATASETS
from app.config import SpecLimits
from app.experiments.service import SERVER_OWNED_FIELDS, parse_spec
from app.service_errors import InvalidInputError
from app.spec import ActivationSpec, DatasetSpec, ExperimentSpec, TrainingSpec
from app.spec_cost import estimate_cost, estimate_parameters
from app.spec_models import CnnSpec, MlpSpec, RnnSpec

# Tight limits, so that generated specs land on both sides of each of them.
LIMITS = SpecLimits(
    max_epochs=40,
    max_batch_size=512,
    max_width=300,
    max_depth=4,
    max_activations=5,
    max_seeds=4,
    max_arms=12,
    max_parameters=150_000,
    max_cost=2e11,
    max_name_length=40,
)


def _field_names(model: type[BaseModel], found: set[str]) -> set[str]:
    for name, field in model.model_fields.items():
        found.add(name)
        for member in typing.get_args(field.annotation) or (field.annotation,):
            for inner in typing.get_args(member) or (member,):
                if isinstance(inner, type) and issubclass(inner, BaseModel) and inner is not model:
                    _field_names(inner, found)
    return found


SPEC_FIELD_NAMES = frozenset(
    _field_names(ExperimentSpec, set())
    | _field_names(MlpSpec, set())
    | _field_names(CnnSpec, set())
    | _field_names(RnnSpec, set())
    | _field_names(TrainingSpec, set())
    | _field_names(DatasetSpec, set())
    | _field_names(ActivationSpec, set())
)

widths = st.integers(min_value=-2, max_value=400)
layer_lists = st.lists(widths, min_size=0, max_size=6)
activation_names = st.sampled_from([*ACTIVATIONS, "relu2", "", "RELU"])
activations = st.one_of(
    activation_names,
    st.fixed_dictionaries({"name": activation_names}, optional={"label": st.text(max_size=50)}),
    st.fixed_dictionaries(
        {"name": st.just("custom"), "expression": st.sampled_from(["x * sigmoid(x)", "x ** 2", "import os", "x +"])},
        optional={"label": st.text(min_size=1, max_size=10)},
    ),
    st.fixed_dictionaries({"name": st.just("leaky_relu"), "params": st.fixed_dictionaries({"slope": st.floats()})}),
)
models = st.one_of(
    st.fixed_dictionaries({"kind": st.just("mlp"), "hidden": layer_lists}),
    st.fixed_dictionaries(
        {"kind": st.just("cnn"), "channels": layer_lists},
        optional={"kernel_size": st.integers(0, 13), "pooling": st.sampled_from(["max", "avg", "none", "sum"])},
    ),
    st.fixed_dictionaries(
        {"kind": st.just("rnn"), "hidden_size": widths},
        optional={"layers": st.integers(0, 6), "cell": st.sampled_from(["rnn", "gru", "lstm", "transformer"])},
    ),
    st.fixed_dictionaries({"kind": st.sampled_from(["mlp", "vit"]), "hidden": st.text(max_size=3)}),
)
trainings = st.fixed_dictionaries(
    {"epochs": st.integers(-1, 60)},
    optional={
        "batch_size": st.integers(0, 700),
        "lr": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3)),
        "optimizer": st.sampled_from(["adam", "sgd", "lbfgs"]),
        "momentum": st.floats(-0.5, 1.5),
        "nesterov": st.booleans(),
        "validation_fraction": st.floats(-0.1, 0.7),
    },
)
wild_specs = st.fixed_dictionaries(
    {
        "dataset": st.fixed_dictionaries({"name": st.sampled_from([*DATASETS, "imagenet"])}),
        "model": models,
        "activations": st.lists(activations, min_size=0, max_size=7),
        "seeds": st.lists(st.integers(-1, 2**31 + 5), min_size=0, max_size=6),
    },
    optional={
        "name": st.text(max_size=60),
        "training": trainings,
        "device": st.sampled_from(["auto", "cpu", "cuda", "tpu"]),
        "version": st.integers(0, 2),
        "extra": st.integers(),
        "status": st.just("succeeded"),
    },
)
# Well-formed specs whose sizes straddle the limits: widths, depths, grid, epochs and, through them, cost.
sized_layers = st.lists(st.integers(1, 360), min_size=1, max_size=5)
sized_specs = st.fixed_dictionaries(
    {
        "dataset": st.fixed_dictionaries({"name": st.sampled_from(["digits", "mnist1d", "spirals", "mnist"])}),
        "model": st.one_of(
            st.fixed_dictionaries({"kind": st.just("mlp"), "hidden": sized_layers}),
            st.fixed_dictionaries({"kind": st.just("rnn"), "hidden_size": st.integers(1, 360)}),
        ),
        "activations": st.lists(st.sampled_from(list(ACTIVATIONS)[:15]), min_size=1, max_size=6, unique=True),
        "seeds": st.lists(st.integers(0, 1000), min_size=1, max_size=5, unique=True),
        "training": st.fixed_dictionaries({"epochs": st.integers(1, 45)}),
    }
)
specs = st.one_of(sized_specs, wild_specs)


def _widths(spec: ExperimentSpec) -> list[int]:
    model = spec.model
    if isinstance(model, MlpSpec):
        return list(model.hidden)
    if isinstance(model, CnnSpec):
        return [*model.channels, *model.hidden]
    return [model.hidden_size, model.head_hidden]


def _depth(spec: ExperimentSpec) -> int:
    model = spec.model
    if isinstance(model, MlpSpec):
        return len(model.hidden)
    if isinstance(model, CnnSpec):
        return max(len(model.channels), len(model.hidden))
    return model.layers


def _names_a_field(message: str) -> bool:
    words = {word.strip(".,:;'\"()[]") for word in message.replace(".", " ").split()}
    return bool(words & SPEC_FIELD_NAMES)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(payload=specs)
def test_accepted_specs_are_within_every_limit_and_rejections_name_a_field(payload: dict[str, Any]) -> None:
    try:
        spec = parse_spec(payload=payload, limits=LIMITS)
    except InvalidInputError as error:
        event("rejected")
        assert error.errors, "a rejection must say what is wrong"
        for item in error.errors:
            assert item["msg"], item
            assert item["loc"] or _names_a_field(item["msg"]), f"names no field: {item}"
            if item["loc"]:
                top = str(item["loc"]).split(".")[0]
                assert top in SPEC_FIELD_NAMES or top in payload, f"points at no field of the spec: {item}"
        return
    event("accepted")
    assert estimate_cost(spec) <= LIMITS.max_cost
    assert estimate_parameters(spec) <= LIMITS.max_parameters
    assert len(spec.arms()) <= LIMITS.max_arms
    assert len(spec.activations) <= LIMITS.max_activations
    assert len(spec.seeds) <= LIMITS.max_seeds
    assert 1 <= spec.training.epochs <= LIMITS.max_epochs
    assert spec.training.batch_size <= LIMITS.max_batch_size
    assert all(1 <= width <= LIMITS.max_width for width in _widths(spec))
    assert _depth(spec) <= LIMITS.max_depth
    assert len(spec.name) <= LIMITS.max_name_length
    assert not (set(payload) & SERVER_OWNED_FIELDS)


def test_the_strategy_reaches_both_outcomes() -> None:
    """Guard against a strategy that only ever produces rejections (which would make the property vacuous)."""
    outcomes = {"accepted": 0, "rejected": 0}

    @settings(max_examples=300, deadline=None, derandomize=True, database=None)
    @given(payload=specs)
    def sample(payload: dict[str, Any]) -> None:
        try:
            parse_spec(payload=payload, limits=LIMITS)
        except InvalidInputError:
            outcomes["rejected"] += 1
        else:
            outcomes["accepted"] += 1

    sample()
    assert outcomes["accepted"] >= 10, outcomes
    assert outcomes["rejected"] >= 10, outcomes
