"""training.paper.probes: the per-layer gradient norms and the response stds of Figure 7, on nets whose answer is known."""

import math

import torch
from torch import nn

from training import cifar_models, models
from training.paper import probes


def test_gradient_norm_of_a_linear_classifier_is_the_hand_computed_one():
    # Zero weights: softmax is (1/2, 1/2), so dL/dW = mean over the batch of (p - onehot(y)) x^T:
    # rows (-0.25, 0.5, 0, 0) and (0.25, -0.5, 0, 0), norm sqrt(0.625).
    net = nn.Sequential(nn.Linear(4, 2, bias=False))
    nn.init.zeros_(net[0].weight)
    images = torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0]])
    norms = probes.gradient_norms(net, images, torch.tensor([0, 1]))
    assert [name for name, _ in norms] == ["0"]
    assert math.isclose(norms[0][1], math.sqrt(0.625), rel_tol=1e-6)


def test_gradient_probe_lists_every_weighted_layer_in_order_and_changes_nothing():
    torch.manual_seed(0)
    net = cifar_models.CifarResNet(1, num_classes=3)  # 8 weighted layers: stem, 3 blocks x 2, classifier
    before = {k: v.clone() for k, v in net.state_dict().items()}
    norms = probes.gradient_norms(net, torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]))
    assert [n for n, _ in norms] == ["conv1"] + [f"layers.{b}.conv{c}" for b in range(3) for c in (1, 2)] + ["fc"]
    assert all(value > 0 and math.isfinite(value) for _, value in norms)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # BN running stats included
    assert all(p.grad is None for p in net.parameters())


def test_shortcut_projections_are_not_weighted_layers():
    names = [n for n, _ in probes.weighted_layers(models.build("resnet18", 10))]
    assert len(names) == 18 and not any("downsample" in n for n in names)  # the "18" of resnet18


def test_response_stds_cover_every_3x3_layer_and_a_zeroed_residual_function_has_std_zero():
    torch.manual_seed(0)
    net = cifar_models.CifarResNet(1, num_classes=3, zero_init_residual=True)
    stds = probes.response_stds(net, torch.randn(4, 3, 8, 8))
    assert [n for n, _ in stds] == [f"layers.{b}.bn{c}" for b in range(3) for c in (1, 2)]
    # bn2 is the residual function's output: zero-init makes it exactly 0, bn1's is not
    assert [s == 0.0 for _, s in stds] == [False, True] * 3
    assert net.training  # the probe ran in eval mode and put the mode back


def test_response_std_of_a_batchnorm_in_eval_mode_is_its_scale_times_the_input_std():
    bn = nn.BatchNorm2d(1).eval()
    nn.init.constant_(bn.weight, 3.0)
    net = nn.Sequential()
    net.add_module("block", nn.Module())
    net.block.conv1, net.block.bn1 = nn.Conv2d(1, 1, 3, padding=1, bias=False), bn
    nn.init.dirac_(net.block.conv1.weight)  # the identity
    net.block.forward = lambda x: net.block.bn1(net.block.conv1(x))
    x = torch.randn(8, 1, 6, 6)
    [(name, std)] = probes.response_stds(net, x)
    assert name == "block.bn1"
    assert math.isclose(std, 3.0 * float(x.std()) / math.sqrt(1 + bn.eps), rel_tol=1e-5)


def test_bottleneck_responses_are_the_3x3_layers_only():
    assert len(probes.response_layers(models.build("resnet50", 10))) == 16  # one 3x3 per bottleneck block
