"""Fault specifications for tests and demos: which edge client misbehaves, and how (the ``faults`` run-config key).

A spec is a comma-separated list of ``CLIENT:FAULT`` items, ``CLIENT`` being a client (partition) index::

    "0:nan,1:scale=100,2:shape"     client 0 sends NaN, client 1 weights x 100, client 2 arrays of the wrong shape
    ""                              no fault (the default)

The faults (applied by :mod:`fl_client.faults` to the arrays of every training reply of that client):

=============== =====================================================================================================
``nan``         one entry of the first floating edge array becomes NaN
``scale=K``     every floating edge array is multiplied by ``K`` (a finite number, e.g. 100: a boosted update)
``shape``       the first edge array with more than one row loses its last row (wrong shape)
``dtype``       every float32 edge array is sent as float64
``missing-key`` the last edge array is left out
``main-key``    an extra ``main.fc.weight`` entry (an update trying to overwrite the cloud's main block)
``crash``       the client raises mid-round instead of replying (its process survives; Flower sends an error reply)
``flip=K``      a lie inside the checks: the update's change is reversed and scaled, ``sent - K (update - sent)``
``claim=K``     a lie about the weight: the reply claims ``K`` times the examples it trained on
=============== =====================================================================================================

``claim=K`` combines with one array fault by ``+``, e.g. ``"0:flip=3+claim=1000"`` (an adversarial direction backed
by an inflated example count).

This module only parses and validates (pure Python, used by :mod:`meanet_core.config`); the client applies them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FAULT_KINDS: tuple[str, ...] = (
    "nan",
    "scale",
    "shape",
    "dtype",
    "missing-key",
    "main-key",
    "crash",
    "flip",
    "claim",
)
"""Every fault a client can be told to inject."""

_EXAMPLE = '"0:nan,1:scale=100,2:shape"'


@dataclass(frozen=True)
class Fault:
    """One client's fault: ``kind`` from :data:`FAULT_KINDS`; ``factor`` is ``K`` for ``scale=K``/``flip=K`` (else 1);
    ``claim`` multiplies the example count the client reports (``claim=K``, alone or after ``+``)."""

    kind: str
    factor: float = 1.0
    claim: float = 1.0

    def __str__(self) -> str:
        text = f"{self.kind}={self.factor:g}" if self.kind in _VALUED else self.kind
        if self.kind == "claim":
            return f"claim={self.claim:g}"
        return text + (f"+claim={self.claim:g}" if self.claim != 1.0 else "")


def parse_faults(spec: str, num_clients: int | None = None) -> dict[int, Fault]:
    """Parse a ``faults`` spec into ``{client index: Fault}``; ``""`` gives ``{}``.

    Raises
    ------
    ValueError
        For a malformed item, an unknown fault, a bad ``scale`` factor, a repeated client, or (when ``num_clients`` is
        given) a client index outside ``0..num_clients-1``; the message names the item and shows the expected form.
    """
    if not isinstance(spec, str):
        raise ValueError(f'faults must be a string like {_EXAMPLE} (or "" for none); got {spec!r}')
    faults: dict[int, Fault] = {}
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            if spec.strip():
                raise ValueError(f"faults {spec!r}: empty item; expected CLIENT:FAULT items separated by commas")
            continue
        client_text, sep, fault_text = item.partition(":")
        if not sep:
            raise ValueError(f"faults item {item!r} has no ':'; expected CLIENT:FAULT, e.g. {_EXAMPLE}")
        try:
            client = int(client_text.strip())
        except ValueError:
            raise ValueError(
                f"faults item {item!r}: client {client_text.strip()!r} is not an integer index; e.g. {_EXAMPLE}"
            ) from None
        if client < 0 or (num_clients is not None and client >= num_clients):
            limit = "a non-negative index" if num_clients is None else f"an index in 0..{num_clients - 1}"
            raise ValueError(f"faults item {item!r}: client {client} is not {limit} (num-clients={num_clients})")
        if client in faults:
            raise ValueError(f"faults item {item!r}: client {client} already has a fault ({faults[client]})")
        faults[client] = _parse_fault(item, fault_text.strip())
    return faults


_VALUED = ("scale", "flip", "claim")


def _parse_fault(item: str, text: str) -> Fault:
    first, plus, rest = (part.strip() for part in text.partition("+"))
    fault = _parse_one(item, first)
    if not plus:
        return fault
    extra = _parse_one(item, rest)
    if extra.kind != "claim" or fault.kind == "claim":
        raise ValueError(f"faults item {item!r}: only 'claim=K' combines with another fault, as in 'flip=3+claim=1000'")
    return Fault(fault.kind, fault.factor, extra.claim)


def _parse_one(item: str, text: str) -> Fault:
    kind, sep, arg = (part.strip() for part in text.partition("="))
    if kind not in FAULT_KINDS:
        raise ValueError(f"faults item {item!r}: unknown fault {kind!r}; expected one of {', '.join(FAULT_KINDS)}")
    if kind not in _VALUED:
        if sep:
            raise ValueError(f"faults item {item!r}: {kind!r} takes no '=value' (only {', '.join(_VALUED)} do)")
        return Fault(kind)
    try:
        factor = float(arg)
    except ValueError:
        raise ValueError(f"faults item {item!r}: {kind} needs a number, as in '{kind}=100'; got {arg!r}") from None
    if not math.isfinite(factor):
        raise ValueError(f"faults item {item!r}: the {kind} factor must be finite (use 'nan' for NaN); got {arg!r}")
    if kind == "claim":
        if factor <= 0:
            raise ValueError(f"faults item {item!r}: claim needs a positive multiple; got {arg!r}")
        return Fault("claim", 1.0, factor)
    return Fault(kind, factor)
