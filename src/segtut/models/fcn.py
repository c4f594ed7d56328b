"""FCN-8s (Long, Shelhamer and Darrell, 2015) in plain PyTorch, and a depthwise-separable variant.

Chapter 08 (``notebooks/08_fcn.ipynb``) shows this code cell by cell; a test keeps the notebook
and this file identical, so edit both together.

FCN-8s is a VGG16 classifier made fully convolutional: five stages of 3x3 convolutions, each
ending in a 2x2 max-pool (pool1 .. pool5), then the classifier's fully connected layers fc6 and
fc7 rewritten as a 7x7 and a 1x1 convolution ("conv6", "conv7"). Three 1x1 "score" convolutions
turn pool3, pool4 and conv7 into class scores, and the coarse scores are upsampled and added to
the finer ones: x2, add pool4's, x2, add pool3's, x8 to the input size.

Differences from the paper, and why:

* padded convolutions (conv6 too) and ceil-mode pooling instead of the paper's 100-pixel padding
  of the input: every feature map covers the whole image, each upsampled map is at least as
  large as the next skip, and a top-left crop aligns them exactly, for any input size;
* optional normalisation (BatchNorm by default) after every convolution: the paper fine-tuned
  ImageNet weights, we train from scratch, where a 15-layer plain network barely trains without;
* a ``base_channels`` width (64 in VGG16) so a CPU can train a slimmer network;
* ``separable=True`` (or :func:`fcn8s_separable`) replaces every spatial convolution by a
  depthwise-separable one. This is *not* FastFCN (Wu et al., 2019), whose contribution is the
  Joint Pyramid Upsampling module.

Input ``(N, in_channels, H, W)`` float; output logits ``(N, num_classes, H, W)`` for any H, W.
"""

import torch
from torch import nn

# %% notebook-copy starts here


def norm_layer(kind: str, channels: int) -> nn.Module:
    """A normalisation layer by name: "batch", "group" (8 groups) or "none"."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"Unknown norm {kind!r}; choose 'batch', 'group' or 'none'.")


class ConvNormReLU(nn.Sequential):
    """A padded k x k conv -> norm -> ReLU. ``(N, C_in, H, W) -> (N, C_out, H, W)``.

    ``k * k * C_in * C_out`` weights: every output channel looks at every input channel.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 norm: str = "batch"):
        super().__init__(
            # A conv bias right before a norm layer is wasted: the norm subtracts the mean.
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                      bias=norm == "none"),
            norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
        )


def vgg_stage(in_channels: int, out_channels: int, num_convs: int, norm: str = "batch",
              separable: bool = False) -> nn.Sequential:
    """``num_convs`` 3x3 conv blocks, then a 2x2 max-pool.

    ``(N, C_in, H, W) -> (N, C_out, ceil(H / 2), ceil(W / 2))``: ceil mode keeps the last row
    of an odd-sized map, so every pooled map covers the whole image.
    """
    block = SeparableConvNormReLU if separable else ConvNormReLU  # defined further down
    layers = [block(in_channels if i == 0 else out_channels, out_channels, 3, norm)
              for i in range(num_convs)]
    return nn.Sequential(*layers, nn.MaxPool2d(2, ceil_mode=True))


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """Weights that make ``nn.ConvTranspose2d`` upsample each channel bilinearly.

    Returns a float32 tensor ``(channels, channels, kernel_size, kernel_size)``: a tent-shaped
    2-D filter on the diagonal (channel c -> channel c) and zeros elsewhere. With
    ``stride = kernel_size // 2`` and ``padding = stride // 2`` the transposed convolution
    equals bilinear interpolation (``align_corners=False``) away from the border.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    position = torch.arange(kernel_size, dtype=torch.float32)
    tent = 1 - (position - center).abs() / factor  # (k,): 1 at the centre, falling linearly
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = tent[:, None] * tent[None, :]  # (k, k) each
    return weight


class BilinearUpsample(nn.ConvTranspose2d):
    """A transposed convolution that starts as bilinear upsampling by an even ``factor``.

    ``(N, C, h, w) -> (N, C, factor * h, factor * w)``. With ``learnable=False`` the weights stay
    bilinear (the paper fixes the final x8 layer and learns the two x2 layers).
    """

    def __init__(self, channels: int, factor: int, learnable: bool = True):
        if factor % 2:
            raise ValueError(f"BilinearUpsample needs an even factor, got {factor}.")
        super().__init__(channels, channels, kernel_size=2 * factor, stride=factor,
                         padding=factor // 2, bias=False)
        kernel = bilinear_kernel(channels, 2 * factor)  # (C, C, 2f, 2f)
        if learnable:
            with torch.no_grad():
                self.weight.copy_(kernel)
        else:
            # A fixed kernel is state, not a parameter: optimisers and parameter counts skip it,
            # and it still moves with .to(device) and is saved in the state dict.
            del self.weight
            self.register_buffer("weight", kernel)


def crop_to(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The top-left ``reference.shape[-2:]`` window of ``x`` ``(N, C, H', W')``, H' >= H, W' >= W.

    Top-left is exact here: every map's pixel grid starts at the image's top-left corner, and
    ceil-mode pooling only ever adds rows and columns at the bottom and right.
    """
    height, width = reference.shape[-2:]
    return x[..., :height, :width]


class FCN8s(nn.Module):
    """FCN-8s: a fully convolutional VGG16 whose scores are fused at 1/32, 1/16 and 1/8.

    Args:
        num_classes: number of output channels (classes, void not included).
        in_channels: image channels.
        base_channels: width of the first stage; the stages have 1, 2, 4, 8, 8 times it
            (64 in VGG16).
        fc_channels: width of conv6 and conv7 (4096 in the paper); default 64 * base_channels.
        norm: "batch", "group" or "none" (the paper has none).
        dropout: dropout probability after conv6 and conv7 (0.5 in the paper).
        separable: depthwise-separable 3x3 and 7x7 convolutions (see :func:`fcn8s_separable`).

    Shapes: ``(N, in_channels, H, W)`` float -> logits ``(N, num_classes, H, W)``.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, base_channels: int = 64,
                 fc_channels: int | None = None, norm: str = "batch", dropout: float = 0.5,
                 separable: bool = False):
        super().__init__()
        w = base_channels
        fc_channels = fc_channels or 64 * w
        block = SeparableConvNormReLU if separable else ConvNormReLU
        self.stage1 = vgg_stage(in_channels, w, 2, norm, separable)  # -> pool1, 1/2
        self.stage2 = vgg_stage(w, 2 * w, 2, norm, separable)  # -> pool2, 1/4
        self.stage3 = vgg_stage(2 * w, 4 * w, 3, norm, separable)  # -> pool3, 1/8
        self.stage4 = vgg_stage(4 * w, 8 * w, 3, norm, separable)  # -> pool4, 1/16
        self.stage5 = vgg_stage(8 * w, 8 * w, 3, norm, separable)  # -> pool5, 1/32
        # The classifier's fc6 and fc7, rewritten as convolutions: fc6 saw a 7x7 pool5 map.
        self.conv6_7 = nn.Sequential(
            block(8 * w, fc_channels, 7, norm), nn.Dropout(dropout),
            ConvNormReLU(fc_channels, fc_channels, 1, norm), nn.Dropout(dropout),  # 1x1: as is
        )
        self.score_conv7 = nn.Conv2d(fc_channels, num_classes, 1)
        self.score_pool4 = nn.Conv2d(8 * w, num_classes, 1)
        self.score_pool3 = nn.Conv2d(4 * w, num_classes, 1)
        for score in (self.score_conv7, self.score_pool4, self.score_pool3):
            # Zero-initialised, as in the paper: the skips start by adding nothing.
            nn.init.zeros_(score.weight)
            nn.init.zeros_(score.bias)
        self.up_conv7 = BilinearUpsample(num_classes, 2)  # learned, bilinear at first
        self.up_fused = BilinearUpsample(num_classes, 2)
        self.up_final = BilinearUpsample(num_classes, 8, learnable=False)  # fixed, as in the paper

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pool3 = self.stage3(self.stage2(self.stage1(images)))  # (N, 4w, H/8, W/8), rounded up
        pool4 = self.stage4(pool3)  # (N, 8w, H/16, W/16)
        conv7 = self.conv6_7(self.stage5(pool4))  # (N, fc, H/32, W/32)
        score = self.score_conv7(conv7)  # (N, C, H/32, W/32): FCN-32s would upsample this x32
        score = crop_to(self.up_conv7(score), pool4) + self.score_pool4(pool4)  # (N, C, H/16, W/16)
        score = crop_to(self.up_fused(score), pool3) + self.score_pool3(pool3)  # (N, C, H/8, W/8)
        return crop_to(self.up_final(score), images)  # (N, C, H, W)


class SeparableConvNormReLU(nn.Sequential):
    """Depthwise k x k conv -> norm -> ReLU -> pointwise 1x1 conv -> norm -> ReLU.

    ``(N, C_in, H, W) -> (N, C_out, H, W)`` with ``k * k * C_in + C_in * C_out`` weights instead
    of ``k * k * C_in * C_out``: the depthwise conv filters each channel on its own (spatial
    mixing), the pointwise conv mixes channels at each pixel.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 norm: str = "batch"):
        bias = norm == "none"
        super().__init__(
            nn.Conv2d(in_channels, in_channels, kernel_size, padding=kernel_size // 2,
                      groups=in_channels, bias=bias),  # groups=C_in: one filter per channel
            norm_layer(norm, in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, 1, bias=bias),
            norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
        )


def fcn8s_separable(num_classes: int, **options) -> FCN8s:
    """FCN-8s with depthwise-separable convolutions: ``FCN8s(..., separable=True)``.

    Every 3x3 convolution and conv6's 7x7 become depthwise + pointwise; conv7 and the score
    layers are 1x1 already and stay as they are. (Not FastFCN: that is a different paper.)
    """
    return FCN8s(num_classes, separable=True, **options)
