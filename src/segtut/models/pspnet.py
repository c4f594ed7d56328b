"""PSPNet, the Pyramid Scene Parsing Network (Zhao et al., CVPR 2017), written by hand.

Chapter 11b (``notebooks/11b_pspnet.ipynb``) shows this code cell by cell; a test keeps the
notebook and this file identical, so edit both together.

A dilated ResNet encoder (torchvision's, optionally with its ImageNet weights) keeps the feature
map at 1/8 of the input size instead of 1/32; a pyramid pooling module adds context from the
whole image to every position of that map; a 3x3 convolution and a 1x1 classifier turn it into
class scores, upsampled bilinearly to the input size. An optional auxiliary head on ``layer3``
gives a second loss during training (the paper's "deep supervision", weight 0.4).

Differences from the paper and from the author's PyTorch code (github.com/hszhao/semseg), why:

* the 1x1 bin (the whole-image average) has no BatchNorm, its convolution a bias instead, as in
  segmentation-models-pytorch: in training, BatchNorm over a 1x1 map of a batch of one has a
  single value per channel and raises ValueError; with small batches its statistics would be
  noise. The paper's network normalises every bin (trained with batches of 16);
* the pyramid's upsampling and the final upsampling use ``align_corners=False``, like every
  segtut model (the author's code uses True; :class:`PyramidPooling` takes either);
* the ResNet is torchvision's (a 7x7 stem), not the author's, whose stem has three 3x3 convolutions,
  so torchvision's ImageNet weights load directly;
* ResNet-18/34 (BasicBlock) are dilated by :func:`dilate_stage`, since torchvision dilates only
  Bottleneck ResNets (see there);
* in training mode the auxiliary logits are kept in ``model.aux_logits`` for
  :class:`segtut.models.library.AuxLoss` and the forward pass returns the logits tensor (see
  :class:`PSPNet`).

Parameters, measured (``tests/test_pspnet.py``), 21 classes, ResNet-50: 46,592,085 (46.59 M)
in all: 23.51 M encoder (torchvision's ResNet-50 without its fc), 4.20 M pyramid pooling,
18.88 M the 3x3 head convolution (4096 -> 512 channels, the largest single layer), 0.01 M the
classifier; the auxiliary head adds 2.37 M (48.96 M). ResNet-18: 16.17 M (11.18 M encoder).
Dilation changes no parameter count, only the cost: at output stride 8 layer3 and layer4 run
on 4x and 16x as many positions as at stride 32.

Input ``(N, in_channels, H, W)`` float32; output logits ``(N, num_classes, H, W)`` float32, for
any H, W (adaptive pooling fits the pyramid to any feature map).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

__all__ = ["BACKBONES", "OUTPUT_STRIDES", "PyramidPooling", "DilatedResNet", "dilate_stage",
           "PSPNet", "pspnet"]

# %% notebook-copy starts here

#: backbone name -> name of torchvision's ImageNet weights enum (``IMAGENET1K_V1`` is used).
BACKBONES = {
    "resnet18": "ResNet18_Weights",
    "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights",
    "resnet101": "ResNet101_Weights",
}
#: output stride -> which of layer2, layer3, layer4 trade their stride 2 for dilation.
OUTPUT_STRIDES = {8: (False, True, True), 16: (False, False, True), 32: (False, False, False)}


class PyramidPooling(nn.Module):
    """The pyramid pooling module: the feature map, concatenated with pooled summaries of it.

    Why bins of 1, 2, 3 and 6 give global context: a convolutional network's receptive field is
    in practice much smaller than the image, so a pixel of a boat cannot "see" the water around
    it. Each bin size ``b`` averages the map over a ``b x b`` grid of sub-regions: ``b = 1`` is
    the whole-image average (what kind of scene this is), ``b = 2`` the four quadrants (sky
    above, ground below), ``b = 3`` and ``b = 6`` ever finer sub-regions. These are the paper's
    "sub-region priors": after a 1x1 convolution (to ``in_channels / len(bins)`` channels, so
    the pyramid as a whole weighs as much as the input) each summary is upsampled back and
    appended to every position, which can then use context from the whole image at four
    scales. Adaptive pooling computes the grid from the map's size, so any input size works.

    Args:
        in_channels: channels C of the feature map.
        bins: grid sizes of the pyramid levels.
        reduction_channels: channels of each level; None gives ``in_channels // len(bins)``.
        align_corners: of the bilinear upsampling (False in segtut; True in the author's code
            and in segmentation-models-pytorch).

    Shapes: ``(N, C, h, w)`` -> ``(N, C + len(bins) * reduction_channels, h, w)``, i.e.
    ``(N, 2C, h, w)`` by default (for C divisible by ``len(bins)``); the input comes first,
    then the levels in the order of ``bins``. ``out_channels`` holds the output width.
    """

    def __init__(self, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6),
                 reduction_channels: Optional[int] = None, align_corners: bool = False):
        super().__init__()
        if not bins or min(bins) < 1:
            raise ValueError(f"bins must be positive grid sizes, got {bins!r}; the paper's are "
                             "(1, 2, 3, 6).")
        reduction = reduction_channels or in_channels // len(bins)
        self.bins = tuple(int(b) for b in bins)
        self.align_corners = align_corners
        self.stages = nn.ModuleList()
        for b in self.bins:
            # The 1x1 bin has no BatchNorm (see the module's docstring), so its conv keeps a bias.
            norm = b > 1
            self.stages.append(nn.Sequential(
                nn.AdaptiveAvgPool2d(b),  # (N, C, b, b): mean over each of b x b sub-regions
                nn.Conv2d(in_channels, reduction, kernel_size=1, bias=not norm),
                nn.BatchNorm2d(reduction) if norm else nn.Identity(),
                nn.ReLU(inplace=True),
            ))
        self.out_channels = in_channels + len(self.bins) * reduction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        levels = [F.interpolate(stage(x), size=size, mode="bilinear",  # (N, C_r, b, b) -> (h, w)
                                align_corners=self.align_corners) for stage in self.stages]
        return torch.cat([x, *levels], dim=1)  # (N, C + len(bins) C_r, h, w)


def dilate_stage(stage: nn.Sequential, dilation: int, previous_dilation: int) -> None:
    """Make a ResNet stage keep its input's resolution: stride 1, dilated 3x3 convolutions.

    The stage's stride-2 convolutions get stride 1 and keep ``previous_dilation`` (that of the
    stage before); every 3x3 convolution after them gets ``dilation`` (twice that), with
    padding equal to the dilation so sizes are kept. This is the "a trous" trick: the dilated
    stage computes the strided stage's outputs exactly, plus those in between (every
    ``dilation / previous_dilation``-th output of it is the strided stage's, for input sizes
    divisible by the network's stride; ``tests/test_pspnet.py`` checks it).

    On a Bottleneck ResNet this is torchvision's ``replace_stride_with_dilation`` (the stride
    sits on the first block's 3x3 ``conv2``; the test checks this too). torchvision refuses
    dilation for BasicBlock (ResNet-18/34), where the stride sits on the first block's
    ``conv1`` and its ``conv2`` already comes after it: that is why the rule is "after the
    stride", not torchvision's "first block" (the same thing for Bottleneck). Changes ``stage``
    in place.
    """
    strided_seen = False
    for block in stage:
        for conv in block.modules():  # forward order; the shortcut (1x1) comes last
            if not isinstance(conv, nn.Conv2d):
                continue
            if conv.stride != (1, 1):
                conv.stride = (1, 1)  # the first block's strided conv and its 1x1 shortcut
                if conv.kernel_size == (1, 1):
                    continue  # the shortcut: a 1x1 conv needs no dilation
                strided_seen = True
                rate = previous_dilation
            else:
                rate = dilation if strided_seen else previous_dilation
            if conv.kernel_size == (3, 3):
                conv.dilation = conv.padding = (rate, rate)
        if hasattr(block, "stride"):
            block.stride = 1  # informative only: the blocks' forward does not read it


class DilatedResNet(nn.Module):
    """torchvision's ResNet without its classifier, dilated to output stride 8, 16 or 32.

    Parameter names are torchvision's (``conv1``, ``layer1.0.conv1``, ...), so its ImageNet
    state dict loads directly (:meth:`load_imagenet_state`). Every stride-2 layer rounds up, so
    the map at output stride s is ``ceil(H / s) x ceil(W / s)``.

    Args:
        backbone: "resnet18", "resnet34", "resnet50" or "resnet101".
        output_stride: 8 (layer3 and layer4 dilated, the paper's), 16 or 32 (plain ResNet).
        in_channels: image channels (the stem is built for them, randomly initialised).

    Shapes: ``(N, in_channels, H, W)`` -> ``(layer3 (N, C3, h, w), layer4 (N, C4, h, w))`` at
    output stride 8; ``channels`` = (C3, C4): (256, 512) for ResNet-18/34, (1024, 2048) for
    ResNet-50/101.
    """

    def __init__(self, backbone: str = "resnet50", output_stride: int = 8, in_channels: int = 3):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"Unknown PSPNet backbone {backbone!r}. Valid choices: "
                             f"{', '.join(BACKBONES)}.")
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {', '.join(map(str, OUTPUT_STRIDES))}, "
                             f"got {output_stride!r} (8 is the paper's).")
        dilate = OUTPUT_STRIDES[output_stride]
        basic = backbone in ("resnet18", "resnet34")
        # torchvision dilates Bottleneck ResNets itself; BasicBlock ones are dilated by hand.
        resnet = getattr(models, backbone)(weights=None,
                                           replace_stride_with_dilation=None if basic else dilate)
        if basic:
            dilation = 1
            for stage, flag in zip((resnet.layer2, resnet.layer3, resnet.layer4), dilate):
                if flag:
                    dilate_stage(stage, 2 * dilation, dilation)
                    dilation *= 2
        if in_channels != 3:
            resnet.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3,
                                     bias=False)
        self.conv1, self.bn1, self.relu, self.maxpool = (resnet.conv1, resnet.bn1, resnet.relu,
                                                         resnet.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = (resnet.layer1, resnet.layer2,
                                                              resnet.layer3, resnet.layer4)
        c4 = resnet.fc.in_features  # 512 (BasicBlock) or 2048 (Bottleneck)
        self.channels = (c4 // 2, c4)
        self.output_stride = output_stride

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))  # (N, 64, H/4, W/4)
        x = self.layer2(self.layer1(x))  # (N, C4 / 4, H/8, W/8)
        c3 = self.layer3(x)  # (N, C4 / 2, H/8, W/8) at output stride 8
        return c3, self.layer4(c3)  # layer4: (N, C4, H/8, W/8) at output stride 8

    def load_imagenet_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a torchvision ResNet state dict; its ``fc`` classifier is skipped. A missing
        encoder entry raises ``KeyError``."""
        wanted = self.state_dict()
        kept = {key: value for key, value in state.items() if key in wanted}
        missing = sorted(set(wanted) - set(kept))
        if missing:
            raise KeyError(f"The ImageNet weights lack {len(missing)} encoder entries, "
                           f"e.g. {missing[:3]}.")
        self.load_state_dict(kept)


def conv_head(in_channels: int, mid_channels: int, num_classes: int,
              dropout: float) -> nn.Sequential:
    """3x3 conv + BN + ReLU + dropout + 1x1 classifier: ``(N, C, h, w) -> (N, classes, h, w)``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(mid_channels),
        nn.ReLU(inplace=True),
        nn.Dropout2d(dropout),  # whole feature maps, as in the author's code
        nn.Conv2d(mid_channels, num_classes, kernel_size=1),
    )


class PSPNet(nn.Module):
    """PSPNet: dilated ResNet, pyramid pooling, 3x3 conv head, bilinear upsampling.

    Args:
        num_classes: output channels (classes, void not included).
        backbone: "resnet18", "resnet34", "resnet50" (the paper's ablations) or "resnet101".
        in_channels: image channels.
        output_stride: 8 (the paper's), 16 or 32 (:class:`DilatedResNet`).
        bins: the pyramid's grid sizes (:class:`PyramidPooling`).
        aux_loss: build the auxiliary head on layer3 (3x3 conv to C3 / 4 channels, BN, ReLU,
            dropout, 1x1 classifier); train it with :class:`segtut.models.library.AuxLoss`.
        head_channels: width of the 3x3 convolution after the pyramid (512 in the paper).
        dropout: before each classifier (0.1 in the paper).

    The auxiliary head: in training mode ``forward`` returns the main logits and keeps the
    auxiliary ones in ``self.aux_logits`` (``(N, num_classes, H, W)``), which ``AuxLoss``
    adds to the loss; in evaluation mode the head is not run and ``aux_logits`` is None.
    ``segtut.train.fit`` passes only the tensor the model returns to the loss
    (``logits_of`` would drop a torchvision-style ``"aux"`` entry), so returning a dict would
    leave the head untrained. :meth:`forward_with_aux` gives torchvision's
    ``{"out", "aux"}`` dict in any mode.

    Shapes: ``(N, in_channels, H, W)`` float32 -> logits ``(N, num_classes, H, W)`` float32.
    """

    def __init__(self, num_classes: int, backbone: str = "resnet50", in_channels: int = 3,
                 output_stride: int = 8, bins: Sequence[int] = (1, 2, 3, 6),
                 aux_loss: bool = False, head_channels: int = 512, dropout: float = 0.1):
        super().__init__()
        self.encoder = DilatedResNet(backbone, output_stride, in_channels)
        c3, c4 = self.encoder.channels
        self.ppm = PyramidPooling(c4, bins)
        self.head = conv_head(self.ppm.out_channels, head_channels, num_classes, dropout)
        self.aux_head = conv_head(c3, c3 // 4, num_classes, dropout) if aux_loss else None
        self.aux_logits: Optional[torch.Tensor] = None
        self.weights_source = "random initialisation"

    def _upsample(self, logits: torch.Tensor, size) -> torch.Tensor:
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def forward_with_aux(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"out": logits, "aux": aux_logits}``, both ``(N, num_classes, H, W)``, as
        torchvision's segmentation models return; without an aux head, only ``"out"``."""
        size = images.shape[-2:]
        c3, c4 = self.encoder(images)  # (N, C3, h, w), (N, C4, h, w); h = ceil(H / stride)
        result = {"out": self._upsample(self.head(self.ppm(c4)), size)}
        if self.aux_head is not None:
            result["aux"] = self._upsample(self.aux_head(c3), size)
        return result

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.training and self.aux_head is not None:
            result = self.forward_with_aux(images)
            self.aux_logits = result["aux"]  # for AuxLoss, which uses it once and clears it
            return result["out"]
        self.aux_logits = None
        _, c4 = self.encoder(images)  # (N, C4, h, w)
        x = self.ppm(c4)  # (N, 2 C4, h, w)
        return self._upsample(self.head(x), images.shape[-2:])  # (N, num_classes, H, W)


def pspnet(num_classes: int, *, pretrained: bool = True, in_channels: int = 3,
           **options) -> PSPNet:
    """Build a :class:`PSPNet`, with the encoder's ImageNet weights if ``pretrained``.

    The weights are torchvision's ``ResNet<depth>_Weights.IMAGENET1K_V1`` (as torchvision's own
    segmentation builders use), found as :mod:`segtut.weights` describes
    (``$SEGTUT_WEIGHTS_DIR/resnet50-0676ba61.pth``, PyTorch's cache, a download); when none
    works, the model keeps its random initialisation and a warning says so. Either way
    ``model.weights_source`` says where the weights came from.

    Args:
        num_classes: output channels (classes, void not included).
        pretrained: try the ImageNet weights of the encoder; the pyramid and heads start random.
        in_channels: image channels; for any other number than 3 the encoder's stem
            convolution is adapted after the weights are loaded.
        **options: passed to :class:`PSPNet` (``backbone``, ``output_stride``, ``bins``,
            ``aux_loss``, ``head_channels``, ``dropout``).
    """
    from segtut.weights import adapt_input_channels, load_pretrained, torchvision_state

    model = PSPNet(num_classes, in_channels=3, **options)
    if pretrained:
        backbone = options.get("backbone", "resnet50")
        weights = getattr(models, BACKBONES[backbone]).IMAGENET1K_V1
        model.weights_source = load_pretrained(f"ImageNet ({backbone} encoder)",
                                               lambda: torchvision_state(weights),
                                               model.encoder.load_imagenet_state)
    else:
        model.weights_source = "random initialisation (pretrained=False)"
    adapted = adapt_input_channels(model, in_channels)  # None for 3 channels
    if adapted:
        model.weights_source += f"; {adapted}"
    return model
