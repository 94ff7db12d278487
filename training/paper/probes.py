"""What the paper looks at inside a network: the gradient reaching each layer (the argument of
sec. 1 and 3.1: an identity path carries the gradient to the first layer at any depth) and the
standard deviation of each layer's response (sec. 4.2, Figure 7).

    from training.paper import probes
    norms = probes.gradient_norms(model, images, labels)   # [(layer name, ||dL/dW||_2), ...]
    stds = probes.response_stds(model, images)             # [(bn name, std of its output), ...]

Layers are listed in the order the forward pass meets them (registration order in these nets).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def weighted_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every conv and linear layer: the paper's "weighted layers" (sec. 3.3), shortcut projections excluded."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and not _in_shortcut(name)]


def gradient_norms(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> list[tuple[str, float]]:
    """L2 norm of d(mean cross-entropy)/d(weight) for each weighted layer, from one batch in train mode.

    The model's .grad fields are cleared before and after; its parameters and buffers (BatchNorm's
    running statistics) are left as they were, so probing does not change a training run."""
    was_training = model.training
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    model.train()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(images), labels).backward()
    norms = [(name, float(m.weight.grad.norm())) for name, m in weighted_layers(model)]
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
    model.train(was_training)
    return norms


def response_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The BatchNorm after each 3x3 conv inside the blocks: its output is the paper's "response"
    (Figure 7: after BN, before the ReLU or the addition); a block's last one is its residual function."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.BatchNorm2d) and "." in name and not _in_shortcut(name)
            and _conv_before(model, name).kernel_size != (1, 1)]


def response_stds(model: nn.Module, images: torch.Tensor) -> list[tuple[str, float]]:
    """Standard deviation over all elements (images, channels, pixels) of each response, in eval mode."""
    layers = response_layers(model)
    found: dict[str, float] = {}
    handles = [m.register_forward_hook(lambda mod, args, out, name=name: found.__setitem__(name, float(out.float().std())))
               for name, m in layers]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [(name, found[name]) for name, _ in layers]


def _in_shortcut(name: str) -> bool:
    # torchvision calls the projection `downsample`, training.cifar_models `shortcut`.
    return any(part in ("downsample", "shortcut") for part in name.split("."))


def _conv_before(model: nn.Module, bn_name: str) -> nn.Conv2d:
    """The conv a BN normalises: bnK follows convK in every block of torchvision and cifar_models."""
    parent, _, leaf = bn_name.rpartition(".")
    conv = model.get_submodule(parent).get_submodule(leaf.replace("bn", "conv"))
    assert isinstance(conv, nn.Conv2d), bn_name
    return conv
