"""SegFormer's building blocks (Xie et al., 2021), written out to be read.

Chapter 11 (``notebooks/11_segformer.ipynb``) shows this code piece by piece and runs it on
tensors; a test keeps the notebook and this file identical, so edit both together. The model that
chapter trains is segmentation-models-pytorch's (``build_model("smp_segformer", ...)``); these
modules compute exactly what smp's do (``tests/test_segformer.py`` loads smp's weights into them
and compares the outputs), so reading them is reading what smp runs.

* :class:`OverlapPatchEmbedding`: a strided convolution whose kernel is larger than its stride
  (7x7 stride 4, then 3x3 stride 2), so neighbouring tokens share pixels; then LayerNorm.
* :class:`EfficientSelfAttention`: multi-head self-attention whose keys and values come from a
  sequence ``R = reduction ** 2`` times shorter, which divides the cost ``N ** 2`` by R.
* :class:`MixFFN`: the transformer's MLP with a 3x3 depthwise convolution inside, which gives
  tokens a sense of position without positional encodings.
* :class:`MixTransformerBlock`: pre-norm attention and Mix-FFN, each with a residual connection.
* :class:`AllMLPDecoder`: unify every stage's channels, upsample to 1/4, concatenate, fuse,
  predict at 1/4 resolution.

Parameter names follow the official implementation (and smp's), so pretrained weights load into
these modules with at most a renamed key (smp wraps the depthwise convolution in one more module).
Only torch is imported: the file can be copied on its own.
"""

import torch
import torch.nn.functional as F
from torch import nn

# %% notebook-copy starts here


class OverlapPatchEmbedding(nn.Module):
    """Cut the image (or feature map) into overlapping patches and embed each one as a token.

    ViT embeds non-overlapping 16x16 patches (a convolution with kernel = stride = 16). SegFormer
    uses a kernel larger than the stride (7 and 4, then 3 and 2) with padding ``kernel // 2``:
    neighbouring tokens see ``kernel - stride`` shared pixels, which keeps the local continuity
    that segmentation needs around object borders.

    Args:
        in_channels: channels of the input (3 for the image).
        out_channels: embedding width of the stage (32, 64, 160, 256 in MiT-B0).
        kernel_size, stride: 7 and 4 for the first stage, 3 and 2 for the others.

    Shapes: float ``(N, C_in, H, W)`` -> ``(N, C_out, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 7, stride: int = 4):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=kernel_size // 2)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.proj(images)  # (N, C_out, h, w)
        # LayerNorm normalises the last dimension: move channels there and back.
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (N, C_out, h, w)


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention with SegFormer's sequence reduction.

    Every one of the ``N = h * w`` tokens asks a query; plain attention compares it with all N
    keys, an ``N x N`` matrix per head. Here the keys and values are computed from a shorter
    sequence: each ``reduction x reduction`` square of tokens is merged into one (the paper's
    "reshape to N / R rows of C * R values, then a linear layer back to C", which is exactly a
    convolution with kernel = stride = ``reduction``). The attention matrix shrinks to
    ``N x N / R`` with ``R = reduction ** 2``; the output keeps all N tokens.

    Args:
        channels: token width C (divisible by ``num_heads``).
        num_heads: attention heads (1, 2, 5, 8 in the four MiT stages).
        reduction: side of the square merged into one key (8, 4, 2, 1 in the four stages, i.e.
            R = 64, 16, 4, 1); 1 gives plain self-attention.

    Shapes: tokens float ``(N, h * w, C)`` plus the grid's ``height`` and ``width`` ->
    ``(N, h * w, C)``.
    """

    def __init__(self, channels: int, num_heads: int, reduction: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads}).")
        self.num_heads = num_heads
        self.reduction = reduction
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(channels, 2 * channels)  # keys and values in one matrix product
        self.proj = nn.Linear(channels, channels)
        if reduction > 1:
            self.sr = nn.Conv2d(channels, channels, kernel_size=reduction, stride=reduction)
            self.norm = nn.LayerNorm(channels)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, length, channels = tokens.shape
        head_channels = channels // self.num_heads
        queries = self.q(tokens).reshape(batch, length, self.num_heads, head_channels)
        queries = queries.transpose(1, 2)  # (N, heads, L, d)
        if self.reduction > 1:
            grid = tokens.transpose(1, 2).reshape(batch, channels, height, width)  # (N, C, h, w)
            tokens = self.sr(grid).flatten(2).transpose(1, 2)  # (N, L / R, C)
            tokens = self.norm(tokens)
        keys_values = self.kv(tokens).reshape(batch, -1, 2, self.num_heads, head_channels)
        keys, values = keys_values.permute(2, 0, 3, 1, 4)  # each (N, heads, L / R, d)
        scores = queries @ keys.transpose(-2, -1) / head_channels ** 0.5  # (N, heads, L, L / R)
        weights = scores.softmax(dim=-1)  # each query's weights over the keys sum to 1
        out = (weights @ values).transpose(1, 2).reshape(batch, length, channels)  # (N, L, C)
        return self.proj(out)


class MixFFN(nn.Module):
    """The transformer MLP with a 3x3 depthwise convolution between its two linear layers.

    ``fc2(GELU(dwconv(fc1(x))))``. Self-attention alone does not know where a token is (shuffle
    the tokens and its output is shuffled the same way), so ViT adds positional encodings of a
    fixed length, which must be interpolated when the test resolution differs. The depthwise
    convolution mixes each token with its 3x3 neighbours, and its zero padding tells tokens at
    the border where they are: enough positional information, at any resolution.

    Args:
        channels: token width C.
        hidden_channels: width inside the MLP (4 C in MiT).

    Shapes: tokens float ``(N, h * w, C)`` plus ``height`` and ``width`` -> ``(N, h * w, C)``.
    """

    def __init__(self, channels: int, hidden_channels: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden_channels)
        # groups = channels: one 3x3 filter per channel, no mixing across channels (9 weights each).
        self.dwconv = nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1,
                                groups=hidden_channels)
        self.fc2 = nn.Linear(hidden_channels, channels)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = self.fc1(tokens)  # (N, L, hidden)
        batch, length, hidden = x.shape
        grid = x.transpose(1, 2).reshape(batch, hidden, height, width)  # (N, hidden, h, w)
        x = self.dwconv(grid).flatten(2).transpose(1, 2)  # (N, L, hidden)
        return self.fc2(F.gelu(x))  # (N, L, C)


class MixTransformerBlock(nn.Module):
    """One encoder block: ``x + attention(norm(x))``, then ``x + MixFFN(norm(x))``.

    Args:
        channels, num_heads, reduction: as :class:`EfficientSelfAttention`.
        mlp_ratio: hidden width of the Mix-FFN, in multiples of ``channels`` (4 in MiT).

    Shapes: feature map float ``(N, C, h, w)`` -> ``(N, C, h, w)``.
    """

    def __init__(self, channels: int, num_heads: int, reduction: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(channels, eps=1e-6)
        self.attn = EfficientSelfAttention(channels, num_heads, reduction)
        self.norm2 = nn.LayerNorm(channels, eps=1e-6)
        self.mlp = MixFFN(channels, mlp_ratio * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (N, h * w, C): one token per position
        tokens = tokens + self.attn(self.norm1(tokens), height, width)
        tokens = tokens + self.mlp(self.norm2(tokens), height, width)
        return tokens.transpose(1, 2).reshape(batch, channels, height, width)  # (N, C, h, w)


class AllMLPDecoder(nn.Module):
    """SegFormer's decoder: four per-pixel linear layers, one fusion layer, one classifier.

    1. **unify**: a linear layer per stage maps its ``C_i`` channels to a common width C
       (a 1x1 convolution is a linear layer applied at every pixel);
    2. **upsample** every stage to the 1/4-resolution grid of the first one (bilinear);
    3. **concatenate** the four maps: ``4 C`` channels;
    4. **fuse** them with a linear layer back to C channels (with BatchNorm and ReLU);
    5. **predict** one logit per class at 1/4 resolution (the caller upsamples x4).

    The encoder's attention already sees the whole image, so the decoder needs no large kernels
    or pyramid pooling: that is the paper's argument for keeping it this small.

    Args:
        in_channels: channels of the four encoder stages, e.g. ``(32, 64, 160, 256)`` for MiT-B0.
        channels: the common width C (256 for B0 and B1, 768 for B2-B5 in the paper).
        num_classes: output channels.

    Shapes: four float maps ``(N, C_i, H / 2 ** (i + 1), W / 2 ** (i + 1))``, i = 1..4 ->
    logits ``(N, num_classes, H / 4, W / 4)``.
    """

    def __init__(self, in_channels: tuple[int, ...], channels: int, num_classes: int):
        super().__init__()
        self.unify = nn.ModuleList(nn.Conv2d(c, channels, kernel_size=1) for c in in_channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(len(in_channels) * channels, channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(channels),  # BatchNorm has its own shift: the conv needs no bias
            nn.ReLU(inplace=True),
        )
        self.predict = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]  # the 1/4 grid of the first stage
        unified = [F.interpolate(unify(feature), size=size, mode="bilinear", align_corners=False)
                   for unify, feature in zip(self.unify, features)]  # 4 x (N, C, H / 4, W / 4)
        # Deepest stage first, as in the official code (any fixed order would do).
        fused = self.fuse(torch.cat(unified[::-1], dim=1))  # (N, 4 C, ...) -> (N, C, H / 4, W / 4)
        return self.predict(fused)  # (N, num_classes, H / 4, W / 4)
