import pytest
import torch

from meanet_core.models import (
    CLOUD_ARCHS,
    MEANET_ARCHS,
    UnknownModelError,
    build_cloud,
    build_meanet,
    count_macs,
    describe_meanet,
)


@pytest.mark.parametrize("name", ["resnet20_cifar", "resnet32_cifar", "mobilenetv2_cifar"])
def test_meanet_exits_have_the_right_shapes(name: str) -> None:
    model = build_meanet(name, 100, [3, 7, 42]).eval()
    x = torch.rand(2, 3, 32, 32)
    main = model.forward_main(x)
    assert main.logits.shape == (2, 100)
    ext = model.forward_extension(x, main.features)
    assert ext.shape == (2, 3)
    assert model.adaptive(model.normalize(x)).shape[2:] == main.features.shape[2:]


def test_imagenet_size_meanet_and_cloud_build() -> None:
    model = build_meanet("resnet18", 10, [1, 2]).eval()
    assert model.input_size == 224
    blocks = {b.name: b for b in describe_meanet(model)}
    assert blocks["main"].out_shape == (512, 7, 7)
    assert blocks["adaptive"].out_shape[1:] == (7, 7)
    assert blocks["main"].macs > 1.5e9  # ResNet-18 at 224x224 is ~1.8 GMACs
    assert build_cloud("resnet50", 10).input_size == 224


def test_describe_reports_params_and_macs() -> None:
    blocks = {b.name: b for b in describe_meanet(build_meanet("resnet32_cifar", 100, list(range(20))))}
    # ResNet-32 for CIFAR: ~0.47M parameters, ~69M MACs (He et al. 2016).
    assert 0.45e6 < blocks["main"].params < 0.5e6
    assert 65e6 < blocks["main"].macs < 72e6
    assert blocks["adaptive"].macs < 0.1 * blocks["main"].macs
    assert blocks["extension"].out_shape == (20,)


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(UnknownModelError, match="resnet32_cifar"):
        build_meanet("resnet33", 100)
    with pytest.raises(UnknownModelError, match="resnet110_cifar"):
        build_cloud("vgg", 100)
    assert set(MEANET_ARCHS) >= {"resnet20_cifar", "resnet32_cifar", "resnet56_cifar", "mobilenetv2_cifar"}
    assert {"resnet110_cifar", "resnet50"} <= set(CLOUD_ARCHS)


def test_hard_classes_index_and_validation() -> None:
    model = build_meanet("resnet20_cifar", 10, [7, 2, 2])
    assert model.hard_classes.tolist() == [2, 7]
    assert model.hard_index.tolist() == [-1, -1, 0, -1, -1, -1, -1, 1, -1, -1]
    assert model.extension.fc.out_features == 2
    with pytest.raises(ValueError, match=r"0\.\.9"):
        model.set_hard_classes([10])
    with pytest.raises(ValueError, match="num_classes"):
        build_meanet("resnet20_cifar", 1)


def test_frozen_main_keeps_batchnorm_statistics_in_train_mode() -> None:
    model = build_meanet("resnet20_cifar", 10, [1, 2])
    model.freeze_main(True)
    model.train()
    assert not model.main.training and model.extension.training
    before = {k: v.clone() for k, v in model.main.state_dict().items()}
    model.forward_main(torch.rand(4, 3, 32, 32))
    for k, v in model.main.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(not p.requires_grad for p in model.main.parameters())


def test_count_macs_of_a_linear_layer() -> None:
    layer = torch.nn.Linear(10, 5, bias=False)
    assert count_macs(lambda: layer(torch.zeros(3, 10))) == 150
