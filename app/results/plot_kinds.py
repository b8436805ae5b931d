"""The names and descriptions of an experiment's plots, apart from the modules that draw them.

Importing this module imports nothing heavy: the experiment's status (``app.experiments.schemas``) links
every plot, and the worker, which imports that module, must not import matplotlib, pandas and scipy for it
(seconds at a worker's start, tens of seconds on a loaded machine; bench/RESULTS.md, Cold workers).
"""

from __future__ import annotations

PLOT_KINDS: dict[str, str] = {
    "learning-curves": "Loss and accuracy per epoch, train and test: cross-seed mean with a 95% bootstrap band.",
    "gradient-norms": "Mean gradient norm of each layer per epoch (log scale), one panel per activation.",
    "unit-health": "Dead and saturated unit fractions per epoch (mean over layers and seeds).",
    "final-metric": "The summary value of the metric per activation: cross-seed mean with its 95% CI and each seed.",
    "learned-functions": "Learnable activations: the learned function (mean over seeds) against its starting shape.",
}

GALLERY_PLOT_KINDS: dict[str, str] = {
    "activations": "Activation gallery: f(x) and f'(x) of every activation (learnable ones at the start and as "
    "learned per layer; input-conditioned ones at a stated fixed context).",
}
