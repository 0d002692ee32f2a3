"""Feature extractors. Each builder takes (input channels, pretrained, image size), returns a
module mapping N x C x H x W to N x D and sets ``out_dim``. torchvision's definitions are used unchanged where they exist
(only the classifier is removed, and the first conv adapted for 1-channel input), so
speed comparisons with other code using them are like for like.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pah.errors import UserError
from pah.registry import Registry

__all__ = ["BACKBONES", "build_backbone"]

Builder = Callable[[int, bool, int], nn.Module]
BACKBONES: Registry[Builder] = Registry("backbone")


def build_backbone(name: str, in_channels: int, pretrained: bool = False, image_size: int = 28) -> nn.Module:
    net = BACKBONES.get(name)(in_channels, pretrained, image_size)
    assert hasattr(net, "out_dim"), name
    return net


def _torchvision_weights(enum_name: str, pretrained: bool):
    if not pretrained:
        return None
    import torchvision

    return getattr(torchvision.models, enum_name).DEFAULT


def _load_pretrained(build: Callable[..., nn.Module], weights) -> nn.Module:
    try:
        return build(weights=weights)
    except Exception as e:  # urllib errors, hub cache misses, ...
        if weights is None:
            raise
        raise UserError(
            f"model.pretrained: could not load torchvision weights {weights} ({type(e).__name__}: {e}); "
            "offline machines need the file in the torch hub cache, or set model.pretrained=false"
        ) from None


@BACKBONES.register("small-cnn")
def small_cnn(in_channels: int, pretrained: bool, image_size: int) -> nn.Module:
    """Three conv blocks and global pooling: for 8x8 and 28x28 images, CPU-friendly."""
    if pretrained:
        raise UserError("model.pretrained: no pretrained weights exist for small-cnn")

    def block(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    net = nn.Sequential(block(in_channels, 32, 1), block(32, 64, 2), block(64, 128, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net.out_dim = 128
    return net


@BACKBONES.register("mlp")
def mlp(in_channels: int, pretrained: bool, image_size: int) -> nn.Module:
    """van de Ven's Split-MNIST network: the image flattened, then two fully connected layers of
    400 units with ReLU (the task heads are the third layer), PyTorch's default initialisation."""
    if pretrained:
        raise UserError("model.pretrained: no pretrained weights exist for mlp")
    d = in_channels * image_size * image_size
    net = nn.Sequential(nn.Flatten(), nn.Linear(d, 400), nn.ReLU(), nn.Linear(400, 400), nn.ReLU())
    net.out_dim = 400
    return net


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ReducedResNet18(nn.Module):
    """The continual-learning standard (Lopez-Paz & Ranzato 2017): ResNet-18 with 20 base filters, 3x3 stem."""

    def __init__(self, in_channels: int, nf: int = 20) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, nf, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(nf)
        layers, cin = [], nf
        for i, mult in enumerate((1, 2, 4, 8)):
            for j in range(2):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(_BasicBlock(cin, nf * mult, stride))
                cin = nf * mult
        self.layers = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = nf * 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.layers(torch.relu(self.bn1(self.conv1(x)))))


@BACKBONES.register("reduced-resnet18")
def reduced_resnet18(in_channels: int, pretrained: bool, image_size: int) -> nn.Module:
    if pretrained:
        raise UserError("model.pretrained: no pretrained weights exist for reduced-resnet18")
    return ReducedResNet18(in_channels)


def _adapt_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    if in_channels == conv.in_channels:
        return conv
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)
    with torch.no_grad():  # keep pretrained filters meaningful: average over the RGB channels
        new.weight.copy_(conv.weight.mean(1, keepdim=True).expand_as(new.weight))
    return new


def _torchvision_resnet18(in_channels: int, pretrained: bool, cifar_stem: bool) -> nn.Module:
    import torchvision

    net = _load_pretrained(torchvision.models.resnet18, _torchvision_weights("ResNet18_Weights", pretrained))
    if cifar_stem:  # 3x3 stride-1 stem, no max-pool: the usual ResNet-18 for 32x32 images
        net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    else:
        net.conv1 = _adapt_first_conv(net.conv1, in_channels)
    net.out_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net


@BACKBONES.register("resnet18")
def resnet18(in_channels: int, pretrained: bool, image_size: int) -> nn.Module:
    """torchvision's ResNet-18, unchanged but for the removed classifier."""
    return _torchvision_resnet18(in_channels, pretrained, cifar_stem=False)


@BACKBONES.register("resnet18-cifar")
def resnet18_cifar(in_channels: int, pretrained: bool, image_size: int) -> nn.Module:
    return _torchvision_resnet18(in_channels, pretrained, cifar_stem=True)


@BACKBONES.register("mobilenetv2")
def mobilenetv2(in_channels: int, pretrained: bool, image_size: int) -> nn.Module:
    """torchvision's MobileNetV2, unchanged but for the removed classifier."""
    import torchvision

    net = _load_pretrained(torchvision.models.mobilenet_v2, _torchvision_weights("MobileNet_V2_Weights", pretrained))
    net.features[0][0] = _adapt_first_conv(net.features[0][0], in_channels)
    net.out_dim = net.last_channel
    net.classifier = nn.Identity()
    return net
