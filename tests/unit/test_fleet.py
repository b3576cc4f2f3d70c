"""A fleet that comes and goes, on the server's side: the quorum's bounded wait, seeded sampling, edges that miss a
round, and the round record that names them (real Flower ``Message`` replies, a mocked ``Grid`` whose node ids are
not their positions)."""

from __future__ import annotations

import json
import time
from unittest.mock import Mock

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from fl_server.report import participation, participation_table
from meanet_core.config import ConfigError, FederationConfig
from meanet_core.keys import EXPERIENCE
from strategies import MEANetStrategy
from strategies.fleet import REST_SECONDS, QuorumError, draw, wait_for_quorum
from tests.unit.test_strategy import edge_of, reply, sent_state, shifted

# node ids, unsorted and far from 0..n-1; Flower's are uint64, beyond what int64 or float64 hold exactly
FLEET = [907, 2**64 - 1, 442, 58, 2**63 + 12345, 260, 77, 3]


def _record() -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in sent_state().items()})


class Clock:
    """A fake monotonic clock whose ``sleep`` advances it, and a node list that grows at given times."""

    def __init__(self, arrivals: dict[float, list[int]]) -> None:
        self.now = 0.0
        self.arrivals = arrivals
        self.slept: list[float] = []

    def nodes(self) -> list[int]:
        return [n for t, ns in self.arrivals.items() if t <= self.now for n in ns]

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


# ----------------------------------------------------------------------------------------- the quorum
def test_a_round_starts_once_the_quorum_is_connected() -> None:
    clock = Clock({0.0: [907], 4.5: [13], 9.0: [442]})
    got = wait_for_quorum(clock.nodes, 2, 60, clock=lambda: clock.now, sleep=clock.sleep)
    assert got == [13, 907] and 4.5 <= clock.now < 6


def test_a_quorum_never_reached_ends_the_wait_with_a_message_naming_the_keys() -> None:
    clock = Clock({0.0: [907]})
    with pytest.raises(QuorumError, match=r"needs 3 connected edge\(s\) \(min-edges\) and 1 were connected after 30 s"):
        wait_for_quorum(clock.nodes, 3, 30, clock=lambda: clock.now, sleep=clock.sleep)
    assert clock.now == pytest.approx(30)  # not a second past the deadline
    assert max(clock.slept) <= 1.0


def test_the_strategy_waits_at_most_quorum_wait_for_its_quorum() -> None:
    grid = Mock(spec=Grid)
    grid.get_node_ids.return_value = [907]
    strategy = MEANetStrategy(min_available_nodes=2, quorum_wait=0.2)
    with pytest.raises(QuorumError, match="quorum-wait"):
        strategy.configure_train(1, _record(), ConfigRecord({}), grid)


# ----------------------------------------------------------------------------------------- sampling
def test_draw_is_a_seeded_sorted_subset() -> None:
    a = draw(FLEET, 3, (0, 1, 0, 1, 0))
    assert a == sorted(a) and len(set(a)) == 3 and set(a) <= set(FLEET)
    assert draw(list(reversed(FLEET)), 3, (0, 1, 0, 1, 0)) == a  # the order nodes are listed in does not matter
    samples = {tuple(draw(FLEET, 3, (0, 1, 0, r, 0))) for r in range(1, 9)}
    assert len(samples) > 1  # rounds sample different edges
    assert draw(FLEET, 20, (0,)) == sorted(FLEET)
    counts = np.zeros(len(FLEET))
    for r in range(400):
        for n in draw(FLEET, 2, (5, 0, 0, r, 0)):
            counts[FLEET.index(n)] += 1
    assert counts.min() > 0.5 * counts.mean()  # every edge gets its turn


def test_a_draw_by_device_names_samples_the_same_devices_whatever_their_node_ids() -> None:
    names = ["2", "10", "0", "7", "1", "3"]  # partition ids, in no order; node ids differ from run to run
    one = dict(zip([901, 17, 5, 444, 23, 3], names, strict=True))
    two = dict(zip([8, 1_000_003, 77, 2, 64, 90], names, strict=True))
    for r in range(1, 6):
        seed = (3, 0, 0, r, 0)
        picked_one = {one[n] for n in draw(list(one), 3, seed, one)}
        assert picked_one == {two[n] for n in draw(list(two), 3, seed, two)}
    unnamed = draw([5, 6, 7, 8], 2, (1,), {5: "b"})  # nodes without a name come after the named ones
    assert len(unnamed) == 2


@pytest.mark.usefixtures("task_identity")
def test_the_strategy_asks_the_edges_their_names_once_and_draws_by_them() -> None:
    from fl_client.app import app

    def run(node_ids: list[int]) -> list[str]:
        def context(i: int, n: int) -> Context:
            node = {"partition-id": i, "num-partitions": 6}
            return Context(run_id=1, node_id=n, node_config=node, state=RecordDict(), run_config={"num-clients": 6})

        contexts = {n: context(i, n) for i, n in enumerate(node_ids)}
        grid = Mock(spec=Grid)
        grid.get_node_ids.return_value = node_ids
        grid.send_and_receive.side_effect = lambda msgs, timeout: [
            app(m, contexts[m.metadata.dst_node_id]) for m in msgs
        ]
        strategy = MEANetStrategy(edges_per_round=2, sample_seed=4)
        picked = [
            m.metadata.dst_node_id for m in strategy.configure_train(2, _record(), ConfigRecord({EXPERIENCE: 0}), grid)
        ]
        list(strategy.configure_train(3, _record(), ConfigRecord({EXPERIENCE: 0}), grid))
        assert grid.send_and_receive.call_count == 1  # asked once per node
        return sorted(strategy.names[n] for n in picked)

    assert run([11, 12, 13, 14, 15, 16]) == run([96, 5, 41, 7, 300, 2])


def _train(strategy: MEANetStrategy, server_round: int, experience: int = 0) -> list[Message]:
    grid = Mock(spec=Grid)
    grid.get_node_ids.return_value = list(FLEET)
    config = ConfigRecord({EXPERIENCE: experience})
    return list(strategy.configure_train(server_round, _record(), config, grid))


@pytest.mark.usefixtures("task_identity")
def test_edges_per_round_samples_that_many_the_same_way_for_the_same_run() -> None:
    one, two = MEANetStrategy(edges_per_round=3, sample_seed=4), MEANetStrategy(edges_per_round=3, sample_seed=4)
    a = [m.metadata.dst_node_id for m in _train(one, 2)]
    assert len(a) == 3 and set(a) <= set(FLEET) and one.sampled[MessageType.TRAIN] == sorted(a)
    assert [m.metadata.dst_node_id for m in _train(two, 2)] == a
    other = {tuple(m.metadata.dst_node_id for m in _train(two, r)) for r in range(3, 9)}
    assert len(other | {tuple(a)}) > 1
    everyone = MEANetStrategy(min_available_nodes=2)  # FedAvg's fraction 1.0: every connected edge
    assert sorted(m.metadata.dst_node_id for m in _train(everyone, 1)) == sorted(FLEET)


@pytest.mark.usefixtures("task_identity")
def test_an_edge_that_misses_the_deadline_or_goes_away_is_listed_as_missed() -> None:
    strategy = MEANetStrategy(edges_per_round=4, sample_seed=1, aggregation="median")
    instructions = _train(strategy, 1)
    late, gone, *answering = instructions
    state = sent_state()
    replies = [reply(m, shifted(edge_of(state), 0.01 * (i + 1)), 500) for i, m in enumerate(answering)]
    unavailable = Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason="missed its heartbeats"), reply_to=gone)
    arrays, _ = strategy.aggregate_train(1, [*replies, unavailable])
    assert arrays is not None
    report = strategy.last_round
    assert report is not None
    assert report["sampled_nodes"] == sorted(m.metadata.dst_node_id for m in instructions)
    assert report["connected_nodes"] == len(FLEET)
    assert sorted(report["missed_nodes"]) == sorted([late.metadata.dst_node_id, gone.metadata.dst_node_id])
    assert sorted(report["accepted_nodes"]) == sorted(m.metadata.dst_node_id for m in answering)
    # Flower lists a dead device as connected until its heartbeats lapse: the next rounds leave both out for now
    missed = {late.metadata.dst_node_id, gone.metadata.dst_node_id}
    everyone = MEANetStrategy(min_available_nodes=2, aggregation="median")
    everyone.missed_at = dict.fromkeys(missed, time.monotonic())
    nxt = {m.metadata.dst_node_id for m in _train(everyone, 2)}
    assert nxt == set(FLEET) - missed and everyone.connected[MessageType.TRAIN] == len(FLEET)
    everyone.missed_at = dict.fromkeys(missed, time.monotonic() - REST_SECONDS)  # rested: sampled again
    assert {m.metadata.dst_node_id for m in _train(everyone, 3)} == set(FLEET)
    needy = MEANetStrategy(min_available_nodes=len(FLEET) - 1, aggregation="median")  # the quorum needs one back
    needy.missed_at = {late.metadata.dst_node_id: time.monotonic() - 5, gone.metadata.dst_node_id: time.monotonic()}
    assert {m.metadata.dst_node_id for m in _train(needy, 2)} == set(FLEET) - {gone.metadata.dst_node_id}


def _round(strategy: MEANetStrategy, server_round: int, connected: list[int]) -> dict[int, Message]:
    grid = Mock(spec=Grid)
    grid.get_node_ids.return_value = connected
    messages = strategy.configure_train(server_round, _record(), ConfigRecord({EXPERIENCE: 0}), grid)
    return {m.metadata.dst_node_id: m for m in messages}


@pytest.mark.usefixtures("task_identity")
def test_claims_and_fltrust_hold_when_the_edges_change_from_round_to_round() -> None:
    """Round 1: edges a, b, c, d. Round 2: d has gone, e is new and lies (a huge count, a step against the server's
    own update), a inflates its count. Round 3: d is back, after missing round 2, and inflates its count. Every claim
    is bounded by the others of its own round and by the same node's earlier claim, however long ago."""
    state = sent_state()
    server = shifted(edge_of(state), 0.02)  # the server's own update on its clean data points this way
    strategy = MEANetStrategy(min_available_nodes=2, aggregation="fltrust", reference_fn=lambda sent: server)
    a, b, c, d, e = FLEET[:5]

    def honest(m: Message, n: float, k: float = 1.0) -> Message:
        return reply(m, shifted(edge_of(state), 0.02 * k), n)

    sent = _round(strategy, 1, [a, b, c, d])
    strategy.aggregate_train(1, [honest(sent[a], 500), honest(sent[b], 400, 1.1), honest(sent[c], 450, 0.9),
                                 honest(sent[d], 300, 1.2)])  # fmt: skip
    assert strategy.last_round is not None and not strategy.last_round["clipped_claims"]

    sent = _round(strategy, 2, [a, b, c, e])
    assert d not in sent
    liar = reply(sent[e], shifted(edge_of(state), -0.02), 1e9)
    strategy.aggregate_train(2, [honest(sent[a], 5000), honest(sent[b], 400, 1.1), honest(sent[c], 450, 0.9), liar])
    r2 = strategy.last_round
    assert r2 is not None
    clipped = dict(r2["clipped_claims"])
    assert set(clipped) == {a, e}
    assert "weighed as 500" in clipped[a] and "its own earlier claim" in clipped[a]  # 2 x the others' median is 900
    assert "median" in clipped[e] and "weighed as 900" in clipped[e]  # new: no earlier claim, the others bound it
    assert r2["trust_scores"][e] == 0.0 and min(r2["trust_scores"][n] for n in (a, b, c)) > 0.5
    assert any(n == e for n, _ in r2["ignored_by_rule"])

    sent = _round(strategy, 3, [a, b, c, d])  # d is back, e has gone
    strategy.aggregate_train(3, [honest(sent[a], 500), honest(sent[b], 400, 1.1), honest(sent[c], 450, 0.9),
                                 honest(sent[d], 700, 1.2)])  # fmt: skip
    r3 = strategy.last_round
    assert r3 is not None
    assert [(n, "weighed as 300" in why) for n, why in r3["clipped_claims"]] == [(d, True)]  # its round-1 claim


# ----------------------------------------------------------------------------------------- the round record
def test_participation_names_trained_missed_and_rejoined_clients_across_a_restart() -> None:
    r1 = {"accepted_nodes": [907, 13], "missed_nodes": [442], "sampled_nodes": [13, 442, 907], "connected_nodes": 3,
          "clients": {907: 0, 13: 1, 442: 2}}  # fmt: skip
    earlier = [{"clients": {907: 0, 13: 1, 442: 2}, "participation": {"trained": [0, 1, 2], "missed": []}}]
    p1 = participation(earlier, r1)
    assert p1 == {"sampled": 3, "connected": 3, "trained": [0, 1], "missed": [2], "rejoined": []}
    # saved and resumed: node ids become strings in JSON; the device comes back as a new node with client 2
    rounds = json.loads(json.dumps([*earlier, {**r1, "participation": p1}]))
    r2 = {"accepted_nodes": [907, 5150], "missed_nodes": [], "sampled_nodes": [907, 5150], "connected_nodes": 2,
          "clients": {907: 0, 5150: 2}}  # fmt: skip
    p2 = participation(rounds, r2)
    assert p2["trained"] == [0, 2] and p2["rejoined"] == [2] and p2["missed"] == []
    table = participation_table([{"experience": 0, "round": 1, **rounds[-1]}, {"experience": 0, "round": 2,
                                 "participation": p2}])  # fmt: skip
    assert "| 0 | edge | 1 | 3 | 3 | 0, 1 | 2 | - |" in table and "| 0 | edge | 2 | 2 | 2 | 0, 2 | - | 2 |" in table


def test_the_fleet_keys_are_checked() -> None:
    cfg = FederationConfig.from_run_config({"min-edges": 2, "edges-per-round": 10, "round-timeout": 30})
    assert cfg.round_timeout == 30.0 and cfg.edges_per_round == 10
    for bad, key in (({"min-edges": 0}, "min-edges"), ({"edges-per-round": -1}, "edges-per-round"),
                     ({"round-timeout": 0}, "round-timeout"), ({"quorum-wait": -1}, "quorum-wait")):  # fmt: skip
        with pytest.raises(ConfigError, match=key):
            FederationConfig.from_run_config(bad)
