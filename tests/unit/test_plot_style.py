"""The benchmarks' colour families: one colour map per kind of method, and every method told apart."""

from __future__ import annotations

from benchmarks.plot_style import FAMILIES, family_of, styles


def test_families_from_names_cover_both_benchmarks() -> None:
    assert family_of("meanet-fl-personal") == family_of("meanet-fl-main-lwf") == "meanet"
    assert family_of("fedavg-ft") == family_of("fedavg-cloud-last-replay") == "fedavg"
    assert family_of("fedper") == family_of("fedrep") == family_of("ditto") == "personal"
    assert family_of("local-only") == family_of("joint") == family_of("cloud-only") == "local"
    assert family_of("something-new") == "other"


def test_twenty_four_methods_get_distinct_styles_in_their_family_colours() -> None:
    names = {f"{family}-{i}": family for family in FAMILIES for i in range(5)}  # 25 methods, 5 per family
    style = styles(names)
    assert len({(s.color, s.linestyle, s.marker) for s in style.values()}) == len(names)
    for family in FAMILIES:  # within a family: different shades, lines and markers
        members = [style[f"{family}-{i}"] for i in range(5)]
        assert len({s.color for s in members}) == len({s.marker for s in members}) == 5
    blue, green = style["meanet-0"].color, style["fedavg-0"].color
    assert blue[2] > blue[1] and green[1] > green[0] and green[1] > green[2]  # blues are blue, greens green
    assert set(style["local-0"].kwargs()) == {"color", "linestyle", "marker"}
