"""The bounds of :class:`~strategies.MEANetStrategy` on what one reply can do: the round's norm bound on its step,
and its example count read as a claim."""

from __future__ import annotations

from logging import INFO, WARNING

from flwr.app import Message
from flwr.common import log

from strategies.aggregation import Arrays, validate_update
from strategies.replies import Reply
from strategies.robust import Claim, bound_claims, round_norm_bound


class UpdateBounds:
    """The norm bound and the claim bounds (mixed into :class:`~strategies.MEANetStrategy`)."""

    scope: str
    max_norm_ratio: float | None
    norm_bound_factor: float | None
    claim_factor: float | None
    max_claim: float | None
    _claims: dict[int, float]

    def _norm_bound(
        self,
        candidates: list[tuple[Message, Reply]],
        reference: Arrays,
        norm_ratios: dict[int, float],
        clients: dict[int, int],
        dropped: list[tuple[int, str]],
        server_round: int,
    ) -> tuple[list[tuple[Message, Reply]], float | None, float | None]:
        """The candidates within the round's norm bound (``norm_bound_factor`` x the round's lower median ratio,
        under the ceiling ``max_norm_ratio``); the others are dropped with the reason. Returns the kept ones, the
        bound in force and the relative bound (``None`` when off)."""
        ratios = [norm_ratios[msg.metadata.src_node_id] for msg, _ in candidates]
        ceiling = self.max_norm_ratio if self.scope == "edge" else None  # a main block may move past its norm
        bound = round_norm_bound(ratios, factor=self.norm_bound_factor, ceiling=ceiling)
        relative = round_norm_bound(ratios, factor=self.norm_bound_factor, ceiling=None) if ratios else None
        if ratios:
            log(
                INFO,
                "aggregate_train: round %d: norm bound %s (relative: %s; ceiling: %s); ratios %s",
                server_round,
                "off" if bound is None else f"{bound:.4g}",
                "off" if relative is None else f"{self.norm_bound_factor:g} x the median ratio",
                "none" if ceiling is None else f"{ceiling:g}",
                ", ".join(f"{x:.3g}" for x in ratios),
            )
        kept: list[tuple[Message, Reply]] = []
        for msg, r in candidates:
            node_id = msg.metadata.src_node_id
            too_far = (
                None
                if bound is None
                else validate_update(r["arrays"], reference, max_norm_ratio=bound, scope=self.scope)
            )
            if too_far is None:
                kept.append((msg, r))
                continue
            if relative is not None and self.norm_bound_factor and bound == relative:
                too_far += (
                    f" (the round's bound: {self.norm_bound_factor:g} x the median ratio of its valid updates, "
                    f"{relative / self.norm_bound_factor:.4g}; ceiling {self.max_norm_ratio})"
                )
            self._drop(dropped, server_round, node_id, clients.get(node_id), too_far)
        return kept, bound, relative

    def _weigh_claims(
        self, nodes: list[int], replies: list[Reply], server_round: int
    ) -> tuple[list[Claim], list[tuple[int, str]]]:
        """Example counts are claims: bound each by what the server knows (:func:`~strategies.robust.bound_claims`)
        and weigh each reply by what is allowed (``reply["weight"]`` is replaced). Returns every claim and the
        ``(node, reason)`` of the clipped ones."""
        claims = bound_claims(
            [r["weight"] for r in replies],
            [self._claims.get(node) for node in nodes],
            median_factor=self.claim_factor,
            cap=self.max_claim,
        )
        clipped: list[tuple[int, str]] = []
        for node, r, claim in zip(nodes, replies, claims, strict=True):
            r["weight"] = claim.allowed
            self._claims[node] = claim.allowed
            if claim.reason is not None:
                clipped.append((node, claim.reason))
                log(WARNING, "aggregate_train: round %d: node %d %s", server_round, node, claim.reason)
        return claims, clipped

    def _drop(
        self, dropped: list[tuple[int, str]], server_round: int, node: int, client: int | None, reason: str
    ) -> None:
        dropped.append((node, reason))
        log(
            WARNING,
            "aggregate_train: round %d: dropped the update from node %d%s: %s",
            server_round,
            node,
            "" if client is None else f" (client {client})",
            reason,
        )
