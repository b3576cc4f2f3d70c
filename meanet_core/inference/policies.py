"""Routing policies of the adaptive inference engine.

A policy decides, from the main block's softmax, which samples leave at the main exit, which go on to the extension
block and which are offloaded to the cloud; and, from the extension's softmax, which extension samples are still
offloaded.

* ``PaperPolicy`` (MEANet, Long et al.): normalised entropy of the main softmax above a threshold -> cloud;
  otherwise the main block's top-1 decides: an easy class exits at the main block, a hard class at the extension.
* ``CalibratedPolicy``: the main exit keeps an easy top-1 when its max-probability reaches ``main_threshold``; the
  extension keeps its answer when its max-probability reaches ``extension_threshold``; the rest go to the cloud. The
  two thresholds are fitted on validation data to maximise accuracy under a cloud-fraction or energy budget. The
  fit also weighs answering hard top-1s from the main block (with their own confidence threshold) without the
  extension (``use_extension=False``), and keeps the extension only when it scores strictly higher on validation:
  where the extension costs accuracy (measured in the continual benchmark, docs/results.md) the edge answers from
  its main block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch


def normalized_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy of each row of ``probs`` (B, K) divided by log(K): 0 = certain, 1 = uniform."""
    k = probs.shape[1]
    ent = -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim=1)
    return ent / math.log(k)


class Policy(Protocol):
    @property
    def name(self) -> str: ...

    def after_main(self, main_probs: torch.Tensor, top1_hard: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(to_cloud, to_extension) boolean masks over the batch; disjoint."""
        ...

    def after_extension(self, ext_probs: torch.Tensor) -> torch.Tensor:
        """Boolean mask over the extension samples that are still offloaded."""
        ...

    def as_dict(self) -> dict[str, object]: ...


@dataclass(frozen=True)
class PaperPolicy:
    entropy_threshold: float = 0.5
    name: str = "paper"

    def __post_init__(self) -> None:
        if not 0.0 <= self.entropy_threshold <= 1.0:
            raise ValueError(f"entropy_threshold is a normalised entropy in [0, 1]; got {self.entropy_threshold}")

    def after_main(self, main_probs: torch.Tensor, top1_hard: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        to_cloud = normalized_entropy(main_probs) > self.entropy_threshold
        return to_cloud, top1_hard & ~to_cloud

    def after_extension(self, ext_probs: torch.Tensor) -> torch.Tensor:
        return torch.zeros(ext_probs.shape[0], dtype=torch.bool, device=ext_probs.device)

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "entropy_threshold": self.entropy_threshold}


@dataclass(frozen=True)
class CalibratedPolicy:
    main_threshold: float = 0.0
    extension_threshold: float = 0.0
    name: str = "calibrated"
    # False: the extension never runs; a hard top-1 stays at the main exit when the main block's max-probability
    # reaches extension_threshold (an easy one: main_threshold), else it goes to the cloud
    use_extension: bool = True

    def after_main(self, main_probs: torch.Tensor, top1_hard: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        conf = main_probs.max(dim=1).values
        confident = conf >= self.main_threshold
        if not self.use_extension:
            hard_cloud = top1_hard & (conf < self.extension_threshold)
            return (~top1_hard & ~confident) | hard_cloud, torch.zeros_like(top1_hard)
        return ~top1_hard & ~confident, top1_hard

    def after_extension(self, ext_probs: torch.Tensor) -> torch.Tensor:
        return ext_probs.max(dim=1).values < self.extension_threshold

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "main_threshold": self.main_threshold,
            "extension_threshold": self.extension_threshold,
            "use_extension": self.use_extension,
        }

    @classmethod
    def fit(
        cls,
        main_conf: np.ndarray,
        main_correct: np.ndarray,
        top1_hard: np.ndarray,
        ext_conf: np.ndarray,
        ext_correct: np.ndarray,
        cloud_correct: np.ndarray,
        *,
        target_cloud_fraction: float | None = None,
        energy_budget_joule: float | None = None,
        edge_energy: tuple[float, float] = (0.0, 0.0),
        offload_energy: float = 0.0,
        grid: int = 64,
    ) -> CalibratedPolicy:
        """Thresholds maximising validation accuracy under a budget.

        Arrays are per validation sample: the main block's max-probability and whether its top-1 is right, whether
        that top-1 is a hard class, the extension's max-probability and correctness (read only where ``top1_hard``),
        and the cloud's correctness. Give ``target_cloud_fraction`` (at most that fraction offloaded) or
        ``energy_budget_joule`` (mean edge energy per image at most that), with ``edge_energy`` = (energy of a
        main-exit image, energy of an image that also runs the extension) and ``offload_energy`` the transmission
        energy of one image.

        The same search runs without the extension (a hard top-1 answered by the main block when its max-probability
        reaches the second threshold, else by the cloud; edge energy ``edge_energy[0]`` for every image); that
        policy (``use_extension=False``) is returned only when its validation accuracy is strictly higher.
        """
        if (target_cloud_fraction is None) == (energy_budget_joule is None):
            raise ValueError("give exactly one of target_cloud_fraction or energy_budget_joule")
        if target_cloud_fraction is not None and not 0.0 <= target_cloud_fraction <= 1.0:
            raise ValueError(f"target_cloud_fraction must lie in [0, 1]; got {target_cloud_fraction}")
        n = len(main_conf)
        if n == 0:
            raise ValueError("cannot calibrate on an empty validation set")
        easy = ~top1_hard
        qs = np.linspace(0.0, 1.0, grid)
        main_ts = np.unique(np.concatenate([[0.0], np.quantile(main_conf[easy], qs) if easy.any() else []]))
        e_main, e_ext = edge_energy

        def search(hard_conf: np.ndarray, hard_correct: np.ndarray, e_hard: float) -> tuple[float, float, float] | None:
            """The best (accuracy, easy threshold, hard threshold) when a hard top-1 is answered with ``hard_correct``
            if ``hard_conf`` reaches the hard threshold, else by the cloud."""
            hard_ts = np.unique(
                np.concatenate([[0.0], np.quantile(hard_conf[top1_hard], qs) if top1_hard.any() else []])
            )
            best: tuple[float, float, float] | None = None
            for tm in main_ts:
                easy_cloud = easy & (main_conf < tm)
                easy_keep = easy & ~easy_cloud
                acc_easy = main_correct[easy_keep].sum() + cloud_correct[easy_cloud].sum()
                n_easy_cloud = easy_cloud.sum()
                for te in hard_ts:
                    hard_cloud = top1_hard & (hard_conf < te)
                    hard_keep = top1_hard & ~hard_cloud
                    n_cloud = n_easy_cloud + hard_cloud.sum()
                    if target_cloud_fraction is not None and n_cloud > target_cloud_fraction * n + 1e-9:
                        continue
                    if energy_budget_joule is not None:
                        energy = (easy.sum() * e_main + top1_hard.sum() * e_hard + n_cloud * offload_energy) / n
                        if energy > energy_budget_joule:
                            continue
                    acc = (acc_easy + hard_correct[hard_keep].sum() + cloud_correct[hard_cloud].sum()) / n
                    if best is None or acc > best[0] + 1e-12:
                        best = (float(acc), float(tm), float(te))
            return best

        best = search(ext_conf, ext_correct, e_ext)
        # without the extension: a hard top-1 is answered by the main block when its confidence reaches the second
        # threshold, else by the cloud (the edge spends only the main block's energy)
        plain = search(main_conf, main_correct, e_main) if top1_hard.any() else None
        if plain is not None and (best is None or plain[0] > best[0] + 1e-12):
            return cls(main_threshold=plain[1], extension_threshold=plain[2], use_extension=False)
        if best is None:
            raise ValueError(
                f"no thresholds meet the budget (energy_budget_joule={energy_budget_joule}): the edge alone costs "
                f"{(easy.sum() * e_main + top1_hard.sum() * e_ext) / n:.4g} J per image; raise the budget"
            )
        return cls(main_threshold=best[1], extension_threshold=best[2])
