"""The ClientApp's evaluation offloading to the real cloud service (TLS + token on loopback), as a federation runs it.

A real Flower ``Message`` and ``Context`` go to the real ``ClientApp`` (``fl_client.app.app``), as in
``tests/unit/test_signing.py``; the run config names the service's ``cloud-url`` and the credentials come from the
node config. Then the strategy keeps each node's offload counts in the round's report.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import Mock

import httpx
import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fl_client.cloud_link import cloud_options
from fl_server.offload.service import BackgroundServer, ServiceConfig, create_app
from fl_server.report import markdown_summary
from meanet_core import keys
from meanet_core.config import FederationConfig
from meanet_core.trust.signing import VERIFY_KEY_FILE, ensure_signing_key
from meanet_core.trust.tls import DevCertificates, write_dev_certificates
from strategies.meanet_strategy import MEANetStrategy
from strategies.signed import SignedMEANetStrategy

RUN = 11
TOKEN = "federated-offload-token-0123456789"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCertificates:
    return write_dev_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A digits run config, a broadcast MEANet as the server builds it, the matching cloud model, a signing strategy."""
    import torch

    from meanet_core.data.streams import stream_for
    from meanet_core.models import build_cloud, build_meanet

    report = tmp_path_factory.mktemp("report")
    run_config: dict[str, Any] = {
        "dataset": "digits", "model": "resnet20_cifar", "cloud-model": "resnet20_cifar", "num-clients": 2,
        "experiences": 1, "rounds-per-experience": 1, "main-rounds": 0, "batch-size": 32, "limit-train": 400,
        "report-dir": str(report),
    }  # fmt: skip
    cfg = FederationConfig.from_run_config(run_config)
    splits, _ = stream_for(cfg)
    signing_key, _ = ensure_signing_key("", report)
    torch.manual_seed(0)
    model = build_meanet(cfg.model, splits.num_classes, [3, 8], mean=splits.mean, std=splits.std)
    cloud = build_cloud(cfg.cloud_model, splits.num_classes, mean=splits.mean, std=splits.std).eval()
    return {
        "run_config": run_config,
        "arrays": ArrayRecord(model.state_dict()),
        "cloud": cloud,
        "strategy": SignedMEANetStrategy(signing_key, run_id=RUN),
    }


@pytest.fixture(scope="module")
def service(edge: dict[str, Any], certs: DevCertificates) -> Iterator[BackgroundServer]:
    app = create_app(edge["cloud"], ServiceConfig(token=TOKEN, max_batch=64, max_wait_ms=2.0))
    server = BackgroundServer(app, certfile=certs.server_cert, keyfile=certs.server_key).start()
    try:
        yield server
    finally:
        server.stop()


def _context(run_config: dict[str, Any], **node_config: Any) -> Context:
    nodes = {"partition-id": 0, "num-partitions": 2, **node_config}
    return Context(run_id=RUN, node_id=1, node_config=nodes, state=RecordDict(), run_config=run_config)


def _evaluation(edge: dict[str, Any], cloud_arrays: bool = False) -> Message:
    """A signed evaluation instruction whose calibrated thresholds send most inputs to the cloud."""
    strategy: SignedMEANetStrategy = edge["strategy"]
    config = ConfigRecord(
        {
            keys.EXPERIENCE: 0,
            keys.HARD_CLASSES: [3, 8],
            keys.POLICY: "calibrated",
            keys.MAIN_THRESHOLD: 0.99,  # an untrained model is not that sure: its inputs go on
            keys.EXTENSION_THRESHOLD: 0.99,
        }
    )
    cloud = ArrayRecord(edge["cloud"].state_dict()) if cloud_arrays else None
    signed = strategy.signed_config(1, edge["arrays"], config, "evaluate", cloud)
    signed[keys.SERVER_ROUND] = 1
    content = RecordDict({keys.ARRAYS: edge["arrays"], keys.CONFIG: signed})
    if cloud is not None:
        content[keys.CLOUD_ARRAYS] = cloud
    return Message(content=content, dst_node_id=1, message_type="evaluate")


def _loopback_evaluation(edge: dict[str, Any], url: str) -> Message:
    """A signed evaluation instruction naming the cloud server's own (loopback) offload service."""
    strategy: SignedMEANetStrategy = edge["strategy"]
    config = ConfigRecord({keys.EXPERIENCE: 0, keys.HARD_CLASSES: [3, 8], keys.OFFLOAD_URL: url})
    signed = strategy.signed_config(1, edge["arrays"], config, "evaluate", None)
    signed[keys.SERVER_ROUND] = 1
    return Message(content=RecordDict({keys.ARRAYS: edge["arrays"], keys.CONFIG: signed}), dst_node_id=1,
                   message_type="evaluate")  # fmt: skip


@pytest.mark.usefixtures("task_identity")
def test_an_edge_without_the_loopback_services_token_answers_every_input_itself(
    edge: dict[str, Any], tmp_path: Path
) -> None:
    from fl_client.app import app

    run_config = {**edge["run_config"], "report-dir": str(tmp_path)}  # another machine: no REPORT_DIR/offload-token
    pinned = Path(edge["run_config"]["report-dir"]) / VERIFY_KEY_FILE  # as a device pins it
    reply = app(_loopback_evaluation(edge, "http://127.0.0.1:9"), _context(run_config, **{"verify-key": str(pinned)}))
    assert not reply.has_error() and reply.content[keys.EDGE_INFO][keys.CLOUD_BACKEND] == "none"  # type: ignore[index]


def _served_images(server: BackgroundServer, certs: DevCertificates) -> int:
    verify = ssl.create_default_context(cafile=str(certs.ca_cert))
    r = httpx.get(f"{server.url}/metrics.json", verify=verify, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    return int(r.json()["images"])


@pytest.mark.usefixtures("task_identity")
def test_the_edge_offloads_to_the_real_service_with_node_config_credentials(
    edge: dict[str, Any], service: BackgroundServer, certs: DevCertificates, tmp_path: Path
) -> None:
    from fl_client.app import app

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    before = _served_images(service, certs)
    run_config = {**edge["run_config"], "cloud-url": service.url}
    context = _context(run_config, **{"cloud-ca": str(certs.ca_cert), "cloud-token-file": str(token_file)})
    reply = app(_evaluation(edge, cloud_arrays=True), context)  # the cloud-url wins over shipped cloud arrays
    assert not reply.has_error()
    m = reply.content[keys.METRICS]
    assert reply.content[keys.EDGE_INFO][keys.CLOUD_BACKEND] == "remote"  # type: ignore[index]
    assert reply.content[keys.EDGE_INFO][keys.CLIENT] == 0  # type: ignore[index]
    offloaded = int(m[keys.OFFLOADED])  # type: ignore[arg-type]
    assert offloaded > 0 and m[keys.FALLBACKS] == 0
    assert m[keys.EXIT_CLOUD] == pytest.approx(offloaded / int(m[keys.NUM_EXAMPLES]))  # type: ignore[arg-type]
    assert m[keys.BYTES_SENT] == offloaded * 3 * 32 * 32  # uint8 images, as sent
    assert _served_images(service, certs) - before == offloaded  # the service classified exactly those


@pytest.mark.usefixtures("task_identity")
def test_a_cloud_that_does_not_answer_turns_offloads_into_flagged_fallbacks(
    edge: dict[str, Any], certs: DevCertificates
) -> None:
    from fl_client.app import app
    from fl_server.launch import free_port

    run_config = {**edge["run_config"], "cloud-url": f"https://127.0.0.1:{free_port()}"}  # nobody listens there
    context = _context(run_config, **{"cloud-ca": str(certs.ca_cert), "cloud-token": TOKEN, "cloud-timeout": 1})
    reply = app(_evaluation(edge), context)
    m = reply.content[keys.METRICS]
    assert int(m[keys.OFFLOADED]) > 0 and m[keys.FALLBACKS] == m[keys.OFFLOADED]  # type: ignore[arg-type]
    assert m[keys.EXIT_CLOUD] == 0.0  # the edge's own answers stand


@pytest.mark.usefixtures("task_identity")
def test_a_wrong_token_is_an_error_reply_not_silent_fallbacks(
    edge: dict[str, Any], service: BackgroundServer, certs: DevCertificates
) -> None:
    from fl_client.app import app

    run_config = {**edge["run_config"], "cloud-url": service.url}
    context = _context(run_config, **{"cloud-ca": str(certs.ca_cert), "cloud-token": "not-the-token"})
    with pytest.raises(ValueError, match="refused or did not understand"):
        app(_evaluation(edge), context)


@pytest.mark.usefixtures("task_identity")
def test_without_a_cloud_every_routed_input_is_answered_on_the_edge_and_flagged(edge: dict[str, Any]) -> None:
    from fl_client.app import app

    reply = app(_evaluation(edge), _context(edge["run_config"]))
    m = reply.content[keys.METRICS]
    assert reply.content[keys.EDGE_INFO][keys.CLOUD_BACKEND] == "none"  # type: ignore[index]
    assert m[keys.OFFLOADED] == 0 and m[keys.BYTES_SENT] == 0 and int(m[keys.FALLBACKS]) > 0  # type: ignore[arg-type]


def test_cloud_options_come_from_the_node_config(tmp_path: Path) -> None:
    (tmp_path / "t").write_text(" secret \n")
    assert cloud_options({"cloud-token-file": str(tmp_path / "t"), "cloud-ca": "/ca.pem", "cloud-timeout": 3}) == {
        "token": "secret",
        "ca_certfile": "/ca.pem",
        "timeout_s": 3.0,
    }
    assert cloud_options({"partition-id": 0}) == {}
    with pytest.raises(ValueError, match="keep one"):
        cloud_options({"cloud-token": "a", "cloud-token-file": str(tmp_path / "t")})
    with pytest.raises(ValueError, match="cannot read"):
        cloud_options({"cloud-token-file": str(tmp_path / "missing")})
    with pytest.raises(TypeError, match="cloud-ca"):
        cloud_options({"cloud-ca": 3})


def test_the_round_report_keeps_each_nodes_evaluation(task_identity: None) -> None:
    state = {
        "main.fc.weight": np.ones((3, 2), np.float32),
        "extension.fc.weight": np.ones((2, 3), np.float32),
        "hard_classes": np.array([1, 2], dtype=np.int64),
    }
    strategy = MEANetStrategy()
    grid = Mock(spec=Grid)
    grid.get_node_ids.return_value = [11, 12]
    record = ArrayRecord({k: Array(v) for k, v in state.items()})
    sent = {m.metadata.dst_node_id: m for m in strategy.configure_train(1, record, ConfigRecord({}), grid)}
    edge_arrays = ArrayRecord({"extension.fc.weight": Array(state["extension.fc.weight"])})
    train = [
        Message(RecordDict({keys.ARRAYS: edge_arrays, keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 5})}), reply_to=m)
        for m in sent.values()
    ]
    strategy.aggregate_train(1, train)
    evaluation = []
    for node, (n, offloaded, fallbacks) in {11: (10, 4, 0), 12: (30, 6, 2)}.items():
        metrics = {keys.NUM_EXAMPLES: n, keys.ACCURACY: 0.5, keys.EXIT_CLOUD: (offloaded - fallbacks) / n}
        metrics |= {keys.OFFLOADED: offloaded, keys.FALLBACKS: fallbacks, keys.BYTES_SENT: offloaded * 3072}
        info = ConfigRecord({keys.CLIENT: node - 11, keys.CLOUD_BACKEND: "remote"})
        content = RecordDict({keys.METRICS: MetricRecord(metrics), keys.EDGE_INFO: info})
        evaluation.append(Message(content, reply_to=sent[node]))
    evaluation.append(Message(Error(code=0, reason="out of memory"), reply_to=sent[12]))  # an error reply: left out
    strategy.aggregate_evaluate(1, iter(evaluation))  # a one-shot iterable, as Flower may pass
    report = strategy.round_reports[1]
    per_node = report["client_evaluation_per_node"]
    assert set(per_node) == {11, 12}
    assert per_node[12][keys.OFFLOADED] == 6 and per_node[12]["client"] == 1 and per_node[12]["cloud"] == "remote"
    assert report["client_offload_totals"] == {keys.OFFLOADED: 10, keys.FALLBACKS: 2, keys.BYTES_SENT: 30720}
    md = markdown_summary(
        {"experiences": [], "rounds": [{"experience": 0, "round": 1, "wall_seconds": 1.0, "local_training_seconds": 0.5,
                                        "overhead_seconds": 0.1, "upload_ratio_vs_full_model": 0.1,
                                        "bytes_broadcast_per_client": 10, **report}]}
    )  # fmt: skip
    assert "| 0 | 1 | 12 | 1 | remote | 30 | 0.5000 | 0.133 | 6 | 2 | 18,432 |" in md
