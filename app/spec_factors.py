"""Factorial experiments (spec version 2): the factors' rules, the cells they span and each cell's spec.

``factors`` maps a dotted spec path (``app.catalog.FACTOR_PATHS``) to its levels. A cell is one
combination of levels, taken in the sorted order of the paths (so a spec stored as JSONB, whose
key order is lost, expands to the same cells); an arm is (cell, activation, seed). Each cell's
effective spec is the base spec with the cell's levels written in, without ``factors``, and it is
validated by ``app.spec.ExperimentSpec`` itself, so a level is checked exactly as its field is, for
the model kind in force in that cell; an error names the path and the level's index
(``factors.model.hidden.1``), also where it shows at another field but that level alone causes it
(a dataset parameter the dataset in force lacks); an error only a combination of levels gives names
the cell. The limits count every arm of every cell. Runs store their cell's
levels, and the worker trains each with ``run_spec(stored_spec, cell_levels)``. No torch.
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from app.catalog import FACTOR_PATHS, factor_path_entry
from app.config import SpecLimits

if TYPE_CHECKING:
    from app.spec import ExperimentSpec

FACTORIAL_SPEC_VERSION = 2
MAX_CELL_LABEL = 500  # the width of runs.cell_label


@dataclass(frozen=True)
class Cell:
    """One combination of factor levels: its index in ``expand_cells`` order, levels by path, label and spec."""

    index: int
    levels: dict[str, Any]
    label: str
    spec: ExperimentSpec


def _error(loc: tuple[str | int, ...], message: str, value: Any) -> InitErrorDetails:
    context = {"message": message}
    return InitErrorDetails(type=PydanticCustomError("factor", "{message}", context), loc=loc, input=value, ctx=context)


def _raise(errors: list[InitErrorDetails]) -> None:
    if errors:
        raise ValidationError.from_exception_data("ExperimentSpec", errors)


def base_payload(spec: ExperimentSpec | dict[str, Any]) -> dict[str, Any]:
    """The spec as JSON without its factors: what each cell's levels are written into."""
    dumped = spec if isinstance(spec, dict) else spec.model_dump(mode="json")
    return {key: copy.deepcopy(value) for key, value in dumped.items() if key != "factors"}


def _apply(payload: dict[str, Any], levels: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with each level written at its path, shorter paths first (``model`` before ``model.hidden``)."""
    result = copy.deepcopy(payload)
    for path in sorted(levels, key=lambda item: (item.count("."), item)):
        *parents, last = path.split(".")
        target = result
        for part in parents:
            child = target.get(part)
            if not isinstance(child, dict):
                child = {}
                target[part] = child
            target = child
        target[last] = copy.deepcopy(levels[path])
    return result


def _format_level(value: Any) -> str:
    """A level as the label shows it: widths as runs (``16x128``, ``64-2x32``), blocks by kind or name."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list) and all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        if not value:
            return "0"
        groups = [(width, len(list(run))) for width, run in itertools.groupby(value)]
        return "-".join(f"{count}x{width}" if count > 1 else str(width) for width, count in groups)
    if isinstance(value, dict):
        name = value.get("kind", value.get("name"))
        rest = {key: item for key, item in value.items() if key not in ("kind", "name")}
        inner = ",".join(f"{key}={_format_level(item)}" for key, item in sorted(rest.items()))
        return f"{name}({inner})" if inner else str(name)
    if isinstance(value, list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _label_names(paths: list[str]) -> dict[str, str]:
    """Each path's name in labels: its last part, or the whole path where two paths share a last part."""
    last = [path.rpartition(".")[2] for path in paths]
    return {path: path if last.count(name) > 1 else name for path, name in zip(paths, last, strict=True)}


def cell_label(levels: dict[str, Any]) -> str:
    """A readable, deterministic label of a cell: ``hidden=16x128, init=default, lr=0.003`` (paths sorted)."""
    paths = sorted(levels)
    names = _label_names(paths)
    return ", ".join(f"{names[path]}={_format_level(levels[path])}" for path in paths)


def _combinations(factors: dict[str, list[Any]]) -> list[dict[str, Any]]:
    paths = sorted(factors)
    return [dict(zip(paths, values, strict=True)) for values in itertools.product(*(factors[path] for path in paths))]


def _check_shape(spec: ExperimentSpec, limits: SpecLimits) -> list[InitErrorDetails]:
    """The version, the paths and the level counts; the levels themselves are checked per cell."""
    factors = spec.factors or {}
    if spec.version != FACTORIAL_SPEC_VERSION:
        message = f'factors need "version": {FACTORIAL_SPEC_VERSION}; a version-1 spec has no factors'
        return [_error(("factors",), message, factors)]
    errors: list[InitErrorDetails] = []
    if not factors:
        errors.append(_error(("factors",), "name at least one factor, or leave factors out", factors))
    if len(factors) > limits.max_factors:
        message = f"at most {limits.max_factors} factors (setting ACTLAB_MAX_FACTORS), got {len(factors)}"
        errors.append(_error(("factors",), message, factors))
    allowed = ", ".join(path.replace("*", "<name>") for path in FACTOR_PATHS)
    for path, levels in factors.items():
        if factor_path_entry(path) is None:
            errors.append(_error(("factors", path), f"unknown factor path {path!r}; allowed: {allowed}", levels))
        elif not levels:
            errors.append(_error(("factors", path), "give at least one level", levels))
        elif len(levels) > limits.max_factor_levels:
            message = f"at most {limits.max_factor_levels} levels (setting ACTLAB_MAX_FACTOR_LEVELS), got {len(levels)}"
            errors.append(_error(("factors", path), message, levels))
        else:
            seen = [json.dumps(level, sort_keys=True) for level in levels]
            for index, text in enumerate(seen):
                if text in seen[:index]:
                    message = f"level {index} repeats level {seen.index(text)}"
                    errors.append(_error(("factors", path, index), message, levels[index]))
    cells = 1
    for levels in factors.values():
        cells *= max(1, len(levels))
    if cells > limits.max_cells:
        message = (
            f"{cells} cells (the product of the level counts) exceed {limits.max_cells} (setting ACTLAB_MAX_CELLS)"
        )
        errors.append(_error(("factors",), message, factors))
    return errors


def _attribute(
    detail: dict[str, str], levels: dict[str, Any], factors: dict[str, list[Any]], model_kind: str | None
) -> InitErrorDetails:
    """Name an error of a cell's spec by the factor and level that caused it, else by the cell."""
    location, message = detail["loc"], detail["msg"]
    # A block's own check words its field first ("dataset: params.noise must be ..."): read that as the place.
    first_word = message.split(" ", 1)[0]
    places = [location, f"{location}.{first_word}"] if first_word.startswith("params.") else [location]
    matching = [path for path in levels for place in places if place == path or place.startswith(f"{path}.")]
    if not matching:
        where = f"{location}: " if location else ""
        return _error(("factors",), f"cell {cell_label(levels)}: {where}{message}", levels)
    path = max(matching, key=len)
    index = next(i for i, level in enumerate(factors[path]) if level == levels[path])
    if detail["type"] == "extra_forbidden" and path.startswith("model."):
        message = f"{path} does not exist on model kind '{model_kind}'" if model_kind else message
    inner = location[len(path) + 1 :]
    message = f"{inner}: {message}" if inner else message
    return _error(("factors", path, index), message, levels[path])


def _single_level_cause(
    detail: dict[str, str],
    payload: dict[str, Any],
    levels: dict[str, Any],
    factors: dict[str, list[Any]],
    limits: SpecLimits,
) -> InitErrorDetails | None:
    """The one factor level that alone gives a cell's error outside every factor path (a parameter the dataset in
    force lacks, an optimizer setting another optimizer level does not take), named by path and index; else None."""
    from app.errors import validation_error_details
    from app.spec import ExperimentSpec

    for path in sorted(levels):
        try:
            ExperimentSpec.model_validate(_apply(payload, {path: levels[path]}), context={"limits": limits})
        except ValidationError as error:
            alone = validation_error_details(error, model=ExperimentSpec)
            if any((item["loc"], item["msg"]) == (detail["loc"], detail["msg"]) for item in alone):
                index = next(i for i, level in enumerate(factors[path]) if level == levels[path])
                where = f"{detail['loc']}: " if detail["loc"] else ""
                return _error(("factors", path, index), f"{where}{detail['msg']}", levels[path])
    return None


def check_factors(spec: ExperimentSpec, limits: SpecLimits) -> ExperimentSpec:
    """Validate a factorial spec: its paths, every level in every cell, and the limits over all arms."""
    from app.errors import validation_error_details
    from app.spec import ExperimentSpec
    from app.spec_cost import estimate_cost  # per cell; estimate_experiment_cost sums it over a stored spec's cells

    _raise(_check_shape(spec, limits))
    factors = spec.factors or {}
    payload = base_payload(spec)
    errors: dict[str, InitErrorDetails] = {}
    cells: list[ExperimentSpec] = []
    for levels in _combinations(factors):
        cell_payload = _apply(payload, levels)
        try:
            cells.append(ExperimentSpec.model_validate(cell_payload, context={"limits": limits}))
        except ValidationError as error:
            kind = (
                cell_payload.get("model", {}).get("kind", "mlp")
                if isinstance(cell_payload.get("model"), dict)
                else None
            )
            for detail in validation_error_details(error, model=ExperimentSpec):
                found = _attribute(detail, levels, factors, kind)
                if found["loc"] == ("factors",):
                    found = _single_level_cause(detail, payload, levels, factors, limits) or found
                errors.setdefault(f"{found['loc']}\0{found['ctx']}", found)
    _raise(list(errors.values()))
    long_label = next(
        (label for levels in _combinations(factors) if len(label := cell_label(levels)) > MAX_CELL_LABEL), None
    )
    if long_label is not None:
        message = (
            f"the cell label {long_label[:60]!r}... is longer than {MAX_CELL_LABEL} characters; use shorter levels"
        )
        _raise([_error(("factors",), message, factors)])
    arms = len(cells) * len(spec.activations) * len(spec.seeds)
    if arms > limits.max_arms:
        message = (
            f"{arms} arms (cells x activations x seeds) exceed the limit of {limits.max_arms} (setting ACTLAB_MAX_ARMS)"
        )
        _raise([_error(("factors",), message, factors)])
    cost = sum(estimate_cost(cell) for cell in cells)
    if cost > limits.max_cost:
        message = (
            f"the estimated cost {cost:.3g} (arms x (epochs x training examples + evaluation passes) x parameters, over all cells) "
            f"exceeds the limit of {limits.max_cost:.3g} (setting ACTLAB_MAX_COST)"
        )
        _raise([_error(("factors",), message, factors)])
    return spec


def expand_cells(spec: ExperimentSpec) -> list[Cell]:
    """The cells of a validated spec in a fixed order; a spec without factors is one cell with no levels."""
    from app.spec import load_stored_spec

    if not spec.factors:
        return [Cell(0, {}, "", spec)]
    payload = base_payload(spec)
    return [
        Cell(index, levels, cell_label(levels), load_stored_spec(_apply(payload, levels)))
        for index, levels in enumerate(_combinations(spec.factors))
    ]


def run_spec(stored_spec: dict[str, Any], cell_levels: dict[str, Any] | None) -> ExperimentSpec:
    """The effective spec of one run: the stored spec with its cell's levels, without factors (v1: the spec)."""
    from app.spec import load_stored_spec

    if not stored_spec.get("factors"):
        return load_stored_spec(stored_spec)
    return load_stored_spec(_apply(base_payload(stored_spec), cell_levels or {}))


# Spec fields the members of one stack may differ in: each is read only where a member is initialised
# (``worker.training.stacked.train_stacked`` takes a spec per member), so cells differing only there stack together.
PER_MEMBER_PATHS: tuple[str, ...] = ("training.init",)


def stack_key(spec: ExperimentSpec) -> str:
    """What the members of one stack share: the spec as JSON without its factors and its ``PER_MEMBER_PATHS``."""
    payload = base_payload(spec)
    for path in PER_MEMBER_PATHS:
        *parents, last = path.split(".")
        target: Any = payload
        for part in parents:
            target = target.get(part) if isinstance(target, dict) else None
        if isinstance(target, dict):
            target.pop(last, None)
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


def stacking_cells(stored_spec: dict[str, Any], cell_index: int) -> list[int]:
    """Indexes of the cells whose runs may stack with those of cell ``cell_index`` (the same ``stack_key``)."""
    from app.spec import load_stored_spec

    if not stored_spec.get("factors"):
        return [cell_index]
    cells = expand_cells(load_stored_spec(stored_spec))
    key = stack_key(cells[cell_index].spec)
    return [cell.index for cell in cells if stack_key(cell.spec) == key]


class FactorQueryError(ValueError):
    """A factor filter naming a path or level the experiment does not have."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


def level_text(value: Any) -> str:
    """A level as text, as a ``?factor.<path>=`` query and the results' factor columns name it: strings as they
    are, anything else as compact JSON with sorted keys (``[16,16]``, ``0.003``, ``true``, ``null``)."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), sort_keys=True)


def level_value(value: Any) -> Any:
    """A level as a metric table's factor column holds it: lists and blocks as ``level_text``, scalars as they
    are (numbers and booleans stay numbers and booleans in JSON and Parquet)."""
    return level_text(value) if isinstance(value, list | dict) else value


def cells_at_levels(stored_spec: dict[str, Any], wanted: dict[str, str]) -> list[int]:
    """Indexes of the cells at every wanted level (path -> ``level_text``); FactorQueryError for one it lacks."""
    factors: dict[str, list[Any]] = stored_spec.get("factors") or {}
    for path, text in wanted.items():
        if path not in factors:
            names = ", ".join(sorted(factors)) or "none (a version-1 spec)"
            raise FactorQueryError(path, f"this experiment has no factor {path!r}; its factors: {names}")
        allowed = [level_text(level) for level in factors[path]]
        if text not in allowed:
            raise FactorQueryError(path, f"{path} has no level {text!r}; allowed: {', '.join(allowed)}")
    return [
        index
        for index, levels in enumerate(_combinations(factors))
        if all(level_text(levels[path]) == text for path, text in wanted.items())
    ]


def cell_columns(cell: Cell) -> dict[str, Any]:
    """The run columns that name a cell (``Run.cell_index``, ``cell_label``, ``cell_levels``; NULLs without factors)."""
    return {"cell_index": cell.index, "cell_label": cell.label or None, "cell_levels": cell.levels or None}


def cell_count(spec: ExperimentSpec) -> int:
    """Cells of the experiment: the combinations of its factors' levels (1 without factors)."""
    return len(_combinations(spec.factors)) if spec.factors else 1


def arm_count(spec: ExperimentSpec) -> int:
    """Arms of the whole experiment: cells x activations x seeds."""
    return cell_count(spec) * len(spec.activations) * len(spec.seeds)


def planned_evaluations(spec: ExperimentSpec, cells: list[Cell] | None = None) -> int:
    """Trained metrics rows of the whole experiment (epoch 0 not counted): each cell's arms x its
    ``training.evaluations`` (epochs, or the evaluations of a step budget), summed over the cells (``cells``:
    ``expand_cells(spec)`` where the caller has them)."""
    arms = len(spec.activations) * len(spec.seeds)
    return sum(arms * cell.spec.training.evaluations for cell in (cells if cells is not None else expand_cells(spec)))


def pairing_note(spec: ExperimentSpec) -> str:
    """Which seed pairing holds: across cells unless a factor changes the data (``dataset.*``)."""
    data_factors = [path for path in spec.factors or {} if (entry := factor_path_entry(path)) and entry.changes_data]
    if not spec.factors:
        return "seeds pair the activations (one cell)"
    if data_factors:
        return f"seeds pair activations within each cell only: {', '.join(sorted(data_factors))} changes the data"
    return "seeds pair activations within and across cells: a seed fixes the data order in every cell"
