"""One colour per activation label, the same in every experiment and every plot.

Catalog names have fixed colours; any other label (a custom formula, a configured variant such as
``leaky_relu_0.2``) gets a colour derived from a hash of the label, so it never depends on the position
of the activation in a spec. Static plots (matplotlib) and the report read the colours from here.
"""

from __future__ import annotations

import colorsys
import hashlib
from collections.abc import Sequence

# Fixed colours of the catalog's activations: distinct hues, related activations not side by side.
CATALOG_COLOURS: dict[str, str] = {
    "relu": "#1f77b4",
    "sigmoid": "#d62728",
    "tanh": "#2ca02c",
    "gelu": "#ff7f0e",
    "silu": "#9467bd",
    "leaky_relu": "#17becf",
    "elu": "#8c564b",
    "selu": "#e377c2",
    "mish": "#bcbd22",
    "softplus": "#7f7f7f",
    "hardswish": "#393b79",
    "softsign": "#ad494a",
    "hardtanh": "#637939",
    "relu6": "#6baed6",
    "celu": "#8c6d31",
    "prelu": "#843c39",
    "swish_beta": "#7b4173",
    "pau": "#e6550d",
    "dyrelu": "#3182bd",
    "meta_acon": "#31a354",
}


def colour_of(label: str) -> str:
    """The colour of an activation label as '#rrggbb': the catalog's fixed colour, else one from the label's hash."""
    fixed = CATALOG_COLOURS.get(label)
    if fixed is not None:
        return fixed
    digest = int.from_bytes(hashlib.sha256(label.encode("utf-8")).digest()[:4], "big")
    hue = digest / 2**32
    lightness = 0.38 + 0.14 * ((digest >> 8) % 3) / 2
    red, green, blue = colorsys.hls_to_rgb(hue, lightness, 0.65)
    return f"#{round(red * 255):02x}{round(green * 255):02x}{round(blue * 255):02x}"


def colours_of(labels: Sequence[str]) -> dict[str, str]:
    """Each label's colour, in the given order."""
    return {label: colour_of(label) for label in labels}
