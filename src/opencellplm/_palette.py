"""Colours for categories (cell types) in the pictures: up to 20 that stay easy to tell apart."""

from __future__ import annotations

#: Picked greedily from tab10, Kelly's colours of maximum contrast and scanpy's ``godsnot_102`` so that the first n,
#: for every n, lie as far apart as possible in CIELAB: any two of the 20 differ by a CIE76 delta E above 30 (tab10's
#: purple and pink: 28; tab20 pairs a dark and a light shade of each hue). Lightness 25-82: visible on white.
CATEGORY_COLOURS = (
    "#1f77b4",
    "#f3c300",
    "#ff34ff",
    "#be0032",
    "#008941",
    "#3b5dff",
    "#654522",
    "#ff90c9",
    "#4fc601",
    "#d16100",
    "#004d43",
    "#c2b280",
    "#17becf",
    "#9467bd",
    "#6b7900",
    "#4a3b53",
    "#f99379",
    "#a30059",
    "#809693",
    "#b903aa",
)


def category_colours(n: int) -> list:
    """``n`` colours for categories: :data:`CATEGORY_COLOURS` up to 20, else evenly spaced along ``turbo`` (beyond 20
    categories no palette keeps every pair apart; the legend is needed)."""
    if n <= len(CATEGORY_COLOURS):
        return list(CATEGORY_COLOURS[:n])
    from matplotlib import colormaps

    return [colormaps["turbo"](i / max(n - 1, 1)) for i in range(n)]
