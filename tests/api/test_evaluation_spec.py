"""The evaluation block through the HTTP API: version 2 only, bounded by settings, costed, in the catalog."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.spec import ExperimentSpec
from app.spec_cost import estimate_cost, estimate_run
from tests.api.conftest import assert_spec_rejected, small_spec


def spec_with(evaluation: Any, **overrides: Any) -> dict[str, Any]:
    return small_spec(version=2, evaluation=evaluation, **overrides)


@pytest.mark.parametrize(
    ("spec", "location", "fragments"),
    [
        pytest.param(
            small_spec(evaluation={"noise_std": [0.1]}),
            "evaluation",
            ['evaluation is only in spec version 2; add "version": 2'],
            id="version 1",
        ),
        pytest.param(
            spec_with({"fgsm_epsilon": [0.1] + [0.01 * index for index in range(1, 9)]}),
            "evaluation.fgsm_epsilon",
            ["at most 8 entries", "ACTLAB_MAX_EVALUATION_STRENGTHS"],
            id="too many strengths",
        ),
        pytest.param(
            spec_with({"pgd_epsilon": [-0.1]}),
            "evaluation.pgd_epsilon",
            ["between 0 and 10", "ACTLAB_MAX_EVALUATION_STRENGTH", "got -0.1"],
            id="negative epsilon",
        ),
        pytest.param(
            spec_with({"noise_std": [50]}),
            "evaluation.noise_std",
            ["between 0 and 10", "standardised input units"],
            id="strength above the limit",
        ),
        pytest.param(
            spec_with({"pgd_epsilon": [0.1], "pgd_steps": 1000}),
            "evaluation.pgd_steps",
            ["at most 100", "ACTLAB_MAX_PGD_STEPS"],
            id="too many pgd steps",
        ),
        pytest.param(
            spec_with({"pgd_epsilon": [0.1], "pgd_steps": 0}),
            "evaluation.pgd_steps",
            ["greater than or equal to 1"],
            id="zero pgd steps",
        ),
        pytest.param(
            spec_with({"noise_std": [0.1, 0.1]}),
            "evaluation.noise_std",
            ["must not repeat a strength"],
            id="repeated strength",
        ),
        pytest.param(spec_with({}), "evaluation", ["at least one strength"], id="nothing to measure"),
        pytest.param(
            spec_with({"noise_std": [0.1], "cw_epsilon": [0.1]}),
            "evaluation.cw_epsilon",
            ["Extra inputs are not permitted"],
            id="unknown field",
        ),
    ],
)
def test_bad_evaluation_blocks_are_a_422_naming_the_field(
    client: TestClient, db: Session, spec: dict[str, Any], location: str, fragments: list[str]
) -> None:
    assert_spec_rejected(client, db, spec, location, fragments)


def test_the_evaluation_block_is_in_the_catalog_with_its_limits(client: TestClient) -> None:
    catalog = client.get("/v1/catalog").json()
    block = catalog["evaluation"]
    assert [field["name"] for field in block["fields"]] == ["noise_std", "fgsm_epsilon", "pgd_epsilon", "pgd_steps"]
    assert {field["name"]: field["default"] for field in block["fields"]}["pgd_steps"] == 10
    assert [kind["name"] for kind in block["kinds"]] == ["noise", "fgsm", "pgd"]
    limits = {limit["name"]: limit for limit in catalog["limits"]}
    assert limits["max_evaluation_strengths"]["environment_variable"] == "ACTLAB_MAX_EVALUATION_STRENGTHS"
    assert limits["max_pgd_steps"]["value"] == 100


def test_the_evaluation_block_counts_in_the_cost_and_leaves_version_1_hashes_alone() -> None:
    plain = ExperimentSpec.model_validate(small_spec(version=2))
    evaluated = ExperimentSpec.model_validate(spec_with({"noise_std": [0.1], "pgd_epsilon": [0.1], "pgd_steps": 10}))
    # One scored pass for the noise, 3 x 10 + 1 for PGD: 32 forward passes over the test set.
    work = estimate_run(plain).forward_macs * plain.dataset.test_size * 32
    assert estimate_run(evaluated).macs == pytest.approx(estimate_run(plain).macs + work)
    assert estimate_cost(evaluated) > estimate_cost(plain)
    assert "evaluation" not in ExperimentSpec.model_validate(small_spec()).canonical_json()


def test_run_limits_refuse_an_evaluation_that_costs_too_much() -> None:
    from pydantic import ValidationError

    from app.config import SpecLimits

    plain = ExperimentSpec.model_validate(small_spec(version=2))
    limits = SpecLimits().model_copy(update={"max_run_macs": estimate_run(plain).macs * 2})
    ExperimentSpec.model_validate(small_spec(version=2), context={"limits": limits})
    heavy = spec_with({"pgd_epsilon": [0.1, 0.2, 0.3], "pgd_steps": 100})
    with pytest.raises(ValidationError, match="ACTLAB_MAX_RUN_MACS") as raised:
        ExperimentSpec.model_validate(heavy, context={"limits": limits})
    assert "evaluation block" in str(raised.value)
