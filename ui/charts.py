"""Altair charts the pages share: a labelled heat map."""

from __future__ import annotations

import altair as alt
import pandas as pd

MAX_LABELLED_CELLS = 400
"""Past this many cells the numbers would overlap; the tooltip still gives each one."""


def heatmap(
    frame: pd.DataFrame,
    *,
    x: str,
    y: str,
    value: str,
    diverging: bool = False,
    value_format: str = ".2f",
) -> alt.LayerChart:
    """`value` by (`x`, `y`): accuracy on a 0–1 sequential scale, or a signed score (Symbolic-MoE's ±1
    profile) on a diverging scale centred on 0."""
    if diverging:
        bound = float(frame[value].abs().max() or 1.0)
        scale = alt.Scale(scheme="redblue", domain=[-bound, bound])
    else:
        scale = alt.Scale(scheme="viridis", domain=[0, 1])
    base = alt.Chart(frame).encode(
        x=alt.X(f"{x}:N", title=None, axis=alt.Axis(labelAngle=-40, labelLimit=180)),
        y=alt.Y(f"{y}:N", title=None, axis=alt.Axis(labelLimit=260)),
    )
    cells = base.mark_rect().encode(
        color=alt.Color(f"{value}:Q", scale=scale, title=value),
        tooltip=[alt.Tooltip(f"{y}:N"), alt.Tooltip(f"{x}:N"), alt.Tooltip(f"{value}:Q", format=value_format)],
    )
    chart = cells
    if len(frame) <= MAX_LABELLED_CELLS:
        bright = f"datum['{value}'] > 0.6"  # viridis turns yellow: dark text there
        labels = base.mark_text(fontSize=10).encode(
            text=alt.Text(f"{value}:Q", format=value_format),
            color=alt.value("black") if diverging else alt.condition(bright, alt.value("black"), alt.value("white")),
        )
        chart = cells + labels
    return chart


def rows_height(n_rows: int, row_px: int = 24, extra_px: int = 90) -> int:
    """A chart height that gives each row (a heat map's, a bar chart's) room for its label."""
    return max(n_rows * row_px + extra_px, 160)
