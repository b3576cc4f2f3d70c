"""An edge device's own data (``--node-config data-dir=...``): the reader, then the real ClientApp reading only it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from PIL import Image

from fl_client import local_data
from fl_client.local_data import EdgeDataError, class_names_for, read_edge_data
from meanet_core import keys
from meanet_core.config import FederationConfig

NAMES = ["zebra", "apple", "mango"]  # sorted order (apple, mango, zebra) differs from the ids (0, 1, 2)
SHADE = {"zebra": 10, "apple": 120, "mango": 230}  # each class's images are one grey level: labels can be checked


def _png(path: Path, value: int, side: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((side, side, 3), value, dtype=np.uint8)).save(path)


def _tree(root: Path, counts: dict[str, int], side: int = 8) -> None:
    for name, n in counts.items():
        for i in range(n):
            _png(root / name / f"{i:03d}.png", SHADE.get(name, 50), side)


def _labels_match_shades(data: Any) -> None:
    for x, y in zip(data.x, data.y, strict=True):
        assert int(x[0, 0, 0]) == SHADE[NAMES[int(y)]]


def test_an_image_folder_split_by_experience_maps_class_folders_by_name(tmp_path: Path) -> None:
    _tree(tmp_path / "exp-0", {"zebra": 5, "apple": 5})
    _tree(tmp_path / "exp-1", {"mango": 10})
    edge = read_edge_data(tmp_path, NAMES, image_size=8, seed=3)
    train0, test0, train1, test1 = edge.train(0), edge.test(0), edge.train(1), edge.test(1)
    for part in (train0, test0, train1, test1):
        _labels_match_shades(part)
    assert sorted(torch.cat([train0.y, test0.y]).tolist()) == [0] * 5 + [1] * 5
    assert (len(train0), len(test0), len(train1)) == (8, 2, 8)  # 20% held out, stratified by class
    assert set(train1.y.tolist()) == {2}  # experience 1 trains on its new images only
    assert sorted(test1.y.tolist()) == sorted([*test0.y.tolist(), 2, 2])  # and tests on every seen experience
    assert read_edge_data(tmp_path, NAMES, image_size=8, seed=3).train(0).y.tolist() == train0.y.tolist()  # seeded
    with pytest.raises(EdgeDataError, match=r"experiences exp-0, exp-1 but none for experience 2"):
        edge.train(2)


def test_a_flat_image_folder_serves_every_experience_and_is_resized(tmp_path: Path) -> None:
    _tree(tmp_path, {"mango": 4, "zebra": 6}, side=12)
    edge = read_edge_data(tmp_path, NAMES, image_size=8)
    assert edge.train(0).x.shape[1:] == (3, 8, 8)
    assert torch.equal(edge.train(0).y, edge.train(4).y) and torch.equal(edge.test(0).y, edge.test(4).y)
    assert sorted(torch.cat([edge.train(0).y, edge.test(0).y]).tolist()) == [0] * 6 + [2] * 4
    _labels_match_shades(edge.train(0))


def test_an_npz_with_and_without_experiences(tmp_path: Path) -> None:
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 2])
    x = np.stack([np.full((8, 8, 3), SHADE[NAMES[c]], dtype=np.uint8) for c in y])
    np.savez(tmp_path / "flat.npz", x=x, y=y)
    flat = read_edge_data(tmp_path / "flat.npz", NAMES, image_size=8)
    assert len(flat.train(0)) + len(flat.test(0)) == 10 and torch.equal(flat.train(0).y, flat.train(3).y)
    _labels_match_shades(flat.train(0))
    np.savez(tmp_path / "exp.npz", x=x, y=y, experience=np.array([0] * 5 + [1] * 5))
    split = read_edge_data(tmp_path / "exp.npz", NAMES, image_size=8)
    assert len(split.train(0)) + len(split.test(0)) == 5
    assert len(split.test(1)) == len(split.test(0)) + 1  # 20% of experience 1's five images, and experience 0's
    _labels_match_shades(split.test(1))
    np.savez(tmp_path / "bad.npz", x=x, y=y + 1)
    with pytest.raises(EdgeDataError, match=r"class ids 1\.\.3, but the cloud's model has 3 classes"):
        read_edge_data(tmp_path / "bad.npz", NAMES, image_size=8)
    np.savez(tmp_path / "nox.npz", images=x, y=y)
    with pytest.raises(EdgeDataError, match=r"lacks x \(found images, y\)"):
        read_edge_data(tmp_path / "nox.npz", NAMES, image_size=8)


def test_an_unknown_class_folder_is_named_with_the_fix(tmp_path: Path) -> None:
    _tree(tmp_path / "exp-0", {"zebra": 2, "kiwi": 2})
    with pytest.raises(EdgeDataError, match=r"exp-0/kiwi are not classes of the cloud's model: name each class folder"):
        read_edge_data(tmp_path, NAMES, image_size=8)


def test_empty_missing_and_mixed_folders_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(EdgeDataError, match=r"holds no class folders"):
        read_edge_data(tmp_path, NAMES, image_size=8)
    (tmp_path / "apple").mkdir()
    (tmp_path / "apple" / "notes.txt").write_text("not an image")
    with pytest.raises(EdgeDataError, match=r"holds no readable image .*1 file\(s\) skipped"):
        read_edge_data(tmp_path, NAMES, image_size=8)
    with pytest.raises(EdgeDataError, match=r"does not exist"):
        read_edge_data(tmp_path / "nowhere", NAMES, image_size=8)
    _tree(tmp_path / "exp-0", {"apple": 2})
    with pytest.raises(EdgeDataError, match=r"mixes experience folders \(exp-<int>\) with other folders \(apple\)"):
        read_edge_data(tmp_path, NAMES, image_size=8)


def test_a_corrupt_image_is_skipped_and_counted(tmp_path: Path) -> None:
    _tree(tmp_path, {"apple": 5, "zebra": 5})
    (tmp_path / "apple" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    edge = read_edge_data(tmp_path, NAMES, image_size=8)
    assert [s.path.name for s in edge.skipped] == ["broken.png"]
    assert len(edge.train(0)) + len(edge.test(0)) == 10


def test_decoded_images_are_cached_until_the_folder_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tree(tmp_path, {"apple": 5})
    calls: list[Path] = []
    from meanet_edge import images

    decode = images.decode_into

    def counting(out: np.ndarray, path: Path, transform: Any) -> str:
        calls.append(path)
        return decode(out, path, transform)

    monkeypatch.setattr(images, "decode_into", counting)  # what decode_labelled calls for every file
    read_edge_data(tmp_path, NAMES, image_size=8)
    read_edge_data(tmp_path, NAMES, image_size=8)
    assert len(calls) == 5  # read once per process
    _png(tmp_path / "apple" / "new.png", SHADE["apple"])
    assert len(read_edge_data(tmp_path, NAMES, image_size=8).train(0)) == 5  # 6 images, 1 held out
    assert len(calls) == 11


def test_class_names_come_from_the_broadcast_else_the_dataset() -> None:
    cfg = FederationConfig(dataset="digits")
    assert class_names_for({keys.CLASS_NAMES: NAMES}, cfg, 3) == tuple(NAMES)
    assert class_names_for({}, cfg, 10) == tuple(str(i) for i in range(10))
    with pytest.raises(EdgeDataError, match="3 class names for a model of 10 classes"):
        class_names_for({keys.CLASS_NAMES: NAMES}, cfg, 10)


def test_the_node_config_names_the_data_or_not(tmp_path: Path) -> None:
    assert local_data.node_data_dir({"partition-id": 0}) is None and local_data.node_data_dir({"data-dir": ""}) is None
    assert local_data.node_data_dir({"data-dir": str(tmp_path)}) == tmp_path
    with pytest.raises(EdgeDataError, match="must be a path string"):
        local_data.node_data_dir({"data-dir": 3})
    _tree(tmp_path, {"apple": 2})  # 20% of two images rounds to none: nothing to evaluate on
    with pytest.raises(EdgeDataError, match="too few images to hold out a test set"):
        read_edge_data(tmp_path, NAMES, image_size=8).test(0)


def test_an_edge_with_its_own_data_names_itself_and_a_shared_slice_must_fit_num_clients(tmp_path: Path) -> None:
    from fl_client.data import client_index

    cfg = FederationConfig.from_run_config({"num-clients": 3})
    own = {"data-dir": str(tmp_path)}
    assert client_index({**own, "partition-id": 907}, cfg) == 907  # its name in the fleet, no num-partitions
    assert client_index({**own, "partition-id": 5, "num-partitions": 1}, cfg) == 5  # a stale count is not read
    assert client_index({"partition-id": 2, "num-partitions": 3}, cfg) == 2
    with pytest.raises(ValueError, match=r"partition-id=I' \(any distinct I >= 0"):
        client_index(own, cfg)
    with pytest.raises(ValueError, match="partition-id=I num-partitions=3"):
        client_index({"partition-id": 1}, cfg)
    for bad in ({"partition-id": 3, "num-partitions": 3}, {"partition-id": 0, "num-partitions": 4}):
        with pytest.raises(ValueError, match=r"does not fit the run's num-clients=3.*data-dir"):
            client_index(bad, cfg)
    with pytest.raises(ValueError, match="must be >= 0"):
        client_index({**own, "partition-id": -1}, cfg)


# ------------------------------------------------------------------------------------------------ the ClientApp
RUN = 11


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A digits run config, a broadcast MEANet built as the server builds it (no dataset loaded), a signing strategy,
    and a device folder: 32x32 images of digits 1, 3 and 8 (hard: 3 and 8), five of each."""
    from meanet_core.models import build_cloud, build_meanet
    from meanet_core.trust.signing import ensure_signing_key
    from strategies.signed import SignedMEANetStrategy

    report = tmp_path_factory.mktemp("report")
    folder = tmp_path_factory.mktemp("edge-0")
    for digit in ("1", "3", "8"):
        for i in range(5):
            _png(folder / digit / f"{i}.png", 20 * int(digit) + i, side=32)
    run_config: dict[str, Any] = {
        "dataset": "digits", "model": "resnet20_cifar", "cloud-model": "resnet20_cifar", "num-clients": 2,
        "experiences": 1, "batch-size": 32, "report-dir": str(report),
    }  # fmt: skip
    signing_key, _ = ensure_signing_key("", report)
    mean, std = (0.3, 0.3, 0.3), (0.4, 0.4, 0.4)
    model = build_meanet("resnet20_cifar", 10, [3, 8], mean=mean, std=std)
    cloud = build_cloud("resnet20_cifar", 10, mean=mean, std=std)
    strategy = SignedMEANetStrategy(signing_key, run_id=RUN)
    strategy.cloud_arrays = ArrayRecord(cloud.state_dict())
    arrays = ArrayRecord(model.state_dict())
    return {"run_config": run_config, "arrays": arrays, "strategy": strategy, "folder": folder}


def _instruction(edge: dict[str, Any], purpose: str, class_names: list[str] | None) -> Message:
    strategy = edge["strategy"]
    config = ConfigRecord({keys.EXPERIENCE: 0, keys.HARD_CLASSES: [3, 8]})
    if class_names is not None:
        config[keys.CLASS_NAMES] = class_names
    cloud = strategy.cloud_arrays if purpose == "evaluate" else None
    signed = strategy.signed_config(1, edge["arrays"], config, purpose, cloud)
    signed[keys.SERVER_ROUND] = 1
    content = RecordDict({keys.ARRAYS: edge["arrays"], keys.CONFIG: signed})
    if cloud is not None:
        content[keys.CLOUD_ARRAYS] = cloud
    return Message(content=content, dst_node_id=1, message_type=purpose)


def _context(edge: dict[str, Any]) -> Context:
    nodes: dict[str, bool | float | int | str] = {
        "partition-id": 1,
        "num-partitions": 2,
        "data-dir": str(edge["folder"]),
    }
    return Context(run_id=RUN, node_id=1, node_config=nodes, state=RecordDict(), run_config=edge["run_config"])


@pytest.mark.usefixtures("task_identity")
@pytest.mark.parametrize("sent_names", [True, False], ids=["class-names-in-broadcast", "dataset-class-names"])
def test_the_client_trains_and_evaluates_on_its_own_folder_only(
    edge: dict[str, Any], monkeypatch: pytest.MonkeyPatch, sent_names: bool
) -> None:
    from fl_client.app import app
    from meanet_core.data import streams

    def no_shared_dataset(*_: Any) -> None:
        raise AssertionError("an edge with its own data-dir loaded the shared dataset")

    monkeypatch.setattr(streams, "stream_for", no_shared_dataset)
    monkeypatch.setattr(streams, "edge_slice", no_shared_dataset)
    names = [str(i) for i in range(10)] if sent_names else None
    reply = app(_instruction(edge, "train", names), _context(edge))
    assert not reply.has_error()
    # 15 images, 20% held out stratified (one per class): 4 of digit 3 and 4 of digit 8 are the hard-class samples
    assert reply.content[keys.METRICS][keys.NUM_EXAMPLES] == 8
    evaluation = app(_instruction(edge, "evaluate", names), _context(edge))
    assert not evaluation.has_error()
    assert evaluation.content[keys.METRICS][keys.NUM_EXAMPLES] == 3
