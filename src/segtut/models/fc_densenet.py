"""FC-DenseNet, "The One Hundred Layers Tiramisu" (Jégou et al., 2017), in plain PyTorch.

Chapter 10 (``notebooks/10_fc_densenet.ipynb``) shows this code cell by cell; a test keeps the
notebook and this file identical, so edit both together.

Two families of models live here:

* :class:`FCDenseNet`: the paper's network, built from dense blocks (Huang et al., 2017) in a
  U-shaped encoder-decoder. :func:`fc_densenet56`, :func:`fc_densenet67` and
  :func:`fc_densenet103` build the paper's three configurations. The paper reports 1.5 M,
  3.5 M and 9.4 M parameters; counted as the authors' code counts them (BatchNorm's stored
  mean and inverse standard deviation included) these builders give 1.40 M, 3.50 M and 9.43 M, and 1.38 M,
  3.46 M and 9.32 M trainable parameters (``tests/test_fc_densenet.py``).
* :class:`DenseNetUNet`: torchvision's ImageNet DenseNet-121/169/201 as the encoder (features at
  strides 4, 8, 16 and 32) and a light U-Net-style decoder; :func:`densenet_unet` builds it and
  loads the ImageNet weights with the offline fallback of :mod:`segtut.models.library`.

Differences from the paper, and why:

* the logits are not passed through a softmax: segtut's losses take logits;
* BatchNorm uses running statistics at evaluation (PyTorch's default); the paper used the
  statistics of the current batch at test time too.

Input ``(N, 3, H, W)`` float32 with H, W >= 32; output logits ``(N, num_classes, H, W)`` float32.
The file imports only torch; :func:`densenet_unet` also needs torchvision and segtut.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

# %% notebook-copy starts here


class DenseLayer(nn.Sequential):
    """BN -> ReLU -> 3x3 conv -> dropout: ``(N, C_in, H, W) -> (N, growth_rate, H, W)``.

    The layer sees every feature map produced before it in its block (concatenated by
    :class:`DenseBlock`) and adds only ``growth_rate`` new ones.
    """

    def __init__(self, in_channels: int, growth_rate: int, dropout: float = 0.2):
        super().__init__(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            # The paper's convolutions keep their bias (Lasagne's default): it is counted in
            # the published parameter numbers.
            nn.Conv2d(in_channels, growth_rate, kernel_size=3, padding=1),
            nn.Dropout(dropout),  # element-wise, as the paper's Lasagne DropoutLayer
        )


class DenseBlock(nn.Module):
    """``num_layers`` dense layers, each fed the concatenation of all earlier feature maps.

    Args:
        in_channels: channels of the block's input.
        num_layers: dense layers in the block.
        growth_rate: new channels per layer (``k`` in the paper).
        dropout: dropout probability after each convolution.
        keep_input: return the input concatenated with the new maps (downsampling path, and
            the last block of the network); False returns only the ``num_layers * growth_rate``
            new maps (bottleneck and upsampling path: the paper's rule that keeps the number
            of channels in check).

    Shapes: ``(N, in_channels, H, W)`` -> ``(N, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, num_layers: int, growth_rate: int,
                 dropout: float = 0.2, keep_input: bool = True):
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(in_channels + i * growth_rate, growth_rate, dropout)
            for i in range(num_layers))
        self.keep_input = keep_input
        self.out_channels = num_layers * growth_rate + (in_channels if keep_input else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            # The concatenation is a new tensor every time: memory grows with the square of
            # the number of layers (see the chapter).
            features.append(layer(torch.cat(features, dim=1)))  # (N, growth_rate, H, W)
        if not self.keep_input:
            features = features[1:]
        return torch.cat(features, dim=1)  # (N, out_channels, H, W)


class TransitionDown(nn.Sequential):
    """BN -> ReLU -> 1x1 conv -> dropout -> 2x2 max-pool.

    ``(N, C, H, W) -> (N, C, H // 2, W // 2)``: the channels stay, the resolution halves.
    """

    def __init__(self, channels: int, dropout: float = 0.2):
        super().__init__(
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, kernel_size=1),
            nn.Dropout(dropout),
            nn.MaxPool2d(2),
        )


class TransitionUp(nn.Module):
    """3x3 transposed convolution with stride 2, then concatenation with the skip connection.

    ``x``: ``(N, C, h, w)``; ``skip``: ``(N, C_skip, H, W)`` with ``h = H // 2``;
    returns ``(N, C + C_skip, H, W)``.
    """

    def __init__(self, channels: int):
        super().__init__()
        # No padding: the output is (2h + 1) x (2w + 1), never smaller than the skip (2h or
        # 2h + 1), so a centre crop fits it for even and odd sizes alike.
        self.up = nn.ConvTranspose2d(channels, channels, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)  # (N, C, 2h + 1, 2w + 1)
        height, width = skip.shape[-2:]
        top, left = (x.shape[-2] - height) // 2, (x.shape[-1] - width) // 2
        x = x[..., top:top + height, left:left + width]  # (N, C, H, W)
        return torch.cat([x, skip], dim=1)  # (N, C + C_skip, H, W)


class FCDenseNet(nn.Module):
    """Fully convolutional DenseNet: dense blocks in a U-shaped encoder-decoder.

    Args:
        num_classes: output channels (classes, void not included).
        in_channels: image channels.
        first_channels: channels of the first 3x3 convolution (48 in the paper).
        growth_rate: new channels per dense layer (12 or 16 in the paper).
        down_layers: dense layers per block on the way down, one block per pooling
            (``(4, 5, 7, 10, 12)`` for FC-DenseNet103).
        bottleneck_layers: dense layers of the block at the lowest resolution (15 in FC-DenseNet103).
        up_layers: dense layers per block on the way up (default: ``down_layers`` reversed).
        dropout: dropout probability after every convolution (0.2 in the paper).

    Shapes: ``(N, in_channels, H, W)`` float -> logits ``(N, num_classes, H, W)``, for any
    H, W >= 2 ** len(down_layers).
    """

    def __init__(self, num_classes: int, in_channels: int = 3, first_channels: int = 48,
                 growth_rate: int = 16, down_layers: tuple = (4, 5, 7, 10, 12),
                 bottleneck_layers: int = 15, up_layers: tuple | None = None,
                 dropout: float = 0.2):
        super().__init__()
        up_layers = tuple(reversed(down_layers)) if up_layers is None else tuple(up_layers)
        if len(up_layers) != len(down_layers):
            raise ValueError(f"up_layers needs one entry per pooling ({len(down_layers)}), "
                             f"got {len(up_layers)}.")
        self.stem = nn.Conv2d(in_channels, first_channels, kernel_size=3, padding=1)
        channels, skip_channels = first_channels, []
        self.down_blocks, self.transitions_down = nn.ModuleList(), nn.ModuleList()
        for num_layers in down_layers:
            self.down_blocks.append(DenseBlock(channels, num_layers, growth_rate, dropout))
            channels = self.down_blocks[-1].out_channels  # input + new maps: the skip
            skip_channels.append(channels)
            self.transitions_down.append(TransitionDown(channels, dropout))
        self.bottleneck = DenseBlock(channels, bottleneck_layers, growth_rate, dropout,
                                     keep_input=False)
        channels = self.bottleneck.out_channels  # only the new maps are upsampled
        self.transitions_up, self.up_blocks = nn.ModuleList(), nn.ModuleList()
        for i, num_layers in enumerate(up_layers):
            self.transitions_up.append(TransitionUp(channels))
            last = i == len(up_layers) - 1  # the head sees everything of the last block
            self.up_blocks.append(DenseBlock(channels + skip_channels.pop(), num_layers,
                                             growth_rate, dropout, keep_input=last))
            channels = self.up_blocks[-1].out_channels
        self.head = nn.Conv2d(channels, num_classes, kernel_size=1)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                # The paper's "HeUniform" initialisation (He et al., 2015), zero biases.
                nn.init.kaiming_uniform_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images)  # (N, 48, H, W)
        skips = []
        for block, transition in zip(self.down_blocks, self.transitions_down):
            x = block(x)  # (N, C + L * k, h, w)
            skips.append(x)
            x = transition(x)  # (N, C + L * k, h // 2, w // 2)
        x = self.bottleneck(x)  # (N, L * k, h, w): the new maps only
        for transition, block in zip(self.transitions_up, self.up_blocks):
            x = transition(x, skips.pop())  # (N, C_up + C_skip, 2h or 2h + 1, ...)
            x = block(x)  # (N, L * k, ...) or, for the last block, everything
        return self.head(x)  # (N, num_classes, H, W)


#: The paper's three configurations (its Table 2 shows FC-DenseNet103).
FC_DENSENET_CONFIGS = {
    "fc_densenet56": dict(growth_rate=12, down_layers=(4, 4, 4, 4, 4), bottleneck_layers=4),
    "fc_densenet67": dict(growth_rate=16, down_layers=(5, 5, 5, 5, 5), bottleneck_layers=5),
    "fc_densenet103": dict(growth_rate=16, down_layers=(4, 5, 7, 10, 12), bottleneck_layers=15),
}


def fc_densenet56(num_classes: int, **options) -> FCDenseNet:
    """FC-DenseNet56: 4 layers per block, growth rate 12. ``options`` override any setting."""
    return FCDenseNet(num_classes, **{**FC_DENSENET_CONFIGS["fc_densenet56"], **options})


def fc_densenet67(num_classes: int, **options) -> FCDenseNet:
    """FC-DenseNet67: 5 layers per block, growth rate 16. ``options`` override any setting."""
    return FCDenseNet(num_classes, **{**FC_DENSENET_CONFIGS["fc_densenet67"], **options})


def fc_densenet103(num_classes: int, **options) -> FCDenseNet:
    """FC-DenseNet103: 4, 5, 7, 10, 12 | 15 | 12, 10, 7, 5, 4 layers, growth rate 16."""
    return FCDenseNet(num_classes, **{**FC_DENSENET_CONFIGS["fc_densenet103"], **options})


class ConvBNReLU(nn.Sequential):
    """Conv (no bias: BatchNorm follows) -> BN -> ReLU. ``(N, C_in, H, W) -> (N, C_out, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DenseNetUNet(nn.Module):
    """A torchvision DenseNet encoder with a light U-Net decoder.

    The encoder is ``torchvision.models.densenet*(...).features``, unchanged (so its ImageNet
    weights load as they are). Its four dense blocks end at strides 4, 8, 16 and 32; each
    block's output, passed through the BatchNorm and ReLU that start the next transition
    (or ``norm5`` for the last), is a skip. The decoder goes back up with bilinear
    upsampling, concatenation and one 3x3 conv per level, predicts at stride 4 and upsamples
    the logits bilinearly to the input size.

    Args:
        features: a torchvision DenseNet's ``features`` (``nn.Sequential``).
        num_classes: output channels (classes, void not included).
        decoder_channels: widths of the stride-32 projection and of the decoder levels at
            strides 16, 8 and 4.

    Shapes: ``(N, 3, H, W)`` float -> logits ``(N, num_classes, H, W)``.
    """

    def __init__(self, features: nn.Sequential, num_classes: int,
                 decoder_channels: tuple = (256, 128, 64, 32)):
        super().__init__()
        self.features = features
        skip_channels = [getattr(features, f"transition{i}").norm.num_features for i in (1, 2, 3)]
        deepest = features.norm5.num_features  # 1024, 1664 or 1920
        self.center = ConvBNReLU(deepest, decoder_channels[0], kernel_size=1)
        self.decoder = nn.ModuleList(
            ConvBNReLU(decoder_channels[i] + skip, decoder_channels[i + 1])
            for i, skip in enumerate(reversed(skip_channels)))
        self.head = nn.Conv2d(decoder_channels[-1], num_classes, kernel_size=1)
        self.weights_source = "random initialisation"

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The four skips, at strides 4, 8, 16 and 32 of the input (rounded up)."""
        f = self.features
        x = f.pool0(f.relu0(f.norm0(f.conv0(images))))  # (N, 64, H / 4, W / 4)
        skips = []
        for i in (1, 2, 3):
            x = getattr(f, f"denseblock{i}")(x)
            transition = getattr(f, f"transition{i}")
            x = transition.relu(transition.norm(x))  # normalised block output: the skip
            skips.append(x)
            x = transition.pool(transition.conv(x))  # half the channels, half the size
        skips.append(F.relu(f.norm5(f.denseblock4(x))))  # (N, 1024+, H / 32, W / 32)
        return skips

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        skips = self.encode(images)
        x = self.center(skips.pop())  # (N, 256, H / 32, W / 32)
        for block in self.decoder:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))  # (N, width, 2h, 2w)
        logits = self.head(x)  # (N, num_classes, H / 4, W / 4)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


#: Valid encoders of :func:`densenet_unet` and the name of their torchvision weights enum.
DENSENET_BACKBONES = {
    "densenet121": "DenseNet121_Weights",
    "densenet169": "DenseNet169_Weights",
    "densenet201": "DenseNet201_Weights",
}


def densenet_features_state(state: dict) -> dict:
    """Turn a torchvision DenseNet checkpoint into a state dict for its ``features``.

    The published files use old key names (``denselayer1.norm.1.weight``) that torchvision
    renames when it loads them (``denselayer1.norm1.weight``); the classifier is dropped.
    """
    old_key = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var))$")
    renamed = {}
    for key, value in state.items():
        match = old_key.match(key)
        key = match.group(1) + match.group(2) if match else key
        if key.startswith("features."):
            renamed[key.removeprefix("features.")] = value
    return renamed


def densenet_unet(num_classes: int, backbone: str = "densenet121", pretrained: bool = True,
                  decoder_channels: tuple = (256, 128, 64, 32),
                  in_channels: int = 3) -> DenseNetUNet:
    """A :class:`DenseNetUNet` on torchvision's DenseNet-121, -169 or -201.

    Args:
        num_classes: output channels (classes, void not included).
        backbone: "densenet121", "densenet169" or "densenet201".
        pretrained: try the ImageNet weights (``IMAGENET1K_V1``) with the offline fallback of
            :mod:`segtut.weights`: without them the encoder keeps its random
            initialisation, a warning says so, and ``model.weights_source`` records it.
        decoder_channels: see :class:`DenseNetUNet`.
        in_channels: image channels; for any other number than 3 the encoder's ``conv0`` is
            adapted after the weights are loaded.

    Returns:
        :class:`DenseNetUNet` with ``weights_source``.
    """
    import torchvision.models as models

    from segtut.weights import adapt_input_channels, load_pretrained, torchvision_state

    if backbone not in DENSENET_BACKBONES:
        raise ValueError(f"Unknown DenseNet backbone {backbone!r}. Valid choices: "
                         f"{', '.join(DENSENET_BACKBONES)}.")
    features = getattr(models, backbone)(weights=None).features
    model = DenseNetUNet(features, num_classes, decoder_channels)
    if pretrained:
        weights = getattr(models, DENSENET_BACKBONES[backbone]).IMAGENET1K_V1
        model.weights_source = load_pretrained(
            f"ImageNet ({backbone} encoder)", lambda: torchvision_state(weights),
            lambda state: features.load_state_dict(densenet_features_state(state)))
    else:
        model.weights_source = "random initialisation (pretrained=False)"
    adapted = adapt_input_channels(model, in_channels)  # None for 3 channels
    if adapted:
        model.weights_source += f"; {adapted}"
    return model
