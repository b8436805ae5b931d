"""One colour per activation label in every experiment and plot (issue 15 item 2)."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.catalog import ACTIVATIONS
from app.results.colours import CATALOG_COLOURS, colour_of
from tests.results.conftest import FAKE_SPEC, insert_experiment
from tests.results.synthetic import SyntheticArm


def test_every_catalog_activation_has_its_own_fixed_colour_and_other_labels_a_stable_hashed_one() -> None:
    assert set(CATALOG_COLOURS) == set(ACTIVATIONS) - {"custom"}
    assert len(set(CATALOG_COLOURS.values())) == len(CATALOG_COLOURS)
    assert colour_of("relu") == CATALOG_COLOURS["relu"]
    assert colour_of("swish_b") == colour_of("swish_b")
    assert re.fullmatch(r"#[0-9a-f]{6}", colour_of("swish_b"))
    assert colour_of("swish_b") != colour_of("swish_c")


def _stroke_colours(client: TestClient, experiment_id: object) -> set[str]:
    svg = client.get(f"/v1/experiments/{experiment_id}/plots/final-metric.svg").text
    return set(re.findall(r"#[0-9a-f]{6}", svg))


def test_an_activation_keeps_its_colour_whatever_its_position_in_the_spec(client: TestClient, db: Session) -> None:
    forward = insert_experiment(
        db,
        spec_payload={**FAKE_SPEC, "activations": ["relu", "tanh"]},
        arms=[SyntheticArm("relu", "relu", 0.9), SyntheticArm("tanh", "tanh", 0.8)],
        status="succeeded",
    )
    backward = insert_experiment(
        db,
        spec_payload={**FAKE_SPEC, "activations": ["gelu", "tanh"]},
        arms=[SyntheticArm("gelu", "gelu", 0.9), SyntheticArm("tanh", "tanh", 0.8)],
        status="succeeded",
    )
    first, second = _stroke_colours(client, forward), _stroke_colours(client, backward)
    assert {colour_of("relu"), colour_of("tanh")} <= first
    assert {colour_of("gelu"), colour_of("tanh")} <= second
    assert colour_of("relu") not in second
