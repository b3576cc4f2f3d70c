"""Fault injection on the edge's training reply, for tests and demos (the ``faults`` run-config key).

:func:`apply_fault` is pure (numpy in, numpy out); :func:`inject` is the one-line hook ``fl_client.app.train`` calls
where it builds the reply's ``ArrayRecord``. The faults and the spec grammar are described in
:mod:`meanet_core.faults`. With ``faults = ""`` (the default) :func:`inject` returns the record untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord

from meanet_core.faults import Fault, parse_faults

MAIN_KEY = "main.fc.weight"
"""The main-block entry the ``main-key`` fault adds to an update."""


class InjectedCrash(RuntimeError):
    """Raised by the ``crash`` fault: the client dies mid-round instead of replying."""


def apply_fault(
    arrays: Mapping[str, npt.NDArray[Any]],
    fault: Fault,
    client: int = -1,
    sent: Mapping[str, npt.NDArray[Any]] | None = None,
) -> dict[str, npt.NDArray[Any]]:
    """The reply arrays as a misbehaving client would send them; ``arrays`` is left unchanged.

    ``sent`` (the arrays the server sent, by key) is needed by ``flip=K``, which reverses the update's change.

    Raises
    ------
    InjectedCrash
        For the ``crash`` fault.
    ValueError
        If ``arrays`` has no entry the fault could corrupt (e.g. no floating array for ``nan``).
    """
    out = {k: np.array(v, copy=True) for k, v in arrays.items()}
    floating = [k for k, v in out.items() if np.issubdtype(v.dtype, np.floating) and v.size > 0]
    if fault.kind == "crash":
        raise InjectedCrash(f"fault injection: client {client} crashed mid-round (fault 'crash')")
    if fault.kind == "missing-key":
        if not out:
            raise ValueError("missing-key: the reply has no array to leave out")
        out.pop(list(out)[-1])
        return out
    if fault.kind == "main-key":
        out[MAIN_KEY] = np.zeros((1, 1), dtype=np.float32)
        return out
    if fault.kind == "shape":
        key = next((k for k, v in out.items() if v.ndim >= 1 and v.shape[0] > 1), None)
        if key is None:
            raise ValueError("shape: the reply has no array with more than one row to cut")
        out[key] = np.ascontiguousarray(out[key][:-1])
        return out
    if fault.kind == "claim":
        return out  # the arrays are honest; only the example count lies (see claimed)
    if not floating:
        raise ValueError(f"{fault}: the reply has no floating array to corrupt")
    if fault.kind == "flip":
        if sent is None:
            raise ValueError("flip: the arrays the server sent are needed to reverse the update's change")
        for key in floating:
            base = np.asarray(sent[key], dtype=np.float64)
            out[key] = (base - fault.factor * (out[key].astype(np.float64) - base)).astype(out[key].dtype)
        return out
    if fault.kind == "nan":
        first = out[floating[0]]
        first.reshape(-1)[0] = np.nan  # a fresh contiguous copy: reshape is a view
    elif fault.kind == "scale":
        for key in floating:
            out[key] = (out[key] * fault.factor).astype(out[key].dtype)
    elif fault.kind == "dtype":
        for key in floating:
            out[key] = out[key].astype(np.float64)
    else:
        raise ValueError(f"unknown fault {fault.kind!r}")
    return out


def inject(
    record: ArrayRecord, faults: str, client: int, sent: Mapping[str, npt.NDArray[Any]] | None = None
) -> ArrayRecord:
    """``record`` with ``client``'s fault from the spec ``faults`` applied (the record itself if it has none)."""
    fault = parse_faults(faults).get(client)
    if fault is None:
        return record
    arrays = apply_fault({k: v.numpy() for k, v in record.items()}, fault, client, sent)
    return ArrayRecord({k: Array(np.array(v, order="C")) for k, v in arrays.items()})  # 0-d stays 0-d


def claimed(num_examples: int, faults: str, client: int) -> float:
    """The example count ``client`` reports: the true count, times ``K`` under a ``claim=K`` fault."""
    fault = parse_faults(faults).get(client)
    return float(num_examples) * (fault.claim if fault is not None else 1.0)
