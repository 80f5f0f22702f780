"""Matplotlib primitives shared by the analyses' figures and the report: PNG encoding, literal
text, heatmap annotation.

Figures are drawn with matplotlib's object API (`matplotlib.figure.Figure` on an Agg canvas),
never pyplot: no global figure registry, no GUI backend chosen from the environment, and safe
to call from several threads. This module imports nothing of forgetlab: it is the bottom layer.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100


class NothingToDraw(ValueError):
    """The input is well formed but has nothing to plot (e.g. no weight changed)."""


def new_figure(**kwargs) -> Figure:
    """A new `matplotlib.figure.Figure`. Matplotlib is imported here, on the first drawing, not
    with the analyses: every command line start imports them (for the `analyze` flags)."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def png(fig: Figure) -> bytes:
    """The figure as PNG bytes; the same inputs give the same bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # attach the Agg canvas explicitly: PNG output without any backend
    buf = io.BytesIO()
    # No "Software" metadata: the same inputs give the same bytes.
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def literal(value: object) -> str:
    """A user string as literal text: matplotlib would parse `$...$` as mathtext."""
    return str(value).replace("$", r"\$")


def annotate(ax, values: np.ndarray, fmt: str, dark: np.ndarray, size: float = 8) -> None:
    """Write each cell's value on a heatmap; white text where the cell colour is dark."""
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            color = "white" if dark[i, j] else "black"
            ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=size, color=color)
