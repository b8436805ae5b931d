"""View data of the activation gallery pages: an experiment's activations, and every catalog activation.

Each entry has the activation's formula and derivative (from the catalog and app.activation_shapes, no
torch), its parameters, for a learnable unit the values it starts from and, once trained, the learned values
per layer, the notes of its closed form (input-conditioned units: the fixed context they are drawn at), and
the URLs of its f(x) / f'(x) plot: ``/v1/experiments/{id}/plots/activations.svg?activation=LABEL`` (with the
learned curves) or ``/v1/catalog/activations/{name}/plot.svg``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

import pandas as pd
from sqlalchemy.orm import Session

from app import activation_shapes
from app.catalog import ACTIVATIONS
from app.reports.service import format_number
from app.results import service as results_service
from app.results.colours import colour_of
from app.results.diagnostics import learned_parameters_by_layer
from app.spec import ActivationSpec

# The formula the catalog gallery draws for ``custom`` (it has no formula of its own).
CATALOG_CUSTOM_EXAMPLE = "x * tanh(x)"


@dataclass(frozen=True)
class GalleryEntry:
    """One activation of a gallery page."""

    label: str
    name: str
    family: str
    description: str
    formula: str
    derivative: str
    colour: str
    parameters: list[tuple[str, str]]
    start: str
    learned: list[tuple[str, str]]
    notes: list[str]
    svg: str
    png: str
    reference: str = ""


@dataclass
class GalleryPage:
    """A gallery: its title, what it belongs to, and one entry per activation."""

    title: str
    intro: str
    entries: list[GalleryEntry]
    back: tuple[str, str] | None = None
    whole: tuple[str, str] | None = None
    notes: list[str] = field(default_factory=list)


def _values(values: Mapping[str, float]) -> str:
    return ", ".join(f"{name} = {format_number(float(value), 3)}" for name, value in values.items())


def _entry(spec: ActivationSpec, *, svg: str, png: str, learned: pd.DataFrame) -> GalleryEntry:
    info = ACTIVATIONS[spec.canonical_name]
    shape = activation_shapes.form(spec)
    start = activation_shapes.initial_coefficients(spec)
    label = spec.display_label
    of_label = learned[learned["activation"] == label] if not learned.empty else learned
    notes = [note for note in (shape.context_note, *shape.notes) if note]
    if info.can_learn and of_label.empty:
        notes.append("Not trained yet (or no learned values recorded): the plot shows the start only.")
    return GalleryEntry(
        label=label,
        name=spec.canonical_name,
        family=info.family,
        description=info.description,
        formula=str(spec.expression) if spec.canonical_name == "custom" else info.formula,
        derivative=shape.derivative_text,
        colour=colour_of(label),
        parameters=[(name, format_number(value)) for name, value in spec.resolved_params().items()],
        start=_values(start) if info.can_learn else "",
        learned=[(str(row.layer_name), _values(row.parameters)) for row in of_label.itertuples(index=False)],
        notes=notes,
        svg=svg,
        png=png,
        reference=info.reference,
    )


def experiment_gallery(*, session: Session, experiment_id: uuid.UUID) -> GalleryPage:
    """Every activation of the experiment, learned ones with their values per layer; NotFoundError when unknown."""
    tables = results_service.load_tables(session=session, experiment_id=experiment_id)
    learned = (
        learned_parameters_by_layer(tables.layers)
        if not tables.layers.empty
        else pd.DataFrame(columns=["activation", "layer_name", "parameters"])
    )
    base = f"/v1/experiments/{experiment_id}/plots/activations"
    entries = [
        _entry(
            spec,
            svg=f"{base}.svg?{urlencode({'activation': label})}",
            png=f"{base}.png?{urlencode({'activation': label})}",
            learned=learned,
        )
        for label, spec in tables.activations.items()
    ]
    return GalleryPage(
        title=f"{tables.experiment.name}: activation functions",
        intro="Each activation of the experiment as f(x) (left) and f'(x) (right) on [-4, 4], drawn from closed "
        "forms (the same functions the worker trains, checked against them to 1e-6). Learnable units are dashed "
        "at their start and, once trained, drawn as learned in each layer (mean over the seeds at their last "
        "epoch).",
        entries=entries,
        back=("the report", f"/experiments/{experiment_id}"),
        whole=("all on one image", f"{base}.svg"),
    )


def catalog_gallery() -> GalleryPage:
    """Every catalog activation at its default parameters (custom at an example formula)."""
    entries = []
    empty = pd.DataFrame(columns=["activation", "layer_name", "parameters"])
    for name in ACTIVATIONS:
        if name == "custom":
            spec = ActivationSpec(name=name, expression=CATALOG_CUSTOM_EXAMPLE)
            query = "?" + urlencode({"expression": CATALOG_CUSTOM_EXAMPLE})
        else:
            spec = ActivationSpec(name=name)
            query = ""
        base = f"/v1/catalog/activations/{quote(name)}/plot"
        entry = _entry(spec, svg=f"{base}.svg{query}", png=f"{base}.png{query}", learned=empty)
        if name == "custom":
            entry.notes.insert(0, f"Any formula over x; drawn here for the example {CATALOG_CUSTOM_EXAMPLE}.")
        entries.append(entry)
    return GalleryPage(
        title="Catalog: activation functions",
        intro="Every activation a spec may name, at its default parameters, as f(x) (left) and f'(x) (right) on "
        "[-4, 4]; learnable units at their start, input-conditioned ones at the fixed context their note states.",
        entries=entries,
        notes=["GET /v1/catalog lists the same activations with their parameters, bounds and aliases."],
    )
