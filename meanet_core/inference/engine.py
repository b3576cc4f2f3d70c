"""The adaptive inference engine: each sample computes only the blocks its route needs.

``AdaptiveEngine.predict`` runs the main block on the whole batch, the adaptive + extension blocks only on the
samples the policy routes there, and sends only the complex samples (as uint8 images) to a ``CloudBackend``. Every
prediction carries its exit, the MACs it executed on the edge and in the cloud, the bytes it sent, its edge energy,
an estimated latency and the confidence (max softmax) of the last edge exit it ran.

Costs are computed in one place, ``priced``: from each sample's route (exit, whether it ran the extension, whether
the cloud computed it and the image was sent) and the ``BlockCosts`` of the blocks. ``predict``,
``predict_all_branches`` and ``predictions_from_outputs`` (the same routes from outputs already computed, for
evaluations, sweeps and benchmarks) all go through it, and ``meanet_core.inference.evaluation.summarize`` summarises
them.

``optimize=True`` (on ``AdaptiveEngine`` and ``LocalCloud``) runs an inference copy of the model from
:func:`meanet_core.inference.fastpath.optimize_for_inference`: BatchNorm folded into the convolutions and
channels-last weights;
inputs are converted to channels-last whenever the model's weights are (whether optimised here or not).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import torch

from meanet_core.inference.cost import CostConfig, RouteLatency, time_per_call
from meanet_core.inference.fastpath import optimize_for_inference, uses_channels_last
from meanet_core.inference.policies import Policy
from meanet_core.models import CloudModel, MEANet, count_macs
from meanet_edge.report import EXIT_CLOUD, EXIT_EXTENSION, EXIT_MAIN, EXIT_NAMES

__all__ = ["EXIT_CLOUD", "EXIT_EXTENSION", "EXIT_MAIN", "EXIT_NAMES"]  # the exit codes, shared with the edge runtime


@dataclass(frozen=True)
class CloudReply:
    labels: torch.Tensor  # (n,) int64 predicted classes
    ok: torch.Tensor  # (n,) bool: False where the cloud did not answer (the edge falls back)
    sent: torch.Tensor | None = None  # (n,) bool: the image left the device; None: every one did


class CloudBackend(Protocol):
    """Where complex inputs go: an in-process model in simulation, an HTTP service in deployment."""

    macs_per_image: int

    def classify(self, images: torch.Tensor) -> CloudReply:
        """Classify uint8 images (n, C, H, W)."""
        ...


class LocalCloud:
    """The cloud model in this process, behind the same interface as the remote service.

    ``optimize=True`` runs an inference copy (fused BatchNorm, channels-last) and leaves ``model`` as it is.
    """

    def __init__(self, model: CloudModel, *, optimize: bool = False) -> None:
        self.model = optimize_for_inference(model) if optimize else model.eval()
        self.memory_format = input_memory_format(self.model)
        side = model.input_size
        device = next(model.parameters()).device
        x = torch.zeros(1, 3, side, side, device=device).contiguous(memory_format=self.memory_format)
        self.macs_per_image = count_macs(lambda: self._run(x))

    @torch.inference_mode()
    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self._run(to_model_input(images, self.memory_format))

    def classify(self, images: torch.Tensor) -> CloudReply:
        labels = self.logits(images).argmax(dim=1)
        return CloudReply(labels, torch.ones_like(labels, dtype=torch.bool))


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]; float images pass through."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


def input_memory_format(model: torch.nn.Module) -> torch.memory_format:
    """The memory format ``model`` wants its inputs in: channels-last when its convolution weights are."""
    return torch.channels_last if uses_channels_last(model) else torch.contiguous_format


def to_model_input(images: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """``to_unit_float`` in the model's memory format (uint8 images are converted before the cheaper 1-byte copy)."""
    if memory_format != torch.contiguous_format:
        images = images.contiguous(memory_format=memory_format)
    return to_unit_float(images)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return images if images.dtype == torch.uint8 else (images.clamp(0, 1) * 255).round().to(torch.uint8)


def check_images(images: torch.Tensor, input_size: int, channels: int = 3) -> None:
    """Raise a clear error unless ``images`` is a (B, C, H, W) batch the model accepts."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor (B, {channels}, H, W); got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != channels:
        raise ValueError(
            f"images must have shape (B, {channels}, H, W); got {tuple(images.shape)}. "
            "Convert HWC arrays with .permute(0, 3, 1, 2) and add a batch dimension for one image."
        )
    if images.shape[2] != input_size or images.shape[3] != input_size:
        raise ValueError(
            f"this model takes {input_size}x{input_size} images; got {images.shape[2]}x{images.shape[3]}. "
            f"Resize or crop the inputs to {input_size}x{input_size}."
        )
    if images.dtype != torch.uint8:
        if not images.is_floating_point():
            raise TypeError(f"images must be uint8 (0..255) or float (0..1); got dtype {images.dtype}")
        if not torch.isfinite(images).all():
            raise ValueError("images contain NaN or infinite values; clean the inputs before inference")


@dataclass
class Predictions:
    """Per-sample results of one batch; every tensor has length B."""

    labels: torch.Tensor  # int64 predicted class
    exit: torch.Tensor  # int8: EXIT_MAIN, EXIT_EXTENSION or EXIT_CLOUD
    edge_macs: torch.Tensor  # int64 MACs executed on the device
    cloud_macs: torch.Tensor  # int64 MACs executed in the cloud
    bytes_sent: torch.Tensor  # int64
    energy_joule: torch.Tensor  # float64 edge energy (compute + transmission)
    latency_s: torch.Tensor  # float64 estimated end-to-end latency (needs measured RouteLatency)
    fallback: torch.Tensor  # bool: offloaded but the cloud did not answer; the edge's own answer stands
    edge_confidence: torch.Tensor  # float32 max softmax probability of the last edge exit run (main or extension)

    @staticmethod
    def concat(parts: list[Predictions]) -> Predictions:
        if not parts:
            raise ValueError("no predictions to concatenate")
        return Predictions(**{k: torch.cat([getattr(p, k) for p in parts]) for k in Predictions.__dataclass_fields__})

    def __len__(self) -> int:
        return int(self.labels.numel())


class AdaptiveEngine:
    """Batched adaptive inference over a MEANet, a routing policy and an optional cloud.

    ``optimize=True`` runs an inference copy of ``model`` (fused BatchNorm, channels-last weights and inputs; see
    :mod:`meanet_core.inference.fastpath`): the same predictions up to float rounding, the same MACs, ``model``
    untouched.
    """

    def __init__(
        self,
        model: MEANet,
        policy: Policy,
        cloud: CloudBackend | None = None,
        cost: CostConfig | None = None,
        latency: RouteLatency | None = None,
        *,
        optimize: bool = False,
    ) -> None:
        self.model = optimize_for_inference(model) if optimize else model.eval()
        self.memory_format = input_memory_format(self.model)
        self.policy = policy
        self.cloud = cloud
        self.cost = cost or CostConfig()
        self.latency = latency
        side = model.input_size
        device = model.hard_index.device
        x = torch.zeros(1, 3, side, side, device=device).contiguous(memory_format=self.memory_format)
        with torch.inference_mode():
            feats = self.model.forward_main(x).features
        self.main_macs = count_macs(lambda: self._main(x))
        self.extension_macs = count_macs(lambda: self._extension(x, feats))
        self.image_bytes = self.cost.input_bytes(3, side, side)

    @torch.inference_mode()
    def _main(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.forward_main(x)
        return out.logits, out.features

    @torch.inference_mode()
    def _extension(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.model.forward_extension(x, features)

    @property
    def blocks(self) -> BlockCosts:
        """What one image costs in each block of this engine (the cloud's MACs as its backend reports them)."""
        cloud_macs = int(self.cloud.macs_per_image) if self.cloud is not None else 0
        return BlockCosts(int(self.main_macs), int(self.extension_macs), cloud_macs, int(self.image_bytes))

    def predict(self, images: torch.Tensor) -> Predictions:
        """Route a batch: uint8 (B, 3, H, W) or float in [0, 1]."""
        check_images(images, self.model.input_size)
        x = to_model_input(images, self.memory_format)
        n = x.shape[0]
        logits, feats = self._main(x)  # (B, K), (B, C, h, w)
        probs = logits.softmax(dim=1)
        confidence, labels = probs.max(dim=1)
        top1_hard = self.model.hard_index[labels] >= 0
        to_cloud, to_ext = (m.cpu() for m in self.policy.after_main(probs, top1_hard))
        labels, confidence = labels.cpu(), confidence.float().cpu()
        exits = torch.full((n,), EXIT_MAIN, dtype=torch.int8)

        ext_idx = to_ext.nonzero().flatten()
        if ext_idx.numel():
            sel = ext_idx.to(x.device)
            ext_probs = self._extension(x[sel], feats[sel]).softmax(dim=1)  # only the routed samples
            ext_conf, ext_pos = ext_probs.max(dim=1)
            labels[ext_idx] = self.model.hard_classes[ext_pos].cpu()
            confidence[ext_idx] = ext_conf.float().cpu()
            exits[ext_idx] = EXIT_EXTENSION
            to_cloud[ext_idx] |= self.policy.after_extension(ext_probs).cpu()
        if self.cloud is None:
            to_cloud[:] = False

        cloud_idx = to_cloud.nonzero().flatten()
        sent = torch.zeros(n, dtype=torch.bool)
        fallback = torch.zeros(n, dtype=torch.bool)
        if cloud_idx.numel() and self.cloud is not None:
            reply = self.cloud.classify(to_uint8(images[cloud_idx.to(images.device)]))
            ok = reply.ok.to(torch.bool).cpu()
            answered = cloud_idx[ok]
            labels[answered] = reply.labels.cpu()[ok]
            exits[answered] = EXIT_CLOUD
            went = reply.sent.to(torch.bool).cpu() if reply.sent is not None else torch.ones_like(ok)
            sent[cloud_idx[went]] = True
            fallback[cloud_idx[~ok]] = True
        return priced(
            labels,
            exits,
            to_ext,
            self.blocks,
            self.cost,
            self.latency,
            confidence=confidence,
            sent=sent,
            fallback=fallback,
        )

    def predictions_from_outputs(
        self, main_logits: torch.Tensor, ext_logits: torch.Tensor, cloud_logits: torch.Tensor | None
    ) -> Predictions:
        """What ``predict`` returns, from outputs of every branch already computed (an evaluation that needs those
        outputs anyway for reference accuracies need not run the engine a second time). Costs count each sample's
        route only, as ``predict`` does; the local cloud always answers (no fallbacks)."""
        cloud = cloud_logits if self.cloud is not None else None
        return predictions_from_outputs(
            self.model, self.policy, self.blocks, main_logits, ext_logits, cloud, self.cost, self.latency
        )

    @torch.inference_mode()
    def predict_all_branches(self, images: torch.Tensor, cloud: LocalCloud | None = None) -> Predictions:
        """The public code's way: every branch (main, extension, cloud) on every sample, routing applied after.

        Gives the same labels and exits as ``predict``; costs count what was really computed.
        """
        check_images(images, self.model.input_size)
        x = to_model_input(images, self.memory_format)
        n = x.shape[0]
        logits, ext_logits = self.model(x)
        cloud_labels = cloud.logits(images).argmax(dim=1) if cloud is not None else None
        routed = route_outputs(self.model, self.policy, logits, ext_logits, cloud_labels)
        blocks = replace(self.blocks, cloud_macs=int(cloud.macs_per_image) if cloud is not None else 0)
        everywhere = torch.full((n,), cloud is not None, dtype=torch.bool)
        return priced(
            routed.labels,
            routed.exit,
            torch.ones(n, dtype=torch.bool),
            blocks,
            self.cost,
            self.latency,
            confidence=routed.confidence,
            ran_cloud=everywhere,
            sent=everywhere,
        )


@dataclass(frozen=True)
class BlockCosts:
    """What one image costs in each block: MACs of the main block, of adaptive + extension and of the cloud model,
    and the bytes of one offloaded image. ``main_macs=0`` describes a device that runs nothing (cloud-only)."""

    main_macs: int
    extension_macs: int
    cloud_macs: int
    image_bytes: int


def priced(
    labels: torch.Tensor,
    exits: torch.Tensor,
    ran_extension: torch.Tensor,
    blocks: BlockCosts,
    cost: CostConfig | None = None,
    latency: RouteLatency | None = None,
    *,
    confidence: torch.Tensor | None = None,
    ran_cloud: torch.Tensor | None = None,
    sent: torch.Tensor | None = None,
    fallback: torch.Tensor | None = None,
) -> Predictions:
    """Predictions with the cost of each sample's route: the one place where routes become MACs, bytes, energy and
    latency (the engine, its offline twin ``predictions_from_outputs``, the sweeps and the benchmarks all go here).

    Every sample ran the main block (when ``blocks.main_macs`` > 0); ``ran_extension`` marks those that also ran
    adaptive + extension. ``ran_cloud`` (default: the cloud exits) marks those the cloud model computed, ``sent``
    (default: ``ran_cloud``) those whose image left the device, ``fallback`` those offloaded that the cloud did not
    answer. ``confidence`` defaults to NaN (unknown).
    """
    n = int(labels.numel())
    cost = cost or CostConfig()
    ran_extension = ran_extension.to(torch.bool).cpu()
    ran_cloud = (exits == EXIT_CLOUD) if ran_cloud is None else ran_cloud.to(torch.bool).cpu()
    sent = ran_cloud if sent is None else sent.to(torch.bool).cpu()
    edge_macs = blocks.main_macs + ran_extension.to(torch.int64) * blocks.extension_macs
    cloud_macs = ran_cloud.to(torch.int64) * blocks.cloud_macs
    bytes_sent = sent.to(torch.int64) * blocks.image_bytes
    bytes_f = bytes_sent.double()
    energy = edge_macs.double() * cost.joules_per_mac + cost.transmission_energy(bytes_f)
    seconds = torch.zeros(n, dtype=torch.float64)
    if latency is not None:
        seconds += latency.main_s if blocks.main_macs else 0.0
        seconds += ran_extension.double() * latency.extension_s
        seconds += cost.uplink_seconds(bytes_f) + ran_cloud.double() * latency.cloud_s
    return Predictions(
        labels=labels.cpu(),
        exit=exits.to(torch.int8).cpu(),
        edge_macs=edge_macs,
        cloud_macs=cloud_macs,
        bytes_sent=bytes_sent,
        energy_joule=energy,
        latency_s=seconds,
        fallback=torch.zeros(n, dtype=torch.bool) if fallback is None else fallback.to(torch.bool).cpu(),
        edge_confidence=(torch.full((n,), float("nan")) if confidence is None else confidence.float().cpu()),
    )


def predictions_from_outputs(
    model: MEANet,
    policy: Policy,
    blocks: BlockCosts,
    main_logits: torch.Tensor,
    ext_logits: torch.Tensor,
    cloud_logits: torch.Tensor | None,
    cost: CostConfig | None = None,
    latency: RouteLatency | None = None,
) -> Predictions:
    """What ``AdaptiveEngine.predict`` returns, from outputs of every branch already computed: ``policy`` routes the
    samples (``route_outputs``), ``priced`` counts each sample's route only. Without ``cloud_logits`` nothing is
    offloaded; with them the cloud always answers (no fallbacks). ``ext_logits`` is read only where the policy
    sends a sample to the extension."""
    cloud_labels = cloud_logits.argmax(dim=1) if cloud_logits is not None else None
    routed = route_outputs(model, policy, main_logits, ext_logits, cloud_labels)
    return priced(routed.labels, routed.exit, routed.ran_extension, blocks, cost, latency, confidence=routed.confidence)


@dataclass(frozen=True)
class Routed:
    labels: torch.Tensor  # (N,) final predicted class
    exit: torch.Tensor  # (N,) int8 exit code
    ran_extension: torch.Tensor  # (N,) bool: the route computed the adaptive + extension blocks
    confidence: torch.Tensor  # (N,) float32 max softmax probability of the last edge exit on the route


def route_outputs(
    model: MEANet,
    policy: Policy,
    main_logits: torch.Tensor,
    ext_logits: torch.Tensor,
    cloud_labels: torch.Tensor | None,
) -> Routed:
    """Apply ``policy`` to precomputed outputs of every branch (for the all-branches baseline and sweeps)."""
    probs, ext_probs = main_logits.softmax(dim=1), ext_logits.softmax(dim=1)
    main_conf, labels = probs.max(dim=1)
    top1_hard = model.hard_index.to(labels.device)[labels] >= 0
    to_cloud, to_ext = policy.after_main(probs, top1_hard)
    hard_classes = model.hard_classes.to(labels.device)
    ext_conf, ext_pos = ext_probs.max(dim=1)
    labels = torch.where(to_ext, hard_classes[ext_pos], labels)
    confidence = torch.where(to_ext, ext_conf, main_conf).float()
    exits = torch.where(to_ext, EXIT_EXTENSION, EXIT_MAIN).to(torch.int8)
    if cloud_labels is not None:
        to_cloud = to_cloud | (to_ext & policy.after_extension(ext_probs))
        labels = torch.where(to_cloud, cloud_labels.to(labels.device), labels)
        exits[to_cloud] = EXIT_CLOUD
    return Routed(labels.cpu(), exits.cpu(), to_ext.cpu(), confidence.cpu())


def measure_route_latency(
    model: MEANet, cloud: LocalCloud | None, batch_size: int = 64, repeats: int = 5
) -> RouteLatency:
    """Wall-clock seconds per image of the main block, adaptive + extension, and the cloud model, on this machine."""
    model.eval()
    side = model.input_size
    device = model.hard_index.device
    x = torch.rand(batch_size, 3, side, side, device=device).contiguous(memory_format=input_memory_format(model))
    with torch.inference_mode():
        feats = model.forward_main(x).features
        main_s = time_per_call(lambda: model.forward_main(x), repeats)
        ext_s = time_per_call(lambda: model.forward_extension(x, feats), repeats)
        cloud_s = time_per_call(lambda: cloud.logits(x), repeats) if cloud is not None else 0.0
    return RouteLatency(main_s / batch_size, ext_s / batch_size, cloud_s / batch_size, batch_size)
