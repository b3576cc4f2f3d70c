"""Cost of a route through the edge-cloud system: MACs, bytes sent, energy and latency.

Energy on the edge device = compute + transmission.

* Compute: ``joules_per_mac`` times the MACs executed on the device. The default, 1e-10 J/MAC (10 GMAC per joule),
  is a mobile-SoC order of magnitude; set it for your device.
* Transmission of an offloaded input follows the LTE uplink power model of Huang et al., "A Close Examination of
  Performance and Power Characteristics of 4G LTE Networks", MobiSys 2012 (Table 4 / Section 5): uplink power
  ``P_u = alpha_u * t_u + beta`` with ``alpha_u = 438.39 mW/Mbps`` and ``beta = 1288.04 mW``, ``t_u`` the uplink
  throughput in Mbit/s. Sending ``b`` bits at ``t_u`` takes ``b / t_u`` seconds, so the energy is
  ``P_u * b / t_u``. The default throughput, 5.64 Mbit/s, is the median LTE uplink throughput measured in that paper.
  The tail energy after a transfer is left out (it is amortised when offloads are batched); add it through
  ``tail_energy_joule`` if your device sends rarely.

Latency of a route = measured compute time of the blocks it runs (see ``measure_route_latency``) + for offloaded
inputs the uplink time ``b / t_u`` and a round-trip time (default 70 ms, the LTE RTT order of Huang et al.).

Plain Python (it lives in the edge runtime, which has no torch): the methods take numbers or arrays, numpy's or
torch's, alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

Amount = Any  # a number, or an array of numbers (numpy's or torch's): the same arithmetic applies


@dataclass(frozen=True)
class CostConfig:
    """Constants of the cost model; every one can be changed (``CostConfig.from_dict`` rejects unknown keys)."""

    joules_per_mac: float = 1e-10
    uplink_alpha_mw_per_mbps: float = 438.39  # Huang et al. 2012, LTE uplink
    uplink_beta_mw: float = 1288.04  # Huang et al. 2012, LTE uplink
    uplink_throughput_mbps: float = 5.64  # Huang et al. 2012, median LTE uplink throughput
    rtt_s: float = 0.070
    tail_energy_joule: float = 0.0
    bytes_per_pixel_channel: int = 1  # inputs are offloaded as uint8

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"cost setting {f.name} must be a non-negative number; got {value!r}")
        if self.uplink_throughput_mbps <= 0:
            raise ValueError("cost setting uplink_throughput_mbps must be > 0 (Mbit/s)")

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> CostConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown cost setting(s) {unknown}; valid: {sorted(known)}")
        return cls(**values)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    # -------------------------------------------------------------------------------------------- energy
    @property
    def uplink_power_w(self) -> float:
        return (self.uplink_alpha_mw_per_mbps * self.uplink_throughput_mbps + self.uplink_beta_mw) / 1000.0

    @property
    def joules_per_bit(self) -> float:
        return self.uplink_power_w / (self.uplink_throughput_mbps * 1e6)

    def input_bytes(self, channels: int, height: int, width: int) -> int:
        return channels * height * width * self.bytes_per_pixel_channel

    def compute_energy(self, macs: Amount) -> Amount:
        return macs * self.joules_per_mac

    def transmission_energy(self, num_bytes: Amount) -> Amount:
        return num_bytes * 8 * self.joules_per_bit + (num_bytes > 0) * self.tail_energy_joule

    def uplink_seconds(self, num_bytes: Amount) -> Amount:
        return num_bytes * 8 / (self.uplink_throughput_mbps * 1e6) + (num_bytes > 0) * self.rtt_s


@dataclass(frozen=True)
class RouteLatency:
    """Measured wall-clock seconds per image of each block on this machine, at a given batch size."""

    main_s: float
    extension_s: float  # adaptive + extension
    cloud_s: float  # cloud model compute (where it runs: in-process here)
    batch_size: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def time_per_call(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``fn()``."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return samples[len(samples) // 2]
