"""The FedAvg baselines of the continual benchmark: ``fedavg-*`` ends each experience on the average of the edges'
models (cloud first), ``fedavg-cloud-last-*`` on that average trained by the cloud on everything it holds (the order
of ``meanet-fl-main-*``). Checked by recomputing the last step from the edges' models, on a tiny scenario
(scikit-learn's digits: offline, 10 classes, 2 experiences), one thread. About 15 s."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from benchmarks.continual.baselines import FedAvgWhole
from benchmarks.continual.common import Context
from benchmarks.continual.config import BenchConfig
from benchmarks.continual.methods import build_method
from benchmarks.continual.scenarios import build_scenario
from benchmarks.continual.shared import CloudTrajectory, stage
from meanet_core.training.stages import train_main
from meanet_core.trust.broadcast import main_state
from strategies.aggregation import weighted_average
from tests.unit.test_bench_main_rounds import SETTINGS

CFG = BenchConfig(**SETTINGS)  # the tiny scenario of the main-rounds tests


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def context() -> Context:
    s = build_scenario(
        CFG.scenario, num_experiences=CFG.experiences, num_clients=CFG.clients, cloud_share=CFG.cloud_share,
        seed=0, val_fraction=CFG.val_fraction, limit_train=CFG.limit_train, limit_test=CFG.limit_test,
    )  # fmt: skip
    return Context(CFG, s, 0, CloudTrajectory(CFG, s, 0, None))


def edges_average(method: FedAvgWhole, t: int) -> dict[str, torch.Tensor]:
    ctx = method.ctx
    updates = [
        (
            {k: v.detach().numpy() for k, v in main_state(m.state_dict()).items()},
            len(ctx.scenario.experiences[t].clients[i]),
        )
        for i, m in enumerate(method.client_models)
    ]
    return {k: torch.from_numpy(v) for k, v in weighted_average(updates).items()}


@pytest.mark.parametrize("cloud_last", [False, True])
def test_the_model_that_answers_comes_from_the_stated_order(cloud_last: bool) -> None:
    ctx = context()
    name = "fedavg-cloud-last-naive" if cloud_last else "fedavg-naive"
    method = build_method(name, ctx)
    assert isinstance(method, FedAvgWhole) and method.name == name
    trained_cloud = []
    for t in range(len(ctx.scenario)):
        outcome = method.run_experience(t)
        average = edges_average(method, t)
        final = main_state(method.model.state_dict())
        if not cloud_last:  # the edges' average answers
            assert all(torch.equal(final[k], average[k]) for k in average)
        else:  # the average, then the cloud's epochs on all it holds: recomputed here from the edges' models
            expected = ctx.trajectory.new_meanet()
            expected.load_state_dict(average, strict=False)
            data = ctx.scenario.cloud_data(t)
            train_main(expected, data, stage(CFG), seed=ctx.seed * 1000 + t, progress=False, channels_last=True)
            want = main_state(expected.state_dict())
            assert all(torch.allclose(final[k].float(), want[k].float(), atol=1e-6) for k in want)
            assert not all(torch.equal(final[k], average[k]) for k in average)  # the cloud's epochs changed it
        budget = outcome.extra["budget"]
        trained_cloud.append(budget["trained_cloud"])
        assert budget["trained_cloud"] == CFG.epochs * len(ctx.scenario.cloud_data(t))  # the same in both orders
        assert outcome.seconds["cloud_training"] > 0 and outcome.seconds["edge_training"] > 0
