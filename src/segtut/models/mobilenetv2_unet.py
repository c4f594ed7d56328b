"""MobileNetV2 U-Net: a MobileNetV2 encoder (Sandler et al., 2018) with a pix2pix decoder.

This is the model of TensorFlow's "Image segmentation" tutorial, written for PyTorch: the
encoder is torchvision's ``mobilenet_v2().features`` (optionally with its ImageNet weights),
tapped at strides 2, 4, 8, 16 and 32; the decoder is the upsampler of pix2pix's U-Net generator
(Isola et al., 2017): a 4x4 transposed convolution with stride 2, a normalisation layer,
optional dropout and a ReLU, followed by a concatenation with the encoder's feature map of the
same size. A last transposed convolution produces the logits at full resolution.

Chapter 09 (``notebooks/09_mobilenetv2_unet.ipynb``) shows this code cell by cell; a test keeps
the notebook and this file identical, so edit both together.

The taps, in the TensorFlow tutorial's Keras layer names and torchvision's indices into
``mobilenet_v2().features`` (Keras numbers the inverted residual blocks from 0, torchvision's
``features[0]`` is the stem convolution, so Keras block ``b`` is ``features[b + 1]``). Shapes for
a 224x224 input:

=====================  ============================  ======  ===============
Keras layer            torchvision                   stride  shape (C, H, W)
=====================  ============================  ======  ===============
block_1_expand_relu    features[2].conv[0] output    2       (96, 112, 112)
block_3_expand_relu    features[4].conv[0] output    4       (144, 56, 56)
block_6_expand_relu    features[7].conv[0] output    8       (192, 28, 28)
block_13_expand_relu   features[14].conv[0] output   16      (576, 14, 14)
block_16_project       features[17] output           32      (320, 7, 7)
=====================  ============================  ======  ===============

Each ``expand_relu`` tap is the expansion (1x1 convolution, BatchNorm, ReLU6) of a block whose
depthwise convolution then halves the resolution: the widest feature map at each resolution.
Keras' ``block_16_project`` is the raw projection convolution; we take the block's output one
BatchNorm later (a per-channel affine map at inference). ``features[18]``, the 1x1 convolution
to 1280 channels that only feeds the classifier, is dropped.

Any input size works: every stride-2 layer rounds up (``ceil(H / 2)``), so each x2 upsampling
gives the skip's size or one row or column more, which is cropped off.

Input ``(N, 3, H, W)`` float32; output logits ``(N, num_classes, H, W)`` float32, for any H, W.
"""

import torch
from torch import nn
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

# %% notebook-copy starts here


#: Keras layer names of the TensorFlow tutorial's skip taps, by torchvision ``features`` index.
#: Each is the output of the block's expansion ``conv[0]`` (1x1 conv, BatchNorm, ReLU6).
SKIP_TAPS = {2: "block_1_expand_relu", 4: "block_3_expand_relu",
             7: "block_6_expand_relu", 14: "block_13_expand_relu"}
#: The bottleneck: the output of the last inverted residual block (Keras "block_16_project").
BOTTLENECK = 17


class MobileNetV2Encoder(nn.Module):
    """MobileNetV2's feature blocks 0 to 17, returning four skip feature maps and the bottleneck.

    Parameter names match torchvision's ``mobilenet_v2()`` (``features.0.0.weight``, ...), so its
    ImageNet state dict loads directly (:meth:`load_imagenet_state`).

    Shapes: images ``(N, 3, H, W)`` -> skips ``[(N, 96, H/2, W/2), (N, 144, H/4, W/4),
    (N, 192, H/8, W/8), (N, 576, H/16, W/16)]`` and bottleneck ``(N, 320, H/32, W/32)``,
    each size rounded up.
    """

    skip_channels = (96, 144, 192, 576)  # strides 2, 4, 8, 16
    out_channels = 320  # stride 32

    def __init__(self):
        super().__init__()
        self.features = mobilenet_v2(weights=None).features[:BOTTLENECK + 1]  # without features[18]
        for index in SKIP_TAPS:
            # The taps rely on these blocks having no residual connection, so that
            # block(x) == block.conv(x) and the expansion can be run (and kept) separately.
            assert not self.features[index].use_res_connect and self.features[index].stride == 2

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        skips = []
        x = images  # (N, 3, H, W)
        for index, block in enumerate(self.features):
            if index in SKIP_TAPS:
                x = block.conv[0](x)  # expansion: (N, 6 C_in, h, w), the widest map at this size
                skips.append(x)
                x = block.conv[1:](x)  # depthwise conv (stride 2), projection: (N, C_out, h/2, w/2)
            else:
                x = block(x)
        return skips, x  # 4 skips at strides 2, 4, 8, 16; (N, 320, H/32, W/32)

    def load_imagenet_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a torchvision ``mobilenet_v2`` state dict; its ``features.18`` and classifier are
        not part of the encoder and are skipped. A missing encoder entry raises ``KeyError``."""
        wanted = self.state_dict()
        kept = {key: value for key, value in state.items() if key in wanted}
        missing = sorted(set(wanted) - set(kept))
        if missing:
            raise KeyError(f"The ImageNet weights lack {len(missing)} encoder entries, "
                           f"e.g. {missing[:3]}.")
        self.load_state_dict(kept)


def norm_layer(kind: str, channels: int) -> nn.Module:
    """A normalisation layer by name: "batch", "group" (8 groups) or "none"."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"Unknown norm {kind!r}; choose 'batch', 'group' or 'none'.")


class UpBlock(nn.Sequential):
    """pix2pix's upsampler: 4x4 transposed conv (stride 2), norm, optional dropout, ReLU.

    Shapes: ``(N, C_in, h, w)`` -> ``(N, C_out, 2h, 2w)``.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch",
                 dropout: float = 0.0):
        super().__init__(
            # Output size (h - 1) * 2 - 2 * 1 + 4 = 2h exactly. A kernel divisible by the stride
            # makes every output pixel receive the same number of taps (2x2): no checkerboard
            # pattern built into the layer.
            nn.ConvTranspose2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1,
                               bias=norm == "none"),  # a bias right before a norm layer is wasted
            norm_layer(norm, out_channels),
            nn.Dropout(dropout) if dropout else nn.Identity(),  # pix2pix: 0.5, as noise
            nn.ReLU(inplace=True),
        )


class MobileNetV2UNet(nn.Module):
    """A U-Net on a MobileNetV2 encoder with pix2pix upsampling blocks (TensorFlow's tutorial).

    Args:
        num_classes: output channels (classes, void not included).
        decoder_channels: widths of the four up blocks, deepest first ((512, 256, 128, 64) in
            the TensorFlow tutorial).
        norm: "batch", "group" or "none", in the up blocks (the encoder keeps its BatchNorm).
        dropout: dropout probability in the three deepest up blocks (pix2pix used 0.5 there).

    Shapes: ``(N, 3, H, W)`` float -> logits ``(N, num_classes, H, W)``, for any H, W.
    """

    def __init__(self, num_classes: int, decoder_channels: tuple[int, ...] = (512, 256, 128, 64),
                 norm: str = "batch", dropout: float = 0.0):
        super().__init__()
        if len(decoder_channels) != 4:
            raise ValueError("decoder_channels needs 4 widths (strides 16, 8, 4, 2), "
                             f"got {decoder_channels}.")
        self.encoder = MobileNetV2Encoder()
        skips = self.encoder.skip_channels[::-1]  # deepest first: 576, 192, 144, 96
        # Each up block reads the previous block's output concatenated with a skip.
        in_channels = [self.encoder.out_channels] + [c + s for c, s in zip(decoder_channels, skips)]
        self.ups = nn.ModuleList(
            UpBlock(in_channels[i], decoder_channels[i], norm, dropout if i < 3 else 0.0)
            for i in range(4))
        # The last transposed conv goes from stride 2 to full resolution, straight to logits.
        self.head = nn.ConvTranspose2d(in_channels[4], num_classes, kernel_size=4, stride=2,
                                       padding=1)
        self.weights_source = "random initialisation"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        skips, x = self.encoder(images)  # x: (N, 320, H/32, W/32)
        for up, skip in zip(self.ups, reversed(skips)):
            x = up(x)  # (N, C, 2h, 2w)
            # Strides round up, so 2h is the skip's height or one more: crop the extra row.
            x = x[..., :skip.shape[-2], :skip.shape[-1]]
            x = torch.cat([x, skip], dim=1)  # (N, C + C_skip, h_skip, w_skip)
        logits = self.head(x)  # (N, num_classes, 2 ceil(H/2), 2 ceil(W/2))
        return logits[..., :height, :width]  # (N, num_classes, H, W)


def mobilenetv2_unet(num_classes: int, pretrained: bool = True, in_channels: int = 3,
                     **options) -> MobileNetV2UNet:
    """Build a :class:`MobileNetV2UNet`, with the encoder's ImageNet weights if ``pretrained``.

    The weights are torchvision's ``MobileNet_V2_Weights.IMAGENET1K_V1``, found as chapter 5
    describes (``$SEGTUT_WEIGHTS_DIR/mobilenet_v2-b0353104.pth``, PyTorch's cache, a download);
    when none works, the model keeps its random initialisation and a warning says so. Either
    way ``model.weights_source`` says where the weights came from.

    Args:
        num_classes: output channels (classes, void not included).
        pretrained: try the ImageNet weights of the encoder; the decoder always starts random.
        in_channels: image channels; for any other number than 3 the encoder's stem
            convolution is adapted after the weights are loaded.
        **options: passed to :class:`MobileNetV2UNet` (``decoder_channels``, ``norm``, ``dropout``).
    """
    # segtut's weight finder with its offline fallback, and the stem adapter.
    from segtut.weights import adapt_input_channels, load_pretrained, torchvision_state

    model = MobileNetV2UNet(num_classes, **options)
    if pretrained:
        weights = MobileNet_V2_Weights.IMAGENET1K_V1
        model.weights_source = load_pretrained("ImageNet (mobilenet_v2 encoder)",
                                               lambda: torchvision_state(weights),
                                               model.encoder.load_imagenet_state)
    else:
        model.weights_source = "random initialisation (pretrained=False)"
    adapted = adapt_input_channels(model, in_channels)  # None for 3 channels
    if adapted:
        model.weights_source += f"; {adapted}"
    return model
