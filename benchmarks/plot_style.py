"""Colours, line styles and markers that keep a plot of 20+ methods readable: one colour family per kind of method
(MEANet-FL blues, FedAvg greens, personalised oranges/reds, bounds and local baselines greys), line styles and
markers within a family, the legend outside the axes. Shared by the benchmarks' reports.

    style = styles({name: family_of(name) for name in names})     # or families from a registry
    ax.plot(xs, ys, color=style[name].color, linestyle=style[name].linestyle, marker=style[name].marker)
    legend_outside(ax)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

FAMILIES: dict[str, str] = {
    "meanet": "Blues",
    "fedavg": "Greens",
    "personal": "OrRd",
    "local": "Greys",
    "other": "Purples",
}
"""Kind of method -> matplotlib colour map its members' colours come from."""
FAMILY_TITLES = {
    "meanet": "MEANet-FL",
    "fedavg": "FedAvg",
    "personal": "personalised FL",
    "local": "bounds / local",
    "other": "other",
}
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
BOUNDS = ("local-only", "edge-only", "cloud-only", "naive", "joint", "centralised")


@dataclass(frozen=True)
class Style:
    color: tuple[float, float, float, float]
    linestyle: str
    marker: str

    def kwargs(self) -> dict[str, Any]:
        """For ``ax.plot``: colour, line style and marker."""
        return {"color": self.color, "linestyle": self.linestyle, "marker": self.marker}


def family_of(name: str) -> str:
    """A family guessed from a method's name (``meanet-*`` MEANet, ``fedavg*`` FedAvg, the bounds and local
    baselines grey, ``fed*``/``ditto``/``per*`` personalised), for reports without a registry."""
    n = name.lower()
    if n.startswith("meanet"):
        return "meanet"
    if n.startswith("fedavg"):
        return "fedavg"
    if n in BOUNDS or n.startswith(("local", "joint", "naive")):
        return "local"
    if n.startswith(("fed", "ditto", "per", "pfed", "scaffold", "apfl")):
        return "personal"
    return "other"


def styles(families: Mapping[str, str]) -> dict[str, Style]:
    """A style per method (``{name: family}``, in plotting order): the family's colour map sampled from mid to dark
    (``n`` members get ``n`` shades), line styles and markers cycling within the family, so two members of one family
    differ in shade, line and marker."""
    members: dict[str, list[str]] = {}
    for name, family in families.items():
        members.setdefault(family if family in FAMILIES else "other", []).append(name)
    out: dict[str, Style] = {}
    for family, names in members.items():
        cmap = plt.get_cmap(FAMILIES[family])
        shades = np.linspace(0.85, 0.45, len(names)) if len(names) > 1 else [0.7]
        if family == "local":  # greys: keep them dark enough to read on white
            shades = np.linspace(0.9, 0.55, len(names)) if len(names) > 1 else [0.75]
        for j, name in enumerate(names):
            rgba = tuple(float(c) for c in cmap(float(shades[j])))
            out[name] = Style(
                (rgba[0], rgba[1], rgba[2], rgba[3]), LINESTYLES[j % len(LINESTYLES)], MARKERS[j % len(MARKERS)]
            )
    return out


def legend_outside(ax: Any, *, fontsize: int = 7, title: str | None = None) -> None:
    """The legend to the right of the axes (call before ``tight_layout``/``savefig(bbox_inches="tight")``)."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=fontsize, frameon=False, title=title)
