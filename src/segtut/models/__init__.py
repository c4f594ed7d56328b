"""The model registry: every architecture of the series, built by name.

>>> model = build_model("unet", num_classes=11, base_channels=16)
>>> model = build_model("smp_unet", num_classes=11, encoder_name="resnet18", pretrained=True)

Every entry has one signature, ``(num_classes, *, pretrained, in_channels, **options) ->
nn.Module``, and its model maps images ``(N, in_channels, H, W)`` to logits
``(N, num_classes, H, W)`` at the input size:

* ``pretrained``: the library models and the models on torchvision encoders (the U-Nets,
  PSPNet) default to True (ImageNet weights, with the offline fallback of
  :mod:`segtut.weights`); the from-scratch
  models (U-Net, FCN-8s, FC-DenseNet) default to False and raise ValueError for True, since no
  pretrained weights exist for them.
* ``in_channels``: 3 by default; from-scratch models are built for it, pretrained ones have their
  stem convolution adapted after the weights are loaded.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from segtut.models.fc_densenet import densenet_unet, fc_densenet56, fc_densenet67, fc_densenet103
from segtut.models.fcn import FCN8s, fcn8s_separable
from segtut.models.library import smp_fpn, smp_segformer, smp_unet, torchvision_deeplabv3
from segtut.models.mobilenetv2_unet import mobilenetv2_unet
from segtut.models.pspnet import pspnet
from segtut.models.unet import UNet
from segtut.measure import count_parameters  # noqa: F401 - re-exported, one definition


def _from_scratch(name: str, builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """``builder`` with the registry's signature: ``pretrained=False`` accepted, True refused."""

    def build(num_classes: int, *, pretrained: bool = False, in_channels: int = 3,
              **options) -> nn.Module:
        if pretrained:
            raise ValueError(f"There are no pretrained weights for {name!r}: it is trained from "
                             "scratch in this series. Pass pretrained=False, or pick a model "
                             "with an ImageNet encoder (e.g. 'smp_unet', 'mobilenetv2_unet').")
        model = builder(num_classes=num_classes, in_channels=in_channels, **options)
        model.weights_source = "random initialisation (trained from scratch)"
        return model

    # Not functools.wraps: its __wrapped__ would make inspect.signature show the builder's own
    # signature, without ``pretrained``.
    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"Build ``{name}`` from scratch (``pretrained=True`` raises ValueError); "
                     f"options go to :func:`{builder.__module__}.{builder.__qualname__}`.")
    return build


MODELS: dict[str, Callable[..., nn.Module]] = {
    "unet": _from_scratch("unet", UNet),
    "fcn8s": _from_scratch("fcn8s", FCN8s),
    # FCN-8s with depthwise-separable convolutions
    "fcn8s_separable": _from_scratch("fcn8s_separable", fcn8s_separable),
    # FC-DenseNet, "The One Hundred Layers Tiramisu" (Jegou et al., 2017): the paper's three sizes.
    "fc_densenet56": _from_scratch("fc_densenet56", fc_densenet56),
    "fc_densenet67": _from_scratch("fc_densenet67", fc_densenet67),
    "fc_densenet103": _from_scratch("fc_densenet103", fc_densenet103),
    # Library models (segtut.models.library): pretrained=True tries ImageNet encoder weights and
    # falls back to random initialisation offline; model.weights_source says which happened.
    "smp_unet": smp_unet,
    "smp_fpn": smp_fpn,
    "smp_segformer": smp_segformer,
    "deeplabv3": torchvision_deeplabv3,
    # From-scratch decoders on torchvision encoders (same pretrained=True behaviour as above).
    "mobilenetv2_unet": mobilenetv2_unet,
    "densenet_unet": densenet_unet,  # backbone="densenet121" / "densenet169" / "densenet201"
    # PSPNet (Zhao et al., 2017): dilated torchvision ResNet, pyramid pooling, optional aux head.
    "pspnet": pspnet,  # backbone="resnet18" / "resnet34" / "resnet50" / "resnet101"
}


def build_model(name: str, num_classes: int, **options) -> nn.Module:
    """Build a registered model by name, e.g. ``build_model("unet", 11, base_channels=32)``.

    ``options`` may always include ``pretrained`` and ``in_channels`` (see the module's
    docstring), and the model's own options.
    """
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}. Valid choices: {', '.join(sorted(MODELS))}.")
    return MODELS[name](num_classes=num_classes, **options)
