"""The paths that let the cloud and the extension earn their place: a cloud model grown from the main block,
distillation of the main block into the cloud model, a residual extension, and the extension distilling the cloud
model by class id. Small real tensors; class ids differ from their positions, so a mix-up fails."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from meanet_core.config import ConfigError, FederationConfig
from meanet_core.data import ImageTensors
from meanet_core.models import MainOutput, MEANet, build_cloud, build_meanet, can_grow, grow_from_main
from meanet_core.training.stages import StageConfig, distillation, train_cloud, train_extension

K = 6
HARD = [1, 4, 5]  # positions 0, 1, 2: ids differ from positions


def _images(classes: list[int], per_class: int, seed: int) -> ImageTensors:
    """The red channel encodes the class (learnable), the rest is noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor(classes).repeat_interleave(per_class)
    x = torch.randint(0, 256, (len(y), 3, 32, 32), generator=g, dtype=torch.uint8)
    x[:, 0] = (y * 40).view(-1, 1, 1).to(torch.uint8)
    return ImageTensors(x, y)


def _scramble_batchnorm(module: nn.Module) -> None:
    """Running statistics and scales away from their defaults, so a copy that misses one shows."""
    g = torch.Generator().manual_seed(3)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@pytest.mark.parametrize("cloud_arch", ["resnet20_cifar", "resnet32_cifar", "resnet56_cifar"])
def test_a_grown_cloud_model_computes_the_main_block_exactly(cloud_arch: str) -> None:
    torch.manual_seed(0)
    meanet = build_meanet("resnet20_cifar", K, HARD, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25))
    _scramble_batchnorm(meanet.main)
    cloud = build_cloud(cloud_arch, K)  # default normalisation: grown, it takes the MEANet's
    grow_from_main(cloud, meanet.main, meanet.normalize)
    x = torch.rand(5, 3, 32, 32)
    meanet.eval()
    cloud.eval()
    with torch.no_grad():
        torch.testing.assert_close(cloud(x), meanet.forward_main(x).logits, atol=1e-5, rtol=1e-5)
    cloud.train()  # the extra blocks are identities in training mode too (their residual branch outputs 0)
    meanet.train()
    with torch.no_grad():
        torch.testing.assert_close(cloud(x), meanet.forward_main(x).logits, atol=1e-4, rtol=1e-4)


def test_growing_refuses_what_it_cannot_grow() -> None:
    main = build_meanet("resnet32_cifar", K).main
    assert "shallower" in (can_grow(main, build_cloud("resnet20_cifar", K)) or "")
    assert "CIFAR ResNets" in (can_grow(main, build_cloud("resnet50", K)) or "")
    with pytest.raises(ValueError, match="cannot grow"):
        grow_from_main(build_cloud("resnet20_cifar", K), main)
    with pytest.raises(ConfigError, match="cloud-init"):
        FederationConfig(model="mobilenetv2_cifar", cloud_model="resnet56_cifar", cloud_init="main")
    with pytest.raises(ConfigError, match="cloud-init"):
        FederationConfig(cloud_init="teacher")
    assert (
        FederationConfig(model="resnet20_cifar", cloud_model="resnet56_cifar", cloud_init="main").cloud_init == "main"
    )


def test_distillation_is_zero_on_agreement_and_follows_the_teacher() -> None:
    logits = torch.randn(4, K)
    assert distillation(logits, logits).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.zeros(4, K, requires_grad=True)
    teacher = torch.zeros(4, K)
    teacher[:, 4] = 5.0
    distillation(student, teacher).backward()
    assert student.grad is not None and int(student.grad.argmin(1)[0]) == 4  # descent raises class 4


class RedTeacher(MEANet):
    """A MEANet whose main block reads the class off the red channel and, for class 2, also puts mass on class 3:
    knowledge the labels (0 and 2 only) do not carry."""

    def forward_main(self, x: torch.Tensor) -> MainOutput:
        out = super().forward_main(x)
        two = (x[:, 0].mean(dim=(1, 2)) > 0.2).float()  # red 80/255 for class 2, 0 for class 0
        logits = torch.full_like(out.logits, -4.0)
        logits[:, 0] = 4 * (1 - two)
        logits[:, 2] = 4 * two
        logits[:, 3] = 4 * two - 0.5
        return MainOutput(logits, out.features)


def test_the_cloud_model_learns_what_the_main_block_knows_by_class_id() -> None:
    torch.manual_seed(0)
    base = build_meanet("resnet20_cifar", K, HARD)
    teacher = RedTeacher("resnet20_cifar", base.main, K, HARD, (0.5,) * 3, (0.25,) * 3, 32)
    data = _images([0, 2], 32, seed=1)
    cfg = StageConfig(epochs=4, batch_size=16, lr=0.01, augment=False)

    def mass_on_3(distill: float) -> float:
        torch.manual_seed(0)
        cloud = build_cloud("resnet20_cifar", K)
        train_cloud(cloud, data, cfg, teacher=teacher, distill_weight=distill, progress=False)
        cloud.eval()
        with torch.no_grad():
            return float(cloud(data.x[data.y == 2].float() / 255).softmax(1)[:, 3].mean())

    plain, distilled = mass_on_3(0.0), mass_on_3(1.0)  # measured: 0.006 and 0.246 (the teacher: 0.38)
    assert distilled > plain + 0.1, (plain, distilled)
    with pytest.raises(ValueError, match="distill_weight"):
        train_cloud(build_cloud("resnet20_cifar", K), data, cfg, teacher=teacher, distill_weight=-1, progress=False)


def test_a_residual_extension_starts_as_the_main_block_and_old_states_keep_their_meaning() -> None:
    torch.manual_seed(0)
    model = build_meanet("resnet20_cifar", K, HARD).eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        out = model.forward_main(x)
        torch.testing.assert_close(model.forward_extension(x, out.features), out.logits[:, HARD])
    model.set_hard_classes([0, 3])  # a new hard set: the correction starts at zero again
    assert model.extension.fc.weight.abs().sum() == 0
    # a state saved before residual extensions (no buffer): its extension classifies on its own
    state = {k: v for k, v in build_meanet("resnet20_cifar", K, HARD, residual_extension=False).state_dict().items()}
    state.pop("extension_residual")
    loaded = build_meanet("resnet20_cifar", K, HARD)
    loaded.load_state_dict(state)
    assert not loaded.residual_extension and int(loaded.extension_residual[0]) == 0
    with torch.no_grad():
        features = loaded.forward_main(x).features
        plain = loaded.extension(features, loaded.adaptive(loaded.normalize(x)))
        torch.testing.assert_close(loaded.forward_extension(x, features), plain)
    # and a residual state into a model built otherwise takes the state's meaning
    other = build_meanet("resnet20_cifar", K, HARD, residual_extension=False)
    other.load_state_dict(build_meanet("resnet20_cifar", K, HARD).state_dict())
    assert other.residual_extension


def test_the_extension_distils_the_cloud_model_by_class_id() -> None:
    """The cloud model prefers hard class 5 (position 2) on every image; the labels say 1 and 4. Distilled, the
    extension moves its mass toward class 5's position, not toward position 5 or class id 2."""
    torch.manual_seed(0)
    data = _images(HARD[:2], 24, seed=2)
    cloud = build_cloud("resnet20_cifar", K)
    with torch.no_grad():
        cloud.net.fc.weight.zero_()
        cloud.net.fc.bias.copy_(torch.tensor([0.0, 0, 3, 0, 0, 6]))  # class 5 first, then class 2 (easy)

    def mass_on_5(distill: float) -> float:
        torch.manual_seed(0)
        model = build_meanet("resnet20_cifar", K, HARD)
        cfg = StageConfig(epochs=3, batch_size=16, lr=0.05, augment=False)
        train_extension(model, data, cfg, teacher=cloud, distill_weight=distill, progress=False)
        model.eval()
        with torch.no_grad():
            xf = data.x.float() / 255
            ext = model.forward_extension(xf, model.forward_main(xf).features).softmax(1)
        return float(ext[:, int(model.hard_index[5])].mean())

    plain, distilled = mass_on_5(0.0), mass_on_5(4.0)
    assert distilled > plain + 0.1, (plain, distilled)
