"""``actlab train``: end to end on a tiny spec, bad specs with field paths, the example specs, error details."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pydantic import ValidationError

from app.cli import main
from app.errors import validation_error_details
from app.spec import EXAMPLE_SPEC, ExperimentSpec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

TINY_SPEC: dict[str, Any] = {
    "name": "tiny",
    "dataset": {"name": "spirals", "params": {"samples": 400}},
    "model": {"kind": "mlp", "hidden": [8, 8]},
    "activations": ["relu", "sigmoid", {"name": "custom", "expression": "exp(1000 * x)", "label": "blowup"}],
    "seeds": [0, 1],
    "training": {"epochs": 2, "batch_size": 64, "validation_fraction": 0.25},
    "device": "cpu",
}


def write_spec(folder: Path, spec: dict[str, Any]) -> Path:
    path = folder / "spec.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def test_train_writes_epoch_and_layer_csvs_and_prints_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec_path = write_spec(tmp_path, TINY_SPEC)
    epochs_csv, layers_csv = tmp_path / "out" / "epochs.csv", tmp_path / "layers.csv"
    status = main(["train", str(spec_path), "--out", str(epochs_csv), "--layers-out", str(layers_csv)])
    assert status == 0

    epochs = pd.read_csv(epochs_csv)
    required = {"activation", "seed", "epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy"}
    assert required | {"epoch_seconds", "val_loss", "lr", "grad_norm_ratio", "gradient_flag", "status"} <= set(
        epochs.columns
    )
    # Every arm has epoch 0 (the network at initialisation); relu and sigmoid then run both epochs per seed, the
    # exploding custom formula stops after epoch 1.
    assert len(epochs) == 2 * 3 + 2 * 3 + 2 * 2
    assert set(epochs.epoch) == {0, 1, 2}
    assert epochs.loc[epochs.epoch == 0, "epoch_seconds"].isna().all()
    assert set(epochs.loc[epochs.activation == "blowup", "status"]) == {"diverged"}
    assert set(epochs.loc[epochs.activation == "relu", "status"]) == {"succeeded"}
    assert epochs.loc[epochs.activation == "relu", "val_accuracy"].notna().all()

    layers = pd.read_csv(layers_csv)
    assert set(layers.layer_name) == {"hidden1", "hidden2", "output"}
    assert len(layers) == len(epochs) * 3
    relu_dead = layers.loc[(layers.activation == "relu") & (layers.layer_name == "hidden1"), "dead_fraction"]
    assert relu_dead.between(0, 1).all()

    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["activation", "test_acc_mean", "test_acc_std", "seeds", "diverged"]
    rows = {line.split()[0]: line.split()[1:] for line in table[1:]}
    assert rows["blowup"][2:] == ["2", "2"]
    assert rows["relu"][2:] == ["2", "0"]
    final_relu = epochs.loc[(epochs.activation == "relu") & (epochs.epoch == 2), "test_accuracy"]
    assert float(rows["relu"][0]) == pytest.approx(final_relu.mean(), abs=1e-4)


def test_an_evaluation_block_writes_its_robustness_rows_beside_the_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = {
        **TINY_SPEC,
        "version": 2,
        "activations": ["relu", "tanh"],
        "factors": {"training.lr": [0.01, 0.05]},
        "evaluation": {"noise_std": [0.5], "fgsm_epsilon": [0.0, 0.1]},
    }
    epochs_csv = tmp_path / "out" / "epochs.csv"
    assert main(["train", str(write_spec(tmp_path, spec)), "--out", str(epochs_csv)]) == 0
    assert "robustness rows to" in capsys.readouterr().err
    robustness = pd.read_csv(tmp_path / "out" / "epochs_robustness.csv")
    assert list(robustness.columns) == [
        "activation", "activation_index", "seed", "cell_index", "cell", "training.lr",
        "kind", "strength", "accuracy", "loss",
    ]  # fmt: skip
    # 2 cells x 2 activations x 2 seeds, each under noise 0.5 and FGSM 0 and 0.1.
    assert len(robustness) == 8 * 3
    assert sorted(set(zip(robustness.kind, robustness.strength, strict=True))) == [
        ("fgsm", 0.0),
        ("fgsm", 0.1),
        ("noise", 0.5),
    ]
    assert set(robustness["cell"]) == {"lr=0.01", "lr=0.05"}
    # FGSM at epsilon 0 is the clean test accuracy of the arm's last epoch.
    epochs = pd.read_csv(epochs_csv)
    final = epochs[epochs.epoch == 2].set_index(["cell_index", "activation", "seed"])["test_accuracy"]
    clean = robustness[(robustness.kind == "fgsm") & (robustness.strength == 0)]
    for row in clean.itertuples():
        assert row.accuracy == pytest.approx(final[(row.cell_index, row.activation, row.seed)], abs=1e-6)
    assert (robustness[robustness.strength > 0].accuracy <= 1).all()
    # Asked for by name, and not written for a spec without an evaluation block unless asked.
    named = tmp_path / "robust.csv"
    assert main(["train", str(write_spec(tmp_path, spec)), "--robustness-out", str(named)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(named), robustness)
    plain = tmp_path / "plain" / "epochs.csv"
    assert main(["train", str(write_spec(tmp_path, TINY_SPEC)), "--out", str(plain)]) == 0
    assert not (tmp_path / "plain" / "epochs_robustness.csv").exists()


def test_a_bad_spec_exits_non_zero_naming_each_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = {
        **TINY_SPEC,
        "model": {"kind": "mlp", "hidden": [0]},
        "activations": ["relu", "no_such_activation"],
        "training": {"epochs": 0},
    }
    status = main(["train", str(write_spec(tmp_path, bad))])
    assert status != 0
    errors = capsys.readouterr().err
    assert "model.hidden.0: " in errors
    assert "activations.1.name: unknown activation 'no_such_activation'" in errors
    assert "training.epochs: " in errors
    assert "model.mlp" not in errors


def test_a_missing_or_malformed_spec_file_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(tmp_path / "absent.json")]) != 0
    assert "does not exist" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    assert main(["train", str(broken)]) != 0
    assert "not valid JSON" in capsys.readouterr().err


def test_the_example_specs_are_valid_and_the_classic_one_is_the_api_example() -> None:
    classic = json.loads((EXAMPLES / "classic_five_mnist1d.json").read_text(encoding="utf-8"))
    assert classic == EXAMPLE_SPEC
    ExperimentSpec.model_validate(classic)
    quick = ExperimentSpec.model_validate_json((EXAMPLES / "quick_digits.json").read_text(encoding="utf-8"))
    assert quick.dataset.name == "digits" and quick.training.epochs <= 3


def test_validation_error_details_drop_union_tags_and_merge_union_members() -> None:
    spec = {
        **EXAMPLE_SPEC,
        "model": {"kind": "cnn", "channels": [4], "pooling": "sideways"},
        "activations": [{"name": "leaky_relu", "params": {"negative_slope": [1]}}],
    }
    with pytest.raises(ValidationError) as caught:
        ExperimentSpec.model_validate(spec)
    details = {detail["loc"]: detail["msg"] for detail in validation_error_details(caught.value)}
    assert set(details) == {"model.pooling", "activations.0.params.negative_slope"}
    assert "'max'" in details["model.pooling"]
    assert "valid number" in details["activations.0.params.negative_slope"]


def test_validation_error_details_strip_pydantic_prefixes() -> None:
    with pytest.raises(ValidationError) as caught:
        ExperimentSpec.model_validate({**EXAMPLE_SPEC, "seeds": [1, 1]})
    assert validation_error_details(caught.value) == [
        {"loc": "seeds", "msg": "seeds must be unique", "type": "value_error"}
    ]
