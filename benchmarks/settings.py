"""What the benchmarks' settings dataclasses share: built from plain values (JSON) with unknown keys refused, and
written back, the ``methods`` and ``seeds`` lists as tuples inside and lists outside."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, ClassVar, TypeVar

T = TypeVar("T", bound="RunSettings")


class RunSettings:
    """Mixin of a frozen settings dataclass with ``methods`` and ``seeds`` tuples; ``error`` is the exception its
    refusals raise."""

    error: ClassVar[type[ValueError]] = ValueError

    @classmethod
    def from_dict(cls: type[T], values: dict[str, Any]) -> T:
        """Build from plain values (JSON), rejecting unknown keys."""
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise cls.error(f"unknown benchmark setting(s) {unknown}; valid: {sorted(known)}")
        v = dict(values)
        for key in ("methods", "seeds"):
            if key in v:
                v[key] = tuple(v[key])
        return cls(**v)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)  # type: ignore[call-overload]
        d["methods"], d["seeds"] = list(d["methods"]), list(d["seeds"])
        return d
