import pytest
import torch
from torch import nn

from meanet_core.inference.engine import EXIT_CLOUD, EXIT_EXTENSION, EXIT_MAIN, AdaptiveEngine, LocalCloud
from meanet_core.inference.fastpath import fuse_conv_bn, optimize_for_inference, uses_channels_last
from meanet_core.inference.policies import PaperPolicy, normalized_entropy
from meanet_core.models import CloudModel, MEANet, build_cloud, build_meanet, count_macs

HARD = [0, 1, 2, 3]


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Running statistics and affine parameters far from their initial values, so a wrong fold shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


def bn_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max().clamp(min=1)))


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert bn_count(model) > 0 and not uses_channels_last(model)


@pytest.mark.parametrize(("name", "side"), [("resnet20_cifar", 32), ("mobilenetv2_cifar", 32), ("resnet18", 64)])
def test_fused_meanet_matches_the_original(name: str, side: int) -> None:
    torch.manual_seed(0)
    model = randomise_bn(build_meanet(name, 10, HARD))
    before = state(model)
    fast = optimize_for_inference(model)
    assert isinstance(fast, MEANet) and not fast.training
    assert bn_count(fast) == 0  # every BatchNorm of these models follows a convolution
    assert uses_channels_last(fast)
    assert not any(p.requires_grad for p in fast.parameters())
    assert torch.equal(fast.hard_classes, model.hard_classes) and torch.equal(fast.hard_index, model.hard_index)
    assert fast.input_size == model.input_size

    x = torch.rand(2, 3, side, side)
    with torch.inference_mode():
        want = model.forward_main(x)
        got = fast.forward_main(x.contiguous(memory_format=torch.channels_last))
        close(got.logits, want.logits)
        close(got.features, want.features)
        close(fast.forward_extension(x, got.features), model.forward_extension(x, want.features))
    assert_same_state(model, before)
    assert model.training is False and all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("options", [{"fuse_bn": False}, {"channels_last": False}])
def test_each_optimisation_alone(options: dict[str, bool]) -> None:
    model = randomise_bn(build_meanet("resnet20_cifar", 10, HARD))
    fast = optimize_for_inference(model, **options)
    assert (bn_count(fast) == 0) == options.get("fuse_bn", True)
    assert uses_channels_last(fast) == options.get("channels_last", True)
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        close(fast.forward_main(x).logits, model.forward_main(x).logits)


def test_fused_cloud_matches_and_counts_the_same_macs() -> None:
    model = randomise_bn(build_cloud("resnet20_cifar", 10), seed=1)
    before = state(model)
    fast = optimize_for_inference(model)
    assert isinstance(fast, CloudModel) and bn_count(fast) == 0
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        close(fast(x), model(x))
    assert count_macs(lambda: fast(x)) == count_macs(lambda: model(x))  # BatchNorm is not counted; bias neither
    assert_same_state(model, before)
    plain, optimised = LocalCloud(model), LocalCloud(model, optimize=True)
    assert optimised.macs_per_image == plain.macs_per_image
    assert optimised.memory_format == torch.channels_last and plain.memory_format == torch.contiguous_format
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    close(optimised.logits(images), plain.logits(images))


def test_engine_with_optimize_gives_the_same_routes_and_macs() -> None:
    torch.manual_seed(0)
    model = randomise_bn(build_meanet("resnet20_cifar", 10, HARD))
    with torch.no_grad():  # an opinionated main block so entropies spread out
        model.main.fc.weight.mul_(40)
    cloud_model = randomise_bn(build_cloud("resnet20_cifar", 10), seed=1)
    before = state(model)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        entropy = normalized_entropy(model.forward_main(images.float() / 255).logits.softmax(1)).sort().values
    threshold = float(entropy[3:5].mean())  # half the images offloaded, none of them near the threshold

    plain = AdaptiveEngine(model, PaperPolicy(threshold), LocalCloud(cloud_model))
    fast_cloud = LocalCloud(cloud_model, optimize=True)
    fast = AdaptiveEngine(model, PaperPolicy(threshold), fast_cloud, optimize=True)
    assert fast.model is not model and bn_count(fast.model) == 0
    assert (fast.main_macs, fast.extension_macs) == (plain.main_macs, plain.extension_macs)

    want, got = plain.predict(images), fast.predict(images)
    assert set(want.exit.tolist()) == {EXIT_MAIN, EXIT_EXTENSION, EXIT_CLOUD}  # the check covers every exit
    for field in ("labels", "exit", "edge_macs", "cloud_macs", "bytes_sent"):
        assert torch.equal(getattr(got, field), getattr(want, field)), field
    every = fast.predict_all_branches(images, fast_cloud)
    assert torch.equal(every.labels, want.labels) and torch.equal(every.exit, want.exit)
    assert_same_state(model, before)


def test_fusion_needs_eval_mode_and_leaves_unknown_structures_alone() -> None:
    class Reordered(nn.Sequential):  # its own forward: a BatchNorm after a Conv2d in the list need not read it
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self[0](self[1](x))

    conv = nn.Conv2d(3, 3, 3, padding=1)
    shared = nn.BatchNorm2d(4)
    net = nn.Sequential(
        Reordered(nn.BatchNorm2d(3), conv),
        nn.Sequential(nn.Conv2d(3, 4, 1), shared),  # the BatchNorm is used again below: not fused
        shared,
        nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)),  # fused
    )
    with pytest.raises(ValueError, match="eval mode"):
        fuse_conv_bn(net.train())
    assert fuse_conv_bn(net.eval()) == 1
    assert bn_count(net) == 2 and isinstance(net[3][1], nn.Identity)


def test_a_compiled_copy_is_not_optimised_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "compile", lambda fn, **_: fn)  # what is checked is the flag, not torch.compile
    fast = optimize_for_inference(build_meanet("resnet20_cifar", 10, HARD), compile=True)
    assert "forward_main" in vars(fast) and "forward_extension" in vars(fast)
    with pytest.raises(ValueError, match="already compiled"):
        optimize_for_inference(fast)
