"""The networks of He et al. (arXiv 1512.03385): ImageNet ResNets and plain nets (sec. 4.1, Table 1)
and the CIFAR-10 ResNets and plain nets (sec. 4.2, training.cifar_models).

The ImageNet ResNets *are* torchvision's (`torchvision.models.resnet`), so a state dict trained here
loads unchanged into `torchvision.models.resnetNN` and torchvision's published weights load here.
torchvision's Bottleneck puts the stride on the 3x3 conv ("ResNet v1.5"), the paper on the first
1x1; this costs ~0.3 G multiply-adds more for resnet50 (4.1 G vs Table 1's 3.8 G) and is the variant
torchvision's weights were trained with.

    from training import models
    net = models.build("resnet152", num_classes=10, zero_init_residual=True)
    net = models.build("resnet34", num_classes=10, shortcut="A")   # Table 3's options A, B, C

Shortcut options (sec. 3.3 and 4.1, Table 3) for the ImageNet ResNets: "A" zero-pads the identity
where the dimensions grow (no shortcut has parameters), "B" (torchvision's, the default) projects
only there, "C" projects on every shortcut. The CIFAR nets are option A by construction (sec. 4.2):
they take "A" and refuse B and C; plain nets have no shortcut to choose.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from artifact import SHORTCUTS
from training import cifar_models


class PlainBlock(BasicBlock):
    """BasicBlock without its shortcut: the paper's 'plain' baseline (sec. 3.3, Fig. 3 middle)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, *args, **kwargs):
        # ResNet._make_layer offers a projection for the shortcut; a plain net has no shortcut.
        super().__init__(inplanes, planes, stride, None, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)))


def _set_shortcuts(net: ResNet, option: str) -> None:
    """Turn torchvision's option-B shortcuts into option A or C, in place (Table 3)."""
    for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in stage:
            last = block.conv3 if isinstance(block, Bottleneck) else block.conv2
            in_planes, planes, stride = block.conv1.in_channels, last.out_channels, block.stride
            if option == "A" and block.downsample is not None:
                block.downsample = cifar_models.PadShortcut(in_planes, planes, stride)
            elif option == "C" and block.downsample is None:
                conv = nn.Conv2d(in_planes, planes, 1, stride, bias=False)
                # torchvision's initialisation of every other conv and BN of the net
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                block.downsample = nn.Sequential(conv, nn.BatchNorm2d(planes))


def _imagenet(block: type[nn.Module], layers: list[int]) -> Callable[..., nn.Module]:
    def builder(num_classes: int, zero_init_residual: bool = False, shortcut: str = "B") -> nn.Module:
        # A plain net has no residual branch to zero: zeroing its bn2 would cut the signal path.
        zero_init = zero_init_residual and block is not PlainBlock
        net = ResNet(block, layers, num_classes=num_classes, zero_init_residual=zero_init)
        if shortcut != "B":
            _set_shortcuts(net, shortcut)
        return net

    return builder


# Table 1 of the paper: the list of builders is the architecture table.
IMAGENET_ARCHS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": _imagenet(BasicBlock, [2, 2, 2, 2]),
    "resnet34": _imagenet(BasicBlock, [3, 4, 6, 3]),
    "resnet50": _imagenet(Bottleneck, [3, 4, 6, 3]),
    "resnet101": _imagenet(Bottleneck, [3, 4, 23, 3]),
    "resnet152": _imagenet(Bottleneck, [3, 8, 36, 3]),
    "plain18": _imagenet(PlainBlock, [2, 2, 2, 2]),
    "plain34": _imagenet(PlainBlock, [3, 4, 6, 3]),
}

CIFAR_ARCHS: dict[str, Callable[..., nn.Module]] = cifar_models.ARCHS

ARCHS: dict[str, Callable[..., nn.Module]] = {**IMAGENET_ARCHS, **CIFAR_ARCHS}


def check_arch(arch: str) -> str:
    """Return arch if it names a builder; otherwise ValueError listing the valid names."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of: {', '.join(ARCHS)}")
    return arch


def is_cifar(arch: str) -> bool:
    """True for the paper's CIFAR-10 nets (native 32x32 input), False for the ImageNet nets."""
    return check_arch(arch) in CIFAR_ARCHS


def native_input_size(arch: str) -> int:
    """The input side the arch was designed for: 32 for CIFAR nets, 224 for ImageNet nets."""
    return 32 if is_cifar(arch) else 224


def strided_convs_on_one_pixel(arch: str, image_size: int) -> list[str]:
    """Names of the arch's strided k>1 convolutions that see a 1x1 input at this input size.

    On the CPU, oneDNN's bf16 weight gradient for such a convolution is wrong: the taps that only
    ever see zero padding get garbage or NaN instead of 0 (torch 2.14.1 on an AMX CPU; a 2x2 input
    is fine). The forward pass skips those taps, so the loss looks healthy while the weights rot;
    the trainer runs these convolutions in float32 under --amp on the CPU."""
    with torch.device("meta"):  # shapes only: no memory, no compute, no draw on the global RNG
        model = build(arch, 1).eval()
    hits: list[str] = []

    def spot(name: str):
        return lambda module, args: hits.append(name) if tuple(args[0].shape[-2:]) == (1, 1) else None

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and max(module.stride) > 1 and max(module.kernel_size) > 1:
            module.register_forward_pre_hook(spot(name))
    with torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size, device="meta"))
    return hits


def own_shortcut(arch: str) -> str | None:
    """The option an arch has when none is asked for: B (ImageNet ResNets), A (CIFAR ResNets), None (plain)."""
    if check_arch(arch).startswith("plain"):
        return None
    return "A" if arch in CIFAR_ARCHS else "B"


def check_shortcut(arch: str, shortcut: str | None) -> str | None:
    """shortcut if `arch` can be built with it (None: the arch's own); ValueError naming the value otherwise.

    Any of A, B, C for the ImageNet ResNets; A alone for the CIFAR ResNets, which are option A by
    construction (sec. 4.2); nothing for a plain net, which has no shortcut."""
    if shortcut is None:
        return None
    if shortcut not in SHORTCUTS:
        raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
    own = own_shortcut(arch)
    if own is None:
        raise ValueError(f"shortcut {shortcut!r} does not apply to {arch}: {arch}'s shortcuts are none (a plain net)")
    if arch in CIFAR_ARCHS and shortcut != own:
        raise ValueError(f"shortcut {shortcut!r} does not apply to {arch}: {arch}'s shortcuts are A, fixed (sec. 4.2); "
                         "B and C are for the ImageNet ResNets")
    return shortcut


def build(arch: str, num_classes: int, zero_init_residual: bool = False, shortcut: str | None = None) -> nn.Module:
    """A freshly initialised network; zero_init_residual zeroes each residual branch's last BN;
    shortcut picks option A, B or C of Table 3 for an ImageNet ResNet (None: the arch's own)."""
    if not (isinstance(num_classes, int) and num_classes >= 1):
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    check_arch(arch)
    if check_shortcut(arch, shortcut) is None or arch in CIFAR_ARCHS:
        return ARCHS[arch](num_classes, zero_init_residual=zero_init_residual)
    return ARCHS[arch](num_classes, zero_init_residual=zero_init_residual, shortcut=shortcut)
