"""Shortcut options A, B, C of the paper's Table 3 for the ImageNet ResNets: parameters and shapes."""

import pytest
import torch
import torchvision
from torch import nn

from training import cifar_models, models

RESNET34_B = 21_797_672  # torchvision's resnet34 at 1000 classes


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def projection(in_planes: int, planes: int) -> int:
    return in_planes * planes + 2 * planes  # 1x1 conv without bias, BN's weight and bias


def test_option_b_is_torchvision_unchanged():
    model = models.build("resnet34", 1000, shortcut="B")
    assert count(model) == RESNET34_B
    torchvision.models.resnet34(weights=None).load_state_dict(model.state_dict())  # strict
    torch.manual_seed(0)
    a = models.build("resnet18", 10, shortcut="B").state_dict()
    torch.manual_seed(0)
    assert all(torch.equal(a[k], v) for k, v in models.build("resnet18", 10).state_dict().items())


def test_option_a_has_no_parameter_in_any_shortcut():
    model = models.build("resnet34", 1000, shortcut="A")
    # B's three projections (64->128, 128->256, 256->512) are gone, nothing else changed
    assert count(model) == RESNET34_B - sum(projection(c, 2 * c) for c in (64, 128, 256))
    pads = [b.downsample for s in (model.layer2, model.layer3, model.layer4) for b in s if b.downsample is not None]
    assert len(pads) == 3 and all(isinstance(p, cifar_models.PadShortcut) for p in pads)
    assert not any("downsample" in name for name, _ in model.named_parameters())


def test_option_c_projects_every_shortcut():
    model = models.build("resnet34", 1000, shortcut="C")
    # 16 blocks: B projects 3 of them; C adds a projection to the other 13 (3x64, 3x128, 5x256, 2x512)
    extra = 3 * projection(64, 64) + 3 * projection(128, 128) + 5 * projection(256, 256) + 2 * projection(512, 512)
    assert count(model) == RESNET34_B + extra == 22_716_840
    blocks = [b for s in (model.layer1, model.layer2, model.layer3, model.layer4) for b in s]
    assert all(isinstance(b.downsample[0], nn.Conv2d) and b.downsample[0].kernel_size == (1, 1) for b in blocks)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("option", ["A", "B", "C"])
def test_every_option_gives_logits_of_the_right_shape(arch, option):
    model = models.build(arch, 7, shortcut=option).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()


def test_options_outside_the_imagenet_resnets_are_refused_by_name():
    with pytest.raises(ValueError, match=r"shortcut must be one of \('A', 'B', 'C'\), got 'D'"):
        models.build("resnet18", 10, shortcut="D")
    with pytest.raises(ValueError, match="resnet20's shortcuts are A, fixed"):
        models.build("resnet20", 10, shortcut="B")
    with pytest.raises(ValueError, match="plain34's shortcuts are none"):
        models.build("plain34", 10, shortcut="A")
