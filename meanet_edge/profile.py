"""A device profile: energy from measurement, beside the MACs x joules-per-MAC model.

``meanet edge bench`` measures, on the machine at hand, the wall time per input of each block of an edge package
(the main graph; the adaptive + extension graphs) at batch 1 (a camera's frame) and at a batch, and multiplies it by
a *stated* power draw of the device while it computes (``--power-watts``: the measurement gives the seconds, the
user's datasheet or power meter the watts). An offloaded input adds the uplink model of :mod:`meanet_edge.cost`
(Huang et al.'s LTE power model), the same one the MACs model uses. So

    energy(input) = power_w x (main_s + ran_extension x extension_s) + transmission(bytes sent)

The profile is a small JSON file; ``meanet edge predict --profile FILE`` reports both energies, each named.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meanet_edge.cost import CostConfig, time_per_call
from meanet_edge.runtime import EdgePredictions, EdgeRuntime

PROFILE_FORMAT = "meanet-fl/device-profile/1"


@dataclass(frozen=True)
class DeviceProfile:
    """Measured seconds per input of each block, at batch 1 and at ``batch_size``, and the stated power."""

    device: str  # the machine it was measured on (CPU, cores)
    package: str  # the manifest digest of the package measured
    precision: str  # float32 | int8
    threads: int  # ONNX Runtime intra-op threads (0 = its default)
    batch_size: int
    main_s: float  # per input at batch_size
    extension_s: float  # adaptive + extension, per input at batch_size
    main_s_batch1: float
    extension_s_batch1: float
    power_w: float  # stated: the device's power draw while computing
    format: str = PROFILE_FORMAT

    def seconds(self, batch_size: int) -> tuple[float, float]:
        """(main, adaptive + extension) seconds per input for a run at ``batch_size`` (batch 1 or the batch)."""
        if batch_size <= 1:
            return self.main_s_batch1, self.extension_s_batch1
        return self.main_s, self.extension_s

    def energy(self, pred: EdgePredictions, cost: CostConfig, batch_size: int) -> np.ndarray:
        """Joules per input: measured compute seconds x stated power, plus the uplink model for what was sent."""
        main_s, ext_s = self.seconds(batch_size)
        compute = self.power_w * (main_s + pred.ran_extension.astype(np.float64) * ext_s)
        return compute + cost.transmission_energy(pred.bytes_sent.astype(np.float64))

    def describe(self) -> str:
        main_s, ext_s = self.main_s_batch1, self.extension_s_batch1
        return (
            f"measured on {self.device}: main {main_s * 1e3:.2f} ms, extension {ext_s * 1e3:.2f} ms per input at "
            f"batch 1 ({self.precision}) x {self.power_w:g} W stated power, + the LTE uplink model"
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(asdict(self), indent=2))
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DeviceProfile:
        path = Path(path)
        try:
            values: dict[str, Any] = json.loads(path.read_text())
            if values.get("format") != PROFILE_FORMAT:
                raise ValueError(f"format {values.get('format')!r}, expected {PROFILE_FORMAT!r}")
            return cls(**values)
        except FileNotFoundError:
            raise
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"{path} is not a device profile written by meanet edge bench ({e}); measure one with "
                "meanet edge bench --out FILE"
            ) from e


def _per_input(fn: Any, n: int, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls (after one warm-up), divided by the batch ``n``."""
    return time_per_call(fn, repeats) / n


def device_name() -> str:
    cpu = platform.processor() or platform.machine()
    try:  # Linux: the model name is more telling than "x86_64"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs"


def measure(
    runtime: EdgeRuntime, *, power_w: float, batch_size: int = 64, repeats: int = 20, threads: int = 0
) -> DeviceProfile:
    """Time each block of ``runtime``'s package on random inputs, at batch 1 and ``batch_size``."""
    if power_w <= 0:
        raise ValueError(f"--power-watts must be the device's power draw in watts (> 0); got {power_w}")
    side = runtime.input_size
    rng = np.random.default_rng(0)
    times: dict[int, tuple[float, float]] = {}
    for n in (1, batch_size):
        x = rng.random((n, 3, side, side), dtype=np.float32)
        logits, features = runtime.main(x)
        main_s = _per_input(lambda x=x: runtime.main(x), n, repeats)
        ext_s = _per_input(lambda x=x, f=features, lg=logits: runtime.extension(x, f, lg), n, repeats)
        times[n] = (main_s, ext_s)
    from meanet_edge.package import manifest_hash

    return DeviceProfile(
        device=device_name(),
        package=manifest_hash(runtime.package.manifest).hex()[:16],
        precision=str(runtime.package.manifest.get("precision", "?")),
        threads=threads,
        batch_size=batch_size,
        main_s=times[batch_size][0],
        extension_s=times[batch_size][1],
        main_s_batch1=times[1][0],
        extension_s_batch1=times[1][1],
        power_w=power_w,
    )


__all__ = ["PROFILE_FORMAT", "DeviceProfile", "device_name", "measure"]
