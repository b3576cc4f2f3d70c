"""The registry of the personalised-FL benchmark: method name -> runner, colour family and one line of description.

A runner is a plain function ``run(ctx: Context) -> MethodResult`` (``benchmarks.personal.common``). Adding a row
is one line in ``METHODS``; the MEANet-FL rows live in ``benchmarks/personal/meanet.py`` and register as, e.g.::

    "meanet-fl-personal": MethodSpec(meanet.personal, "meanet", "MEANet-FL: FedAvg main block + per-device blocks"),

(``family`` picks the colours of ``benchmarks.plot_style``: ``meanet`` blues, ``fedavg`` greens, ``personal``
oranges/reds, ``local`` greys).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.personal import fedavg as fa
from benchmarks.personal import meanet
from benchmarks.personal import personalised as pers
from benchmarks.personal.common import Context, MethodResult
from benchmarks.personal.config import PersonalConfigError

Runner = Callable[[Context], MethodResult]


@dataclass(frozen=True)
class MethodSpec:
    run: Runner
    family: str  # meanet | fedavg | personal | local (benchmarks.plot_style.FAMILIES)
    description: str


METHODS: dict[str, MethodSpec] = {
    "meanet-fl-personal": MethodSpec(
        meanet.personal, "meanet", "FedAvg main block + per-device prior, hard classes, extension, gate"
    ),
    "meanet-fl-personal-prior": MethodSpec(
        meanet.personal_prior, "meanet", "ablation: the per-device class prior alone"
    ),
    "meanet-fl-personal-ext": MethodSpec(
        meanet.personal_extension, "meanet", "ablation: per-device hard classes + extension alone"
    ),
    "meanet-fl-global": MethodSpec(
        meanet.global_meanet, "meanet", "today's global MEANet: server's hard classes, averaged extension"
    ),
    "local-only": MethodSpec(pers.local_only, "local", "each device alone, same local epochs, no server"),
    "fedavg": MethodSpec(fa.fedavg, "fedavg", "FedAvg of the whole backbone, global model on every device"),
    "fedavg-ft": MethodSpec(fa.fedavg_ft, "fedavg", "FedAvg, then ft-epochs of local fine-tuning per device"),
    "fedper": MethodSpec(pers.fedper, "personal", "body shared, head kept on the device"),
    "fedrep": MethodSpec(pers.fedrep, "personal", "head epochs (body frozen), then body epochs; body shared"),
    "fedbabu": MethodSpec(pers.fedbabu, "personal", "body federated with the head frozen at init, then fine-tuned"),
    "ditto": MethodSpec(pers.ditto, "personal", "personal model pulled towards the FedAvg global model"),
}
"""Every method, in the order the report lists them."""


def resolve(names: tuple[str, ...]) -> tuple[str, ...]:
    """``names`` checked against the registry (empty: every method)."""
    if not names:
        return tuple(METHODS)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise PersonalConfigError(f"unknown methods {unknown}; valid: {', '.join(METHODS)} (or all)")
    return names
