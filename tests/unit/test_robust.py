"""Lying clients: claims, the round's norm bound, and the robust rules (pure maths, then the real strategy).

The strategy-level tests run the scenarios of ``benchmarks/robustness.py`` (the table in docs/results.md) on a small
state dict: each lie against each rule, measured as the distance of the aggregate from the honest edges' mean.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from benchmarks import robustness as rb
from strategies import MEANetStrategy
from strategies.aggregation import trimmed_count
from strategies.robust import bound_claims, fltrust, lower_median, multi_krum, round_norm_bound, trust_scores


# ----------------------------------------------------------------------------------------- claims
def test_an_inflated_claim_weighs_at_most_a_multiple_of_the_others_median() -> None:
    claims = bound_claims([500, 480, 520, 1_000_000, 510], median_factor=2.0)
    assert [c.allowed for c in claims] == [500, 480, 520, 2 * 505, 510]  # leave-one-out median of the others: 505
    assert [c.reason is None for c in claims] == [True, True, True, False, True]
    assert "claimed 1e+06" in (claims[3].reason or "") and "median" in (claims[3].reason or "")


def test_claims_are_bounded_by_the_cap_and_by_the_same_clients_earlier_claim() -> None:
    claims = bound_claims([300, 900, 400], [300, 450, None], median_factor=None, cap=800)
    assert [c.allowed for c in claims] == [300, 450, 400]
    assert "cap" in (claims[1].reason or "") and "earlier claim" in (claims[1].reason or "")
    assert bound_claims([7.0])[0].allowed == 7.0  # alone: nothing to compare with
    with pytest.raises(ValueError, match="one per claim"):
        bound_claims([1, 2], [1])
    with pytest.raises(ValueError, match="median_factor"):
        bound_claims([1, 2], median_factor=-1)


# ----------------------------------------------------------------------------------------- the round's norm bound
def test_the_norm_bound_follows_the_round_under_the_ceiling() -> None:
    assert lower_median([0.3, 0.1]) == 0.1  # one of two clients cannot raise it
    assert round_norm_bound([0.1, 0.12, 0.11, 5.0], factor=3.0, ceiling=1.0) == pytest.approx(0.33)
    assert round_norm_bound([0.5, 0.6, 0.7], factor=3.0, ceiling=1.0) == 1.0  # the ceiling wins
    assert (
        round_norm_bound([0.5], factor=None, ceiling=1.0) == 1.0
        and round_norm_bound([], factor=3, ceiling=None) is None
    )
    # most edges sent back what they received: a bound of 0 would refuse the one that trained; the ceiling holds
    assert round_norm_bound([0.0, 0.0, 0.2], factor=3.0, ceiling=1.0) == 1.0
    assert round_norm_bound([0.0, 0.0], factor=3.0, ceiling=None) is None


# ----------------------------------------------------------------------------------------- robust rules
@pytest.mark.parametrize(("n", "fraction", "k"), [(4, 0.2, 1), (5, 0.2, 1), (10, 0.2, 2), (3, 0.2, 1), (2, 0.4, 0)])
def test_trimmed_mean_trims_at_least_one_from_each_end_when_it_can(n: int, fraction: float, k: int) -> None:
    assert trimmed_count(n, fraction) == k
    assert trimmed_count(n, 0.0) == 0  # asked for no trim


def _cluster(offsets: list[float]) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    base = rng.standard_normal(50)
    return [{"w": (base + o + 0.01 * rng.standard_normal(50)).astype(np.float32)} for o in offsets]


def test_multi_krum_uses_flowers_selection_and_leaves_the_outlier_out() -> None:
    updates = _cluster([0.0, 0.0, 3.0, 0.0, 0.0])
    assert multi_krum(updates, num_malicious=1, num_select=4) == [0, 1, 3, 4]
    assert multi_krum(updates, num_malicious=1, num_select=1) in ([0], [1], [3], [4])
    with pytest.raises(ValueError, match="num_select"):
        multi_krum(updates, 1, 6)


def test_fltrust_gives_no_weight_to_updates_against_the_reference_however_many() -> None:
    sent = {"w": np.zeros(4, np.float32), "n": np.array(3)}
    good = [{"w": np.array([1.0, 1.0, 0.0, 0.0], np.float32), "n": np.array(4)} for _ in range(3)]
    bad = {"w": np.array([-9.0, -9.0, 0.0, 0.0], np.float32), "n": np.array(9)}
    reference = {"w": np.array([1.0, 0.5, 0.0, 0.0], np.float32), "n": np.array(4)}
    updates = [(u, 1.0) for u in good] + [(bad, 1e6), (bad, 1e6)]  # two colluders with inflated counts
    aggregated, scores = fltrust(updates, reference, sent)
    assert scores[3] == scores[4] == 0.0 and all(s > 0.9 for s in scores[:3])
    np.testing.assert_allclose(aggregated["w"], [1.0, 1.0, 0.0, 0.0], rtol=1e-6)  # the honest step, unmoved
    assert aggregated["w"].dtype == np.float32 and int(aggregated["n"]) == 4  # counters: the median
    assert trust_scores([sent], reference, sent) == [0.0]  # no change, no trust
    all_bad, _ = fltrust([(bad, 1.0)], reference, sent)
    np.testing.assert_array_equal(all_bad["w"], sent["w"])  # nobody trusted: keep what was sent


# ----------------------------------------------------------------------------------------- the strategy against lies
@pytest.fixture(scope="module")
def world() -> Iterator[rb.World]:
    """A small 'MEANet' state: a main entry, edge weights, a BatchNorm counter (the real one is in the benchmark)."""
    rng = np.random.default_rng(7)
    sent = {
        "main.fc.weight": rng.standard_normal((4, 3)).astype(np.float32),
        "adaptive.conv.weight": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "adaptive.bn.num_batches_tracked": np.array(50, dtype=np.int64),
        "extension.fc.weight": rng.standard_normal((5, 40)).astype(np.float32),
        "extension.fc.bias": rng.standard_normal(5).astype(np.float32),
        "hard_index": np.array([-1, 0, -1, 1], dtype=np.int64),
    }
    with rb.task_identity():
        yield rb.World(sent)


ROWS = rb.rule_settings()
DEFAULT = next(name for name in ROWS if "(default)" in name)
BEFORE = "mean + ceiling only (before)"


def distance(lie: str, row: str, world: rb.World) -> float:
    return float(np.mean([rb.scenario(lie, ROWS[row], world, seed) for seed in range(2)]))


@pytest.mark.parametrize("lie", ["count", "direction", "both", "drift"])
def test_with_the_default_config_no_single_liar_moves_the_aggregate_more_than_an_honest_edge(
    world: rb.World, lie: str
) -> None:
    honest = float(np.mean([rb.honest_move(world, seed) for seed in range(2)]))
    # drift: after 10 rounds, against one honest edge's move in one round (the noise of 10 rounds adds up too)
    allowed = 1.5 * honest if lie == "drift" else honest
    assert distance(lie, DEFAULT, world) <= allowed, (lie, honest)
    assert distance(lie, BEFORE, world) > 3 * honest  # the lie is real: the old default let it through


def test_two_colluders_of_five_stay_bounded_by_default(world: rb.World) -> None:
    honest = float(np.mean([rb.honest_move(world, seed) for seed in range(2)]))
    assert distance("collude", DEFAULT, world) <= 2 * honest
    assert distance("collude", BEFORE, world) > 20 * honest


@pytest.mark.parametrize("lie", ["count", "both"])
def test_bounded_claims_cut_what_an_inflated_count_buys_under_the_mean(world: rb.World, lie: str) -> None:
    assert distance(lie, "mean", world) < 0.5 * distance(lie, BEFORE, world)


@pytest.mark.parametrize("row", ["median", "trimmed-mean", "multi-krum"])
def test_every_robust_rule_holds_one_liar_near_the_honest_mean(world: rb.World, row: str) -> None:
    honest = float(np.mean([rb.honest_move(world, seed) for seed in range(2)]))
    for lie in ("count", "direction", "both"):
        assert distance(lie, row, world) <= 3 * honest, (row, lie)


def test_the_rounds_record_says_what_was_clipped_dropped_and_ignored(world: rb.World) -> None:
    settings: dict[str, Any] = {**ROWS["mean"], "norm_bound_factor": 3.0}
    rng = np.random.default_rng(0)
    strategy = rb.make_strategy(settings, world, rng)
    honest = [world.honest(world.sent, rng) for _ in range(rb.NUM_CLIENTS)]
    far = world.reversed(world.sent, 0.9)  # under the 1.0 ceiling, above 3 x the round's median (~0.12)
    updates = [(far, 500.0), (honest[1], 1e6), *((honest[i], 500.0) for i in range(2, rb.NUM_CLIENTS))]
    rb.strategy_round(strategy, world.sent, updates)
    report = strategy.last_round
    assert report is not None
    assert [node for node, _ in report["dropped"]] == [100]
    assert "the round's bound" in report["dropped"][0][1]
    assert report["norm_bound"] == report["norm_bound_relative"] and report["max_norm_ratio"] == 1.0
    assert report["norm_bound"] is not None and report["norm_bound"] < 0.5
    assert [node for node, _ in report["clipped_claims"]] == [101] and report["claims"][101] == 1e6
    assert report["num_examples"] == 3 * 500 + 2 * 500  # the liar weighs 2 x the others' median


def test_a_bare_strategy_holds_a_count_lie_behind_a_step_inside_its_bounds(world: rb.World) -> None:
    """``MEANetStrategy()`` with no argument: one edge claims 1e9 examples and sends a reversed step at 95% of the
    bound the bare strategy puts in force; the aggregate moves at most 0.05 x the edge blocks' norm (the unbounded
    mean it replaced moved about 0.9 x) and no further than a few honest edges do."""
    bare = MEANetStrategy()
    settings = {
        "aggregation": bare.aggregation,
        "max_norm_ratio": bare.max_norm_ratio,
        "norm_bound_factor": bare.norm_bound_factor,
        "claim_factor": bare.claim_factor,
    }
    assert bare.max_norm_ratio and bare.norm_bound_factor and bare.claim_factor and bare.reference_fn is None
    ratio = rb.attack_ratio(settings)
    honest_yardstick = float(np.mean([rb.honest_move(world, seed) for seed in range(2)]))
    for seed in range(2):
        rng = np.random.default_rng(1000 + seed)
        counts = rng.uniform(400, 600, rb.NUM_CLIENTS).round()
        honest = [world.honest(world.sent, rng) for _ in range(rb.NUM_CLIENTS)]
        updates = [
            (world.reversed(world.sent, ratio), 1e9),
            *((honest[i], counts[i]) for i in range(1, rb.NUM_CLIENTS)),
        ]
        target = rb.weighted_mean([(honest[i], counts[i]) for i in range(1, rb.NUM_CLIENTS)])
        strategy = MEANetStrategy(min_available_nodes=rb.NUM_CLIENTS, min_train_nodes=rb.NUM_CLIENTS)
        moved = rb.distance(rb.strategy_round(strategy, world.sent, updates), target, world.keys) / world.scale
        assert moved <= 0.05, (seed, moved)
        assert moved <= 3 * honest_yardstick, (seed, moved, honest_yardstick)
        # the same lie against the unbounded example-weighted mean is real: it moves that aggregate far
        unbounded = MEANetStrategy(
            aggregation="mean", max_norm_ratio=None, norm_bound_factor=None, claim_factor=None,
            min_available_nodes=rb.NUM_CLIENTS, min_train_nodes=rb.NUM_CLIENTS,
        )  # fmt: skip
        far = rb.distance(rb.strategy_round(unbounded, world.sent, updates), target, world.keys) / world.scale
        assert far > 10 * moved, (far, moved)
