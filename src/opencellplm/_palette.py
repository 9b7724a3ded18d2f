"""Colours for categories (cell types) in the pictures: up to 20 that stay easy to tell apart."""

from __future__ import annotations

#: Picked greedily from tab10, Kelly's colours of maximum contrast and scanpy's ``godsnot_102`` (greys and colours
#: too pale or too dark on white left out) so that the first n, for every n, lie as far apart as they can by CIEDE2000:
#: any two of the first 10 differ by a delta E00 above 24, of all 20 above 17 (tab10's closest pair: 16, tab20 pairs a
#: dark and a light shade of each hue). The 10th is a dark wine: the light blue first picked there was the first 10's
#: closest pair with the 1st (22.6), which in PBMC data (types in alphabetical order) put monocytes beside dendritic
#: cells.
CATEGORY_COLOURS = (
    "#1f77b4",
    "#bcbd22",
    "#ff4a46",
    "#b903aa",
    "#654522",
    "#008856",
    "#17becf",
    "#ff90c9",
    "#f38400",
    "#6b002c",
    "#8fb0ff",
    "#6b7900",
    "#ba0900",
    "#a1c299",
    "#a079bf",
    "#ffaa92",
    "#604e97",
    "#4fc601",
    "#ff34ff",
    "#ff2f80",
)


def category_colours(n: int) -> list:
    """``n`` colours for categories: :data:`CATEGORY_COLOURS` up to 20, else evenly spaced along ``turbo`` (beyond 20
    categories no palette keeps every pair apart; the legend is needed)."""
    if n <= len(CATEGORY_COLOURS):
        return list(CATEGORY_COLOURS[:n])
    from matplotlib import colormaps

    return [colormaps["turbo"](i / max(n - 1, 1)) for i in range(n)]
