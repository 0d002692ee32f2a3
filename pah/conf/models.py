"""The backbone names ``model.backbone`` may take; the builders in :mod:`pah.models` register
against the same names (tests/test_layers.py checks both agree)."""

from __future__ import annotations

from pah.registry import Registry

__all__ = ["BACKBONE_NAMES"]

#: backbone name -> one line on what it is
BACKBONE_NAMES: Registry[str] = Registry("backbone")

for _name, _what in {
    "small-cnn": "three conv blocks and global pooling, for 8x8 and 28x28 images",
    "mlp": "two fully connected layers of 400 units over the flattened image",
    "reduced-resnet18": "a reduced-width ResNet-18",
    "resnet18": "torchvision's ResNet-18",
    "resnet18-cifar": "torchvision's ResNet-18 with a CIFAR stem",
    "mobilenetv2": "torchvision's MobileNetV2",
}.items():
    BACKBONE_NAMES.register(_name)(_what)
