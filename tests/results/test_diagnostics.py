"""Diagnostics per activation: gradient-norm ratios, unit fractions, learned parameters."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from app.results.diagnostics import learned_parameters_by_layer, summarise_diagnostics
from tests.results.synthetic import SyntheticArm, synthetic_tables


def _row(frame: pd.DataFrame, label: str) -> pd.Series:
    return frame[frame["activation"] == label].iloc[0]


def test_gradient_ratio_flags_and_unit_fractions() -> None:
    runs, _, layers = synthetic_tables(
        [
            SyntheticArm("sigmoid", "sigmoid", 0.5, gradient_profile=(1e-5, 1e-2, 1.0), saturated_fraction=0.8),
            SyntheticArm("relu", "relu", 0.9, gradient_profile=(2.0, 1.5, 1.0), dead_fraction=0.25),
            SyntheticArm("selu", "selu", 0.9, gradient_profile=(1e4, 10.0, 1.0)),
        ]
    )
    frame = summarise_diagnostics(layers, runs=runs)
    sigmoid, relu, selu = (_row(frame, label) for label in ("sigmoid", "relu", "selu"))
    assert sigmoid["gradient_ratio_first_epoch"] == pytest.approx(1e-5)
    assert sigmoid["gradient_ratio_last_epoch"] == pytest.approx(1e-5)
    assert bool(sigmoid["vanishing"]) and not bool(sigmoid["exploding"])
    assert sigmoid["saturated_fraction"] == pytest.approx(0.8)
    assert math.isnan(sigmoid["dead_fraction"])
    assert relu["gradient_ratio_last_epoch"] == pytest.approx(2.0)
    assert not bool(relu["vanishing"]) and not bool(relu["exploding"])
    assert relu["dead_fraction"] == pytest.approx(0.25)
    assert bool(selu["exploding"])
    assert (relu["first_epoch"], relu["last_epoch"]) == (1, 5)


def test_ratios_are_averaged_geometrically_over_seeds() -> None:
    runs, _, layers = synthetic_tables([SyntheticArm("relu", "relu", 0.9, gradient_profile=(1.0, 1.0))], seeds=[0, 1])
    # Seed 0 has ratio 100, seed 1 ratio 0.01: the geometric mean is 1, the arithmetic one would be 50.
    layers.loc[(layers["seed"] == 0) & (layers["layer"] == 1), "grad_norm"] = 50.0
    layers.loc[(layers["seed"] == 1) & (layers["layer"] == 1), "grad_norm"] = 0.005
    frame = summarise_diagnostics(layers, runs=runs)
    assert frame["gradient_ratio_last_epoch"].item() == pytest.approx(1.0)


def test_learned_parameters_are_averaged_over_layers_and_seeds_at_the_last_epoch() -> None:
    runs, _, layers = synthetic_tables([SyntheticArm("prelu", "prelu", 0.9, parameters={"slope": 0.2})], seeds=[0, 1])
    last = layers["epoch"] == layers["epoch"].max()
    layers.loc[last & (layers["seed"] == 1) & (layers["layer"] == 1), "activation_parameters"] = [{"slope": 0.4}]
    frame = summarise_diagnostics(layers, runs=runs)
    assert bool(frame["learnable"].item())
    # Layers 1 and 2 of seed 0 (0.2, 0.2) and of seed 1 (0.4, 0.2).
    assert frame["learned_parameters"].item() == {"slope": pytest.approx(0.25)}
    by_layer = learned_parameters_by_layer(layers)
    assert list(by_layer["layer"]) == [1, 2]
    assert by_layer["parameters"].iloc[0] == {"slope": pytest.approx(0.3)}


def test_fixed_activations_report_no_learned_parameters() -> None:
    runs, _, layers = synthetic_tables([SyntheticArm("relu", "relu", 0.9)])
    frame = summarise_diagnostics(layers, runs=runs)
    assert not bool(frame["learnable"].item())
    assert frame["learned_parameters"].item() is None


def test_dead_at_initialisation_and_died_in_training_have_their_own_columns() -> None:
    rows = []
    for run, (label, at_init, last) in enumerate([("relu", 0.0, 0.6), ("elu_like", 0.5, 0.5)]):
        for epoch, dead in ((0, at_init), (1, (at_init + last) / 2), (2, last)):
            for layer, grad in ((1, 1.0 if epoch else 1e-9), (2, 1.0)):
                rows.append(
                    {
                        "run_id": f"r{run}",
                        "activation": label,
                        "activation_index": run,
                        "activation_name": "relu",
                        "seed": 0,
                        "status": "succeeded",
                        "epoch": epoch,
                        "layer": layer,
                        "layer_name": f"l{layer}",
                        "grad_norm": grad,
                        "dead_fraction": dead if layer == 1 else None,
                        "saturated_fraction": None,
                        "activation_parameters": None,
                    }
                )
    frame = summarise_diagnostics(pd.DataFrame(rows))
    relu, other = frame.iloc[0], frame.iloc[1]
    assert (relu["dead_fraction_initial"], relu["dead_fraction"]) == (0.0, 0.6)
    assert (other["dead_fraction_initial"], other["dead_fraction"]) == (0.5, 0.5)
    # Epoch 0's vanishing ratio is reported at initialisation, not as the first trained epoch.
    assert relu["first_epoch"] == 1 and relu["gradient_ratio_first_epoch"] == pytest.approx(1.0)
    assert relu["gradient_ratio_initial"] == pytest.approx(1e-9) and not relu["vanishing"]
