"""Adaptive inference from an edge package with ONNX Runtime: the main graph on every input, the adaptive and
extension graphs only on the inputs the policy routes there, the cloud only for the complex ones.

:class:`EdgeRuntime` is the device's counterpart of :class:`meanet_core.inference.engine.AdaptiveEngine` (same
routes, same cost model: :mod:`meanet_edge.cost`), in numpy. It builds its ONNX Runtime sessions from a verified
:class:`~meanet_edge.package.EdgePackage` only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any, Protocol

import numpy as np

from meanet_edge.cloud import CloudAnswer
from meanet_edge.cost import CostConfig
from meanet_edge.package import BLOCKS, EdgePackage
from meanet_edge.policy import EdgePolicy, softmax
from meanet_edge.report import EXIT_CLOUD, EXIT_EXTENSION, EXIT_MAIN, EXIT_NAMES


class ArrayCloud(Protocol):
    """Where the complex inputs go (:class:`meanet_edge.cloud.CloudClient`): ``classify_array`` takes uint8 images
    (n, 3, S, S) and answers labels and ``ok`` (False where the cloud did not answer: the edge's answer stands)."""

    macs_per_image: int

    def classify_array(self, images: np.ndarray) -> CloudAnswer: ...


class NoCloud:
    """The cloud of a device that has none: nothing is sent; the inputs routed there keep the edge's answer."""

    macs_per_image = 0

    def classify_array(self, images: np.ndarray) -> CloudAnswer:
        return CloudAnswer.unanswered(images.shape[0])


@dataclass
class EdgePredictions:
    """Per-input results of one batch, as numpy arrays of length n (the fields of the torch engine's
    ``Predictions``)."""

    labels: np.ndarray  # int64 predicted class
    exit: np.ndarray  # int8: EXIT_MAIN, EXIT_EXTENSION or EXIT_CLOUD
    edge_macs: np.ndarray  # int64 MACs executed on the device
    cloud_macs: np.ndarray  # int64 MACs executed in the cloud
    bytes_sent: np.ndarray  # int64
    energy_joule: np.ndarray  # float64 edge energy: MACs x joules per MAC + transmission
    latency_s: np.ndarray  # float64 measured: the batch's edge time shared by MACs + the cloud request's time
    fallback: np.ndarray  # bool: routed to the cloud, which did not answer; the edge's answer stands
    edge_confidence: np.ndarray  # float32 max softmax probability of the last edge exit run
    ran_extension: np.ndarray  # bool: the input ran the adaptive + extension graphs

    @staticmethod
    def concat(parts: list[EdgePredictions]) -> EdgePredictions:
        if not parts:
            raise ValueError("no predictions to concatenate")
        return EdgePredictions(
            **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(parts[0])}
        )

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def session_options(threads: int | None = None) -> Any:
    """ONNX Runtime session options: every graph optimisation, ``threads`` intra-op threads (None: ONNX
    Runtime's default, one per physical core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: a device log is not the place for optimizer notes
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


class EdgeRuntime:
    """Batched adaptive inference over an edge package's graphs, a policy and an optional cloud."""

    def __init__(
        self,
        package: EdgePackage,
        policy: EdgePolicy,
        cloud: ArrayCloud | None = None,
        cost: CostConfig | None = None,
        *,
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        self.package = package
        self.policy = policy
        self.cloud = cloud if cloud is not None else NoCloud()
        self.cost = cost or CostConfig()
        options = session_options(threads)
        self.sessions = {
            b: ort.InferenceSession(package.graphs[b], options, providers=["CPUExecutionProvider"]) for b in BLOCKS
        }
        m = package.manifest
        self.input_size = int(m["input_size"])
        self.num_classes = int(m["num_classes"])
        self.hard_classes = np.asarray(m["hard_classes"], dtype=np.int64)
        self.hard_index = np.full(self.num_classes, -1, dtype=np.int64)
        self.hard_index[self.hard_classes] = np.arange(len(self.hard_classes))
        costs = m["costs"]
        self.main_macs = int(costs["main_macs"])
        self.extension_macs = int(costs["adaptive_macs"]) + int(costs["extension_macs"])
        self.image_bytes = self.cost.input_bytes(3, self.input_size, self.input_size)

    # ------------------------------------------------------------------------------------------------ blocks
    def main(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The main graph: float images (B, 3, S, S) in [0, 1] -> (logits (B, K), features (B, C, h, w))."""
        logits, features = self.sessions["main"].run(None, {"images": x})
        return logits, features

    def extension(self, x: np.ndarray, features: np.ndarray, main_logits: np.ndarray) -> np.ndarray:
        """The adaptive then the extension graph on the inputs routed there: logits over the hard classes (B, H)."""
        (adaptive,) = self.sessions["adaptive"].run(None, {"images": x})
        (logits,) = self.sessions["extension"].run(
            None,
            {
                "features": features,
                "adaptive": adaptive,
                "main_hard_logits": np.ascontiguousarray(main_logits[:, self.hard_classes]),
            },
        )
        return logits

    # ------------------------------------------------------------------------------------------------ routing
    def check(self, images: np.ndarray) -> None:
        """Raise a clear error unless ``images`` is a uint8 (B, 3, S, S) batch of this package's size."""
        side = self.input_size
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            found = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
            raise TypeError(f"images must be a uint8 numpy array (B, 3, {side}, {side}); got {found}")
        if images.ndim != 4 or images.shape[1:] != (3, side, side):
            raise ValueError(
                f"images must have shape (B, 3, {side}, {side}); got {images.shape}: this package takes "
                f"{side}x{side} RGB images, channels first"
            )

    def predict(self, images: np.ndarray) -> EdgePredictions:
        """Route a batch of uint8 images (B, 3, S, S): main exit, extension, cloud."""
        self.check(images)
        n = images.shape[0]
        t0 = time.perf_counter()
        x = images.astype(np.float32) * np.float32(1 / 255)
        logits, features = self.main(x)
        probs = softmax(logits)
        labels = probs.argmax(axis=1).astype(np.int64)
        confidence = probs[np.arange(n), labels].astype(np.float32)
        top1_hard = self.hard_index[labels] >= 0
        to_cloud, to_ext = self.policy.after_main(probs, top1_hard)
        exits = np.full(n, EXIT_MAIN, dtype=np.int8)
        ext_idx = np.flatnonzero(to_ext)
        if ext_idx.size:
            ext_probs = softmax(self.extension(x[ext_idx], features[ext_idx], logits[ext_idx]))
            pos = ext_probs.argmax(axis=1)
            labels[ext_idx] = self.hard_classes[pos]
            confidence[ext_idx] = ext_probs[np.arange(ext_idx.size), pos]
            exits[ext_idx] = EXIT_EXTENSION
            to_cloud[ext_idx] |= self.policy.after_extension(ext_probs)
        edge_s = time.perf_counter() - t0
        cloud_idx = np.flatnonzero(to_cloud)
        sent = np.zeros(n, dtype=bool)
        fallback = np.zeros(n, dtype=bool)
        cloud_s = 0.0
        if cloud_idx.size:
            t1 = time.perf_counter()
            answer = self.cloud.classify_array(np.ascontiguousarray(images[cloud_idx]))
            cloud_s = time.perf_counter() - t1
            ok = answer.ok.astype(bool)
            labels[cloud_idx[ok]] = answer.labels[ok]
            exits[cloud_idx[ok]] = EXIT_CLOUD
            sent[cloud_idx[ok]] = True
            fallback[cloud_idx[~ok]] = True
        return self._priced(labels, exits, to_ext, sent, fallback, confidence, edge_s, cloud_s, to_cloud)

    def _priced(
        self,
        labels: np.ndarray,
        exits: np.ndarray,
        ran_extension: np.ndarray,
        sent: np.ndarray,
        fallback: np.ndarray,
        confidence: np.ndarray,
        edge_s: float,
        cloud_s: float,
        asked: np.ndarray,
    ) -> EdgePredictions:
        """Each input's costs from its route (as the torch engine's ``priced``), and its measured latency: the
        batch's edge time shared in proportion to the MACs each input ran, plus the cloud request's wall time for
        the inputs that were offloaded (answered or not)."""
        edge_macs = self.main_macs + ran_extension.astype(np.int64) * self.extension_macs
        cloud_macs = (exits == EXIT_CLOUD).astype(np.int64) * int(self.cloud.macs_per_image)
        bytes_sent = sent.astype(np.int64) * self.image_bytes
        energy = edge_macs * self.cost.joules_per_mac + self.cost.transmission_energy(bytes_sent.astype(np.float64))
        latency = edge_s * edge_macs / edge_macs.sum() + asked * cloud_s
        return EdgePredictions(
            labels, exits, edge_macs, cloud_macs, bytes_sent, energy, latency, fallback, confidence, ran_extension
        )


__all__ = [
    "EXIT_CLOUD",
    "EXIT_EXTENSION",
    "EXIT_MAIN",
    "EXIT_NAMES",
    "ArrayCloud",
    "EdgePredictions",
    "EdgeRuntime",
    "NoCloud",
    "session_options",
]
